"""The control plane app and its server (``radforge serve``).

``create_app(settings)`` wires the database, metrics, Ray, the runner and the scheduler into a
FastAPI app; ``serve(settings)`` runs it under uvicorn.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from radforge.services.app.api.routes import dashboard, health, history, jobs, overview, sources
from radforge.services.app.body_limit import BodyLimit
from radforge.services.app.models import PLANNED_KINDS
from radforge.services.app.security import redact
from radforge.services.app.service import build_service
from radforge.services.app.settings import ServiceSettings
from radforge.services.jobs.kinds import KINDS

log = logging.getLogger("radforge.serve")
API_VERSION = "v1"


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    """FastAPI's 422 details without echoing inputs back; job kinds explained.

    A job body is a union discriminated by ``kind``: pydantic puts the kind into the location
    (``["body", "ingest", "source_uri"]``); clients get ``["body", "source_uri"]``.
    """
    out = []
    for err in exc.errors():
        loc = list(err.get("loc", ()))
        msg = str(err.get("msg", "invalid"))
        kind_type = err.get("type", "value_error")
        if loc[:1] == ["body"] and len(loc) >= 2 and loc[1] in KINDS:
            loc = [loc[0], *loc[2:]]
        if kind_type in ("union_tag_invalid", "union_tag_not_found"):
            tag = (err.get("ctx") or {}).get("tag")
            available = ", ".join(sorted(KINDS))
            loc = ["body", "kind"]
            if isinstance(tag, str) and tag in PLANNED_KINDS:
                msg = f"job kind {tag!r} is not available in this build: {PLANNED_KINDS[tag]}; available: "
                out.append({"loc": loc, "msg": msg + available, "type": "kind_unavailable"})
                continue
            msg = f"unknown or missing job kind; available: {available}"
        out.append({"loc": loc, "msg": msg, "type": kind_type})
    return out


def create_app(settings: ServiceSettings) -> FastAPI:
    """The FastAPI app; the service (database, runner, scheduler, Ray) starts with the app's lifespan."""
    service = build_service(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info(
            redact(
                f"radforge control plane: database {service.store.where}, Ray {service.ray.describe()}, "
                f"API token {service.secrets.token_source}"
            )
        )
        service.runner.start()
        service.scheduler.start()
        try:
            yield
        finally:
            service.scheduler.stop()
            service.runner.stop()
            service.ray.close(jobs_running=service.runner.has_running_jobs())
            service.store.close()

    app = FastAPI(
        title="radforge control plane",
        version=API_VERSION,
        description="Jobs (ingest, train, eval, compact), watched sources, metrics and a dashboard.",
        lifespan=lifespan,
    )
    app.state.service = service

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": _validation_errors(exc)})

    for module in (health, jobs, sources, overview, history, dashboard):
        app.include_router(module.router)
    app.add_middleware(BodyLimit, limit=settings.max_request_bytes)
    return app


def serve(settings: ServiceSettings) -> None:
    """Run the app under uvicorn until SIGINT/SIGTERM (jobs keep running; a restart re-attaches).

    Files the service and its job processes create are its user's alone (umask 077): the database,
    job specs, progress, results and logs name archives and datasets.
    """
    import uvicorn

    os.umask(0o077)
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        access_log=settings.access_log,
        log_level="info",
        timeout_graceful_shutdown=10,
    )
