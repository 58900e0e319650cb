"""The job runner: starts, follows and cancels jobs on Ray, and re-attaches to them after a restart.

Each job runs as ``python -m services.jobproc --job-dir DIR -- <kind's command>`` in a session of
its own: the job process is a Ray driver connected to the cluster (embedded or given), and it
outlives the service. Everything the runner knows about a job is in the database and the job's
folder (:mod:`services.progress`), so a new runner picks up where an old one stopped: jobs that
still run are followed by PID (and start time), jobs that ended meanwhile are closed from their
``exit.json``, and jobs whose process vanished without one are marked failed.

Decisions (which job starts, in which order) are :func:`services.scheduling.choose_jobs_to_start`.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from services.db import Store
from services.kinds import KINDS
from services.metrics import Metrics
from services.models import JobRecord, JobState
from services.procs import is_running, process_start_ticks, signal_group
from services.progress import (
    ERROR,
    EXIT,
    LOG,
    PROGRESS,
    RESULT,
    SPEC,
    JobProgress,
    read_json,
    write_json_atomic,
)
from services.raycluster import RayProvider, RayUnavailable
from services.scheduling import QueuedJob, choose_jobs_to_start

log = logging.getLogger(__name__)

# Quieter job logs: no progress bars in files.
JOB_ENV = {"TQDM_DISABLE": "1", "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "PYTHONUNBUFFERED": "1"}


def describe_exit(code: int | None) -> str:
    """A one-line reason for a job that ended without success."""
    if code is None:
        return (
            "the job process ended without an exit status (killed with its supervisor, or the host restarted)"
        )
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


def final_state(*, exit_code: int | None, cancel_requested: bool) -> JobState:
    """How a job that ended is recorded: success wins over a late cancel; a cancel over a failure."""
    if exit_code == 0:
        return JobState.SUCCEEDED
    return JobState.CANCELLED if cancel_requested else JobState.FAILED


class JobRunner:
    """Starts, follows and cancels jobs; one background thread."""

    def __init__(
        self,
        *,
        store: Store,
        metrics: Metrics,
        ray: RayProvider,
        jobs_dir: Path,
        max_running: int,
        max_running_by_kind: dict[str, int] | None = None,
        tick_seconds: float = 0.5,
        cancel_grace_seconds: float = 30.0,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.ray = ray
        self.jobs_dir = jobs_dir
        self.max_running = max_running
        self.max_running_by_kind = dict(max_running_by_kind or {})
        self.tick_seconds = tick_seconds
        self.cancel_grace_seconds = cancel_grace_seconds
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._counted: dict[str, JobProgress | None] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Re-attach to jobs left running by an earlier service, then follow jobs in the background."""
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        running = self.store.jobs_in_states(JobState.RUNNING)
        for job in running:
            self._counted[job.id] = JobProgress.model_validate(job.progress) if job.progress else None
        if running:
            log.info("re-attaching to %d job(s) recorded as running", len(running))
        self._thread = threading.Thread(target=self._loop, name="job-runner", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop following jobs (they keep running; the next start re-attaches)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def wake(self) -> None:
        """Act now (a job was submitted or cancelled) instead of at the next tick."""
        self._wake.set()

    def has_running_jobs(self) -> bool:
        return bool(self.store.jobs_in_states(JobState.RUNNING))

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("job runner tick failed")
            self._wake.wait(self.tick_seconds)
            self._wake.clear()

    # ---- submission ---------------------------------------------------------------------------
    def submit(
        self,
        spec: Any,
        *,
        priority: int,
        origin: str = "api",
        source_id: str | None = None,
        archive: str | None = None,
    ) -> JobRecord:
        """Record a validated spec as a queued job; it starts when a slot and its locks are free."""
        kind = KINDS[spec.kind]
        now = time.time()
        job = JobRecord(
            id=uuid.uuid4().hex,
            kind=kind.name,
            state=JobState.QUEUED,
            priority=priority,
            origin=origin,
            source_id=source_id,
            archive=archive,
            spec=spec.spec(),
            locks=sorted(kind.locks(spec)),
            created_at=now,
            updated_at=now,
        )
        self.store.insert_job(job)
        self.metrics.jobs_submitted.labels(kind=kind.name, origin=origin).inc()
        self.wake()
        return job

    def cancel(self, job_id: str) -> JobRecord | None:
        """Cancel a job: a queued one at once, a running one by SIGTERM (SIGKILL after the grace time)."""
        job, dequeued = self.store.request_cancel(job_id, now=time.time())
        if job is not None and dequeued:
            self.metrics.count_finished(kind=job.kind, state=JobState.CANCELLED.value, seconds=None)
        self.wake()
        return job

    # ---- one pass -----------------------------------------------------------------------------
    def tick(self) -> None:
        """Follow running jobs, then start what may start."""
        for job in self.store.jobs_in_states(JobState.RUNNING):
            self._follow(job)
        self._dispatch()
        running = self.store.jobs_in_states(JobState.RUNNING)
        self.metrics.running_throughput.set(
            sum((r.progress or {}).get("samples_per_second") or 0.0 for r in running if r.kind == "ingest")
        )

    def _follow(self, job: JobRecord) -> None:
        if job.pid is None or job.job_dir is None:
            self._close(job, exit_info=None, note="the service stopped before the job process started")
            return
        child = self._children.get(job.id)
        if child is not None:
            child.poll()  # reap our own child
        job_dir = Path(job.job_dir)
        exit_info = read_json(job_dir / EXIT)
        if exit_info is None and is_running(job.pid, job.proc_start):
            self._read_progress(job)
            self._signal_cancel(job)
            return
        self._close(job, exit_info=exit_info or read_json(job_dir / EXIT))

    def _read_progress(self, job: JobRecord) -> dict[str, Any] | None:
        if job.job_dir is None:
            return None
        data = read_json(Path(job.job_dir) / PROGRESS)
        if not isinstance(data, dict) or data == job.progress:
            return job.progress
        progress = JobProgress.model_validate(data)
        self.store.update_progress(job.id, data, now=time.time())
        self.metrics.count_progress(job.kind, self._counted.get(job.id), progress)
        self._counted[job.id] = progress
        return data

    def _signal_cancel(self, job: JobRecord) -> None:
        if not job.cancel_requested or job.pid is None:
            return
        now = time.time()
        if job.cancel_signalled_at is None:
            log.info("cancelling job %s: SIGTERM to its process group", job.id)
            signal_group(job.pid, signal.SIGTERM)
            self.store.mark_cancel_signalled(job.id, now=now)
        elif now - job.cancel_signalled_at > self.cancel_grace_seconds:
            log.warning(
                "job %s still running %.0f s after SIGTERM: SIGKILL", job.id, now - job.cancel_signalled_at
            )
            signal_group(job.pid, signal.SIGKILL)

    def _close(self, job: JobRecord, *, exit_info: Any, note: str | None = None) -> None:
        """Record how a job that is no longer running ended (once), and count it."""
        progress = self._read_progress(job)
        job_dir = Path(job.job_dir) if job.job_dir else None
        code = exit_info.get("exit_code") if isinstance(exit_info, dict) else None
        state = final_state(exit_code=code, cancel_requested=job.cancel_requested)
        result = read_json(job_dir / RESULT) if job_dir is not None and state == JobState.SUCCEEDED else None
        error: str | None = None
        if state == JobState.FAILED:
            err = read_json(job_dir / ERROR) if job_dir is not None else None
            error = note or (
                str(err["error"]) if isinstance(err, dict) and "error" in err else describe_exit(code)
            )
        elif state == JobState.CANCELLED:
            error = "cancelled on request"
        now = time.time()
        ended = exit_info.get("finished_at") if isinstance(exit_info, dict) else None
        finished_at = float(ended) if isinstance(ended, int | float) else now
        if not self.store.finish_job(
            job.id,
            state=state,
            now=finished_at,
            exit_code=code,
            error=error,
            result=result,
            progress=progress,
        ):
            return
        log.info("job %s (%s) %s", job.id, job.kind, state.value)
        seconds = None if job.started_at is None else finished_at - job.started_at
        self.metrics.count_finished(kind=job.kind, state=state.value, seconds=seconds)
        if job.kind == "ingest" and isinstance(result, dict):
            self.metrics.count_series(
                by_status=result.get("by_status", {}), by_reason=result.get("by_reason", {})
            )
        self._children.pop(job.id, None)
        self._counted.pop(job.id, None)

    def _dispatch(self) -> None:
        queued = self.store.jobs_in_states(JobState.QUEUED)
        if not queued:
            return
        running = self.store.jobs_in_states(JobState.RUNNING)
        by_kind: dict[str, int] = {}
        for r in running:
            by_kind[r.kind] = by_kind.get(r.kind, 0) + 1
        chosen = choose_jobs_to_start(
            [QueuedJob(j.id, j.kind, j.priority, j.created_at, frozenset(j.locks)) for j in queued],
            held_locks={lock for r in running for lock in r.locks},
            running=len(running),
            max_running=self.max_running,
            max_running_by_kind=self.max_running_by_kind,
            running_by_kind=by_kind,
        )
        by_id = {j.id: j for j in queued}
        for job_id in chosen:
            if self.store.claim_job(job_id, now=time.time()):
                self._launch(by_id[job_id])

    def _launch(self, job: JobRecord) -> None:
        kind = KINDS.get(job.kind)
        if kind is None:  # recorded by a build that had this kind
            self.store.finish_job(
                job.id, state=JobState.FAILED, now=time.time(), error=f"unknown kind {job.kind!r}"
            )
            return
        job_dir = self.jobs_dir / job.id
        job_dir.mkdir(parents=True, exist_ok=True)
        try:
            address = self.ray.address()
        except RayUnavailable as e:
            self._fail_launch(job, str(e))
            return
        write_json_atomic(job_dir / SPEC, job.spec)
        argv = [sys.executable, "-m", "services.jobproc", "--job-dir", str(job_dir), "--"]
        argv += kind.command(job_dir=job_dir, ray_address=address)
        with open(job_dir / LOG, "ab") as out:
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # outlives the service; one process group to signal
                    env={**os.environ, **self.ray.job_env(), **JOB_ENV},
                )
            except OSError as e:
                self._fail_launch(job, f"cannot start the job process ({e.strerror})")
                return
        self._children[job.id] = proc
        self._counted[job.id] = None
        self.store.set_process(
            job.id,
            pid=proc.pid,
            proc_start=process_start_ticks(proc.pid),
            job_dir=str(job_dir),
            ray_address=address,
            now=time.time(),
        )
        log.info("job %s (%s) started, pid %d", job.id, job.kind, proc.pid)

    def _fail_launch(self, job: JobRecord, error: str) -> None:
        now = time.time()
        if self.store.finish_job(job.id, state=JobState.FAILED, now=now, error=error):
            self.metrics.count_finished(kind=job.kind, state=JobState.FAILED.value, seconds=0.0)
        log.error("job %s could not start: %s", job.id, error)
