"""``/api/v1/jobs``: submit, list, inspect, read logs of and cancel jobs."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response, status

from radforge.services.app.api.deps import Authorized, RunnerDep, SettingsDep, StoreDep
from radforge.services.app.models import (
    TERMINAL_STATES,
    JobCreate,
    JobList,
    JobLogs,
    JobPublic,
    JobRecord,
    JobState,
)
from radforge.services.app.security import redact, redact_below
from radforge.services.jobs.kinds import KINDS
from radforge.services.jobs.runner import CancelRefused
from radforge.services.jobs.specs import Allowlists, SpecForbidden, SpecInvalid

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"], dependencies=[Authorized])
MAX_LOG_LINES = 1000
MAX_OFFSET = (1 << 31) - 1  # beyond any job count; larger ints overflow the databases' integers (a 500)


def _found(store: StoreDep, job_id: str) -> JobRecord:
    job = store.get_job(job_id)
    if job is None:
        raise HTTPException(status_code=status.HTTP_404_NOT_FOUND, detail=f"no job {job_id!r}")
    return job


def redacted(job: JobRecord, texts: list[str]) -> list[str]:
    """``texts`` about ``job`` as clients see them: no credentials, paths below its archive ``<root>/…``."""
    kind = KINDS.get(job.kind)
    roots = kind.redact_roots(kind.parse(job.spec)) if kind is not None else []
    return [redact(redact_below(x, roots)) for x in texts]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=JobPublic)
def submit_job(body: JobCreate, runner: RunnerDep, settings: SettingsDep, response: Response) -> JobPublic:
    """Submit a job; it is queued and starts when a slot and its locks (archive, dataset, output) are free.

    A train job's run config is resolved here, once: the stored spec holds the whole config.
    """
    kind = KINDS[body.kind]
    allow = Allowlists(
        sources=settings.allowed_sources, datasets=settings.allowed_datasets, configs=settings.allowed_configs
    )
    try:
        spec = kind.prepare(body, allow)
    except SpecForbidden as e:
        raise HTTPException(status_code=status.HTTP_403_FORBIDDEN, detail=str(e)) from None
    except SpecInvalid as e:
        detail = [{"loc": ["body", *loc], "msg": msg, "type": "value_error"} for loc, msg in e.errors]
        raise HTTPException(status_code=status.HTTP_422_UNPROCESSABLE_CONTENT, detail=detail) from None
    job = runner.submit(spec, priority=body.priority)
    response.headers["Location"] = f"{router.prefix}/{job.id}"
    return JobPublic.from_record(job, now=time.time())


@router.get("", response_model=JobList)
def list_jobs(
    store: StoreDep,
    kind: str | None = None,
    state: Annotated[list[JobState] | None, Query(description="one or more states")] = None,
    source_id: str | None = None,
    origin: Annotated[str | None, Query(pattern="^(api|scheduler)$")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> JobList:
    """Jobs, newest first, filtered by kind, state(s), source and origin; ``limit``/``offset`` pages."""
    records, total = store.list_jobs(
        kind=kind,
        states=[s.value for s in state or []],
        source_id=source_id,
        origin=origin,
        limit=limit,
        offset=offset,
    )
    now = time.time()
    return JobList(
        items=[JobPublic.from_record(r, now=now) for r in records], total=total, limit=limit, offset=offset
    )


@router.get("/{job_id}", response_model=JobPublic)
async def get_job(job_id: str, store: StoreDep) -> JobPublic:
    """One job: state, progress (counts, current throughput), result summary or error."""
    # async: one indexed SQLite row (well under a millisecond) costs less than a thread-pool hop
    return JobPublic.from_record(_found(store, job_id), now=time.time())


@router.get("/{job_id}/logs", response_model=JobLogs)
def job_logs(
    job_id: str,
    store: StoreDep,
    runner: RunnerDep,
    lines: Annotated[int, Query(ge=1, le=MAX_LOG_LINES)] = 100,
) -> JobLogs:
    """The last lines of the job's log; anything below the archive root is shown as ``<root>/…``."""
    job = _found(store, job_id)
    return JobLogs(id=job.id, lines=redacted(job, runner.logs(job, lines)))


@router.post(
    "/{job_id}/cancel",
    response_model=JobPublic,
    responses={
        202: {"description": "running: SIGTERM sent, the job ends as cancelled"},
        409: {"description": "the job has ended, or is committing its dataset (it will succeed)"},
    },
)
def cancel_job(job_id: str, store: StoreDep, runner: RunnerDep, response: Response) -> JobPublic:
    """Cancel a job: a queued one at once (200), a running one asynchronously (202).

    409 if it has ended, or once it has begun its dataset commit (the point of no return).
    """
    job = _found(store, job_id)
    if job.state in TERMINAL_STATES:
        raise HTTPException(
            status_code=status.HTTP_409_CONFLICT, detail=f"job {job_id} has already {job.state.value}"
        )
    try:
        updated = runner.cancel(job_id)
    except CancelRefused as e:
        raise HTTPException(status_code=status.HTTP_409_CONFLICT, detail=str(e)) from None
    assert updated is not None  # it existed a moment ago; jobs are never deleted
    if updated.state == JobState.RUNNING:
        response.status_code = status.HTTP_202_ACCEPTED
    return JobPublic.from_record(updated, now=time.time())
