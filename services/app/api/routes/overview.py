"""``/api/v1/overview``: the numbers the dashboard polls (job counts, running jobs, throughput)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from fastapi import APIRouter

from radforge.services.app.api.deps import Authorized, StoreDep
from radforge.services.app.models import JobPublic, JobState, Overview

router = APIRouter(prefix="/api/v1", tags=["overview"], dependencies=[Authorized])
RECENT = 20


@router.get("/overview", response_model=Overview)
def overview(store: StoreDep) -> Overview:
    """Jobs by state and kind, the running jobs, the latest jobs, and current throughput summed over jobs."""
    now = time.time()
    counts = store.count_by_kind_state()
    by_state = {s.value: 0 for s in JobState}
    by_kind: dict[str, dict[str, int]] = {}
    for (kind, state), n in counts.items():
        by_state[state] = by_state.get(state, 0) + n
        by_kind.setdefault(kind, {})[state] = n
    running = [JobPublic.from_record(r, now=now) for r in store.jobs_in_states(JobState.RUNNING)]
    recent, _ = store.list_jobs(limit=RECENT)
    throughput = {
        "ingest_samples_per_second": 0.0,
        "ingest_bytes_per_second": 0.0,
        "train_images_per_second": 0.0,
    }
    for job in running:
        p = job.progress
        if p is None:
            continue
        throughput["ingest_samples_per_second"] += p.samples_per_second or 0.0
        throughput["ingest_bytes_per_second"] += p.bytes_per_second or 0.0
        throughput["train_images_per_second"] += p.images_per_second or 0.0
    return Overview(
        time=datetime.fromtimestamp(now, tz=UTC),
        jobs_by_state=by_state,
        jobs_by_kind=by_kind,
        running=running,
        recent=[JobPublic.from_record(r, now=now) for r in recent],
        throughput=throughput,
        sources=store.count_sources(),
    )
