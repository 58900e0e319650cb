"""``/api/v1/jobs``: submit, list, inspect, read logs of and cancel jobs."""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response, status

from services.api.deps import Authorized, RunnerDep, SettingsDep, StoreDep
from services.kinds import KINDS
from services.models import TERMINAL_STATES, JobCreate, JobList, JobLogs, JobPublic, JobRecord, JobState
from services.progress import LOG
from services.security import redact_below, uri_allowed

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"], dependencies=[Authorized])
MAX_LOG_LINES = 1000


def _found(store: StoreDep, job_id: str) -> JobRecord:
    job = store.get_job(job_id)
    if job is None:
        raise HTTPException(status_code=status.HTTP_404_NOT_FOUND, detail=f"no job {job_id!r}")
    return job


@router.post("", status_code=status.HTTP_201_CREATED, response_model=JobPublic)
def submit_job(body: JobCreate, runner: RunnerDep, settings: SettingsDep, response: Response) -> JobPublic:
    """Submit a job; it is queued and starts when a slot, its archive and its dataset are free."""
    kind = KINDS[body.kind]
    for field, (uri, allowlist) in kind.uris(body).items():
        allowed = settings.allowed_sources if allowlist == "sources" else settings.allowed_datasets
        if not uri_allowed(uri, allowed):
            raise HTTPException(
                status_code=status.HTTP_403_FORBIDDEN,
                detail=f"{field}: {uri} is outside the allowed {allowlist} (setting allowed_{allowlist})",
            )
    job = runner.submit(body, priority=body.priority)
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
    offset: Annotated[int, Query(ge=0)] = 0,
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


def tail_lines(path: Path, n: int, *, block: int = 64 << 10) -> list[str]:
    """The last ``n`` lines of a file, reading only its end."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            end = f.tell()
            data = b""
            while end > 0 and data.count(b"\n") <= n:
                start = max(0, end - block)
                f.seek(start)
                data = f.read(end - start) + data
                end = start
    except FileNotFoundError:
        return []
    lines: deque[str] = deque(data.decode("utf-8", "replace").splitlines(), maxlen=n)
    return list(lines)


@router.get("/{job_id}/logs", response_model=JobLogs)
def job_logs(
    job_id: str, store: StoreDep, lines: Annotated[int, Query(ge=1, le=MAX_LOG_LINES)] = 100
) -> JobLogs:
    """The last lines of the job's log; anything below the archive root is shown as ``<root>/…``."""
    job = _found(store, job_id)
    if job.job_dir is None:
        return JobLogs(id=job.id, lines=[])
    kind = KINDS.get(job.kind)
    roots = kind.redact_roots(kind.parse(job.spec)) if kind is not None else []
    return JobLogs(
        id=job.id, lines=[redact_below(x, roots) for x in tail_lines(Path(job.job_dir) / LOG, lines)]
    )


@router.post(
    "/{job_id}/cancel",
    response_model=JobPublic,
    responses={202: {"description": "running: SIGTERM sent, the job ends as cancelled"}, 409: {}},
)
def cancel_job(job_id: str, store: StoreDep, runner: RunnerDep, response: Response) -> JobPublic:
    """Cancel a job: a queued one at once (200), a running one asynchronously (202); 409 if it has ended."""
    job = _found(store, job_id)
    if job.state in TERMINAL_STATES:
        raise HTTPException(
            status_code=status.HTTP_409_CONFLICT, detail=f"job {job_id} has already {job.state.value}"
        )
    updated = runner.cancel(job_id)
    assert updated is not None  # it existed a moment ago; jobs are never deleted
    if updated.state == JobState.RUNNING:
        response.status_code = status.HTTP_202_ACCEPTED
    return JobPublic.from_record(updated, now=time.time())
