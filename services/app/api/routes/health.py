"""Unauthenticated endpoints for probes and Prometheus: ``/healthz`` and ``/metrics``.

Neither returns anything identifying: health is a status word per part; metrics carry counts
with closed label sets.
"""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from radforge.services.app.api.deps import ServiceDep
from radforge.services.app.security import redact

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz(service: ServiceDep) -> dict[str, str]:
    """Liveness and readiness: the database answers; where jobs run."""
    return {"status": "ok" if service.store.ping() else "degraded", "ray": redact(service.ray.describe())}


@router.get("/metrics", response_class=Response)
async def metrics(service: ServiceDep) -> Response:
    """Prometheus exposition of every control-plane metric (see services/metrics.py)."""
    # async: rendering takes about a millisecond; a thread-pool hop would cost more under load
    return Response(content=service.metrics.render(), media_type=CONTENT_TYPE_LATEST)
