"""``/api/v1/overview``: what the dashboard polls (job counts, running and latest jobs, throughput, links)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from fastapi import APIRouter

from radforge.services.app.api.deps import Authorized, ServiceDep, StoreDep
from radforge.services.app.api.routes.jobs import redacted
from radforge.services.app.models import JobPublic, JobRecord, JobState, Overview
from radforge.services.app.report_links import report_folder, report_link

router = APIRouter(prefix="/api/v1", tags=["overview"], dependencies=[Authorized])
RECENT = 20


def _shown(record: JobRecord, *, now: float) -> JobPublic:
    """A job as the dashboard shows it: its error line redacted like its logs."""
    job = JobPublic.from_record(record, now=now)
    if job.error is not None:
        try:
            job.error = redacted(record, [job.error])[0]
        except ValueError:  # a spec an earlier build stored that this one no longer parses
            job.error = "(error hidden: this build cannot read the job's spec to redact it)"
    return job


@router.get("/overview", response_model=Overview)
def overview(store: StoreDep, service: ServiceDep) -> Overview:
    """Jobs by state and kind, running and latest jobs, current throughput summed over jobs, report links."""
    now = time.time()
    counts = store.count_by_kind_state()
    by_state = {s.value: 0 for s in JobState}
    by_kind: dict[str, dict[str, int]] = {}
    for (kind, state), n in counts.items():
        by_state[state] = by_state.get(state, 0) + n
        by_kind.setdefault(kind, {})[state] = n
    running = [_shown(r, now=now) for r in store.jobs_in_states(JobState.RUNNING)]
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
        recent=[_shown(r, now=now) for r in recent],
        throughput=throughput,
        sources=store.count_sources(),
        report_links={
            r.id: report_link(service.secrets.api_token, r.id, now=now)
            for r in recent
            if r.kind == "eval"
            and r.state == JobState.SUCCEEDED
            and report_folder(r.result, r.spec.get("output_uri")) is not None
        },
    )
