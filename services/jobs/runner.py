"""The job runner: starts, follows and cancels jobs on Ray, and re-attaches to them after a restart.

How a job's process runs is a :class:`radforge.services.jobs.launchers.Launcher`: a supervised local
driver, or a driver on the cluster through Ray's Job Submission API; one contract either way, the
job folder (:mod:`radforge.services.jobs.progress`). The runner decides; launchers act.

Everything the runner knows about a job is in the database and the job's folder, so a new runner
picks up where an old one stopped: jobs that still run are followed, jobs that ended meanwhile are
closed from their exit record, and jobs whose process vanished without one are marked failed.

Decisions are pure functions: which job starts, in which order
(:func:`radforge.services.schedule.decisions.choose_jobs_to_start`), the state a job ends in
(:func:`radforge.services.jobs.transitions.next_state`), whether a job Ray lost is submitted again
(:func:`missing_job_note`).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from radforge.files import make_private_dir
from radforge.services.app.db import Store
from radforge.services.app.history import History
from radforge.services.app.metrics import Metrics
from radforge.services.app.models import JobRecord, JobState
from radforge.services.app.security import redact
from radforge.services.jobs.kinds import KINDS
from radforge.services.jobs.launchers import (
    Launcher,
    LaunchFailed,
    LocalLauncher,
    RayJobLauncher,
    submissions,
)
from radforge.services.jobs.progress import (
    COMMIT,
    COMMITTED,
    COMMITTING,
    ERROR,
    PROGRESS,
    RESULT,
    SPEC,
    JobProgress,
    job_file,
    read_json,
    write_json_atomic,
)
from radforge.services.jobs.ray_submission import RayJobs
from radforge.services.jobs.raycluster import RayProvider, RayUnavailable
from radforge.services.jobs.transitions import JobEvent, ended_event, next_state
from radforge.services.schedule.decisions import QueuedJob, choose_jobs_to_start

log = logging.getLogger(__name__)


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


class CancelRefused(RuntimeError):
    """The job is past its point of no return (its dataset commit): it will end as it ends."""


def final_state(*, exit_code: int | None, cancel_requested: bool, commit: str | None = None) -> JobState:
    """How a running job that ended is recorded (:func:`radforge.services.jobs.transitions.next_state`).

    Success wins over a late cancel, and a committed dataset is a success whatever the exit status
    (the commit is the point of no return); otherwise a cancel wins over a failure.
    """
    event = ended_event(exit_code=exit_code, committed=commit == COMMITTED)
    return next_state(JobState.RUNNING, event, cancel_requested=cancel_requested)


def missing_job_note(*, submissions: int, resubmits: int, cancelled: bool) -> str | None:
    """A job the Ray cluster has no record of: None to submit it (again), else why it ends here.

    ``submissions`` is how many times Ray accepted it (the ``submitted.json`` marker): 0 means the
    service stopped between recording the submission id and submitting, so nothing ran; more means
    the cluster lost it (a head restart takes the job table and the driver with it). A lost job is
    submitted again ``resubmits`` times: jobs resume (an ingest commits exactly once, a training
    run continues from its last checkpoint). A cancelled job is not brought back.
    """
    if cancelled:
        return "cancelled; the Ray cluster has no record of the job"
    if submissions == 0 or submissions <= resubmits:
        return None
    return f"the Ray cluster lost the job (restarted?) after {submissions} submission(s); not submitted again"


class JobRunner:
    """Starts, follows and cancels jobs; one background thread."""

    def __init__(
        self,
        *,
        store: Store,
        metrics: Metrics,
        ray: RayProvider,
        jobs_dir: Path | str,
        max_running: int,
        max_running_by_kind: dict[str, int] | None = None,
        tick_seconds: float = 0.5,
        cancel_grace_seconds: float = 30.0,
        ray_job_resubmits: int = 2,
        history: History | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.history = history  # recent series for the dashboard, fed on each progress update
        self.ray = ray
        self.local = LocalLauncher(store=store, ray=ray, cancel_grace_seconds=cancel_grace_seconds)
        self.ray_launcher = RayJobLauncher(store=store, ray_jobs=ray) if isinstance(ray, RayJobs) else None
        self.launcher: Launcher = self.ray_launcher or self.local  # how new jobs start
        # job folders: an absolute local path (Ray Train wants one), or a URI both sides reach
        self.jobs_dir = str(jobs_dir) if "://" in str(jobs_dir) else str(Path(jobs_dir).resolve())
        self.max_running = max_running
        self.max_running_by_kind = dict(max_running_by_kind or {})
        self.tick_seconds = tick_seconds
        self.ray_job_resubmits = ray_job_resubmits
        self._counted: dict[str, JobProgress | None] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def _launcher_for(self, job: JobRecord) -> Launcher | None:
        """The launcher that started ``job`` (None: a Job Submission API this service no longer uses)."""
        return self.local if job.ray_job_id is None else self.ray_launcher

    # ---- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Re-attach to jobs left running by an earlier service, then follow jobs in the background."""
        if "://" not in self.jobs_dir:
            make_private_dir(self.jobs_dir)
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
        """Cancel a job: a queued one at once, a running one by SIGTERM (SIGKILL after the grace time).

        Raises :class:`CancelRefused` once the job has begun its dataset commit.
        """
        current = self.store.get_job(job_id)
        if current is not None and current.state == JobState.RUNNING and self._commit(current) is not None:
            raise CancelRefused(f"job {job_id} is committing its dataset; it can no longer be cancelled")
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
        self.metrics.set_running(
            [(r.kind, JobProgress.model_validate(r.progress)) for r in running if r.progress]
        )

    def logs(self, job: JobRecord, lines: int) -> list[str]:
        """The last lines of a job's log: its local log file, or its driver's log from Ray."""
        launcher = self._launcher_for(job)
        return [] if launcher is None else launcher.logs(job, lines)

    def _commit(self, job: JobRecord) -> str | None:
        """The job's commit state (``committing``, ``committed``) or None if it has not begun one."""
        if job.job_dir is None:
            return None
        marker = read_json(job_file(job.job_dir, COMMIT))
        state = marker.get("state") if isinstance(marker, dict) else None
        return state if state in (COMMITTING, COMMITTED) else None

    def _follow(self, job: JobRecord) -> None:
        launcher = self._launcher_for(job)
        if launcher is None:  # recorded by a service that used the Job Submission API
            self._close(job, exit_info=None, note="the service no longer uses Ray's Job Submission API")
            return
        seen = launcher.observe(job)
        if seen.unknown:
            return
        if seen.missing:
            self._missing_from_ray(job)
        elif seen.running:
            self._read_progress(job)
            self._signal_cancel(job, launcher)
        else:
            self._close(job, exit_info=seen.exit_info, note=seen.note)

    def _missing_from_ray(self, job: JobRecord) -> None:
        """Ray has no record of a job this service recorded: submit it (again), or report it lost."""
        count = submissions(job.job_dir) if job.job_dir else 0
        note = missing_job_note(
            submissions=count, resubmits=self.ray_job_resubmits, cancelled=job.cancel_requested
        )
        if note is not None or job.job_dir is None:
            self._close(job, exit_info=None, note=note or "the Ray cluster has no record of the job")
            return
        if self._commit(job) == COMMITTED:  # lost after its dataset commit: its work is done
            self._close(job, exit_info=None)
            return
        if count == 0:
            log.info("job %s was recorded but never submitted (the service stopped): submitting", job.id)
        else:
            log.warning("job %s: the Ray cluster lost it (head restarted?); submitting it again", job.id)
        self._start(job, job.job_dir)

    def _read_progress(self, job: JobRecord) -> dict[str, Any] | None:
        if job.job_dir is None:
            return None
        data = read_json(job_file(job.job_dir, PROGRESS))
        if not isinstance(data, dict) or data == job.progress:
            return job.progress
        progress = JobProgress.model_validate(data)
        now = time.time()
        self.store.update_progress(job.id, data, now=now)
        self.metrics.count_progress(job.kind, self._counted.get(job.id), progress)
        if self.history is not None:
            self.history.record(job.id, job.kind, progress, now=now)
        self._counted[job.id] = progress
        return data

    def _signal_cancel(self, job: JobRecord, launcher: Launcher) -> None:
        if not job.cancel_requested:
            return
        if self._commit(job) is not None:
            return  # past the point of no return: the job finishes (and ignores SIGTERM)
        launcher.cancel(job, now=time.time())

    def _close(self, job: JobRecord, *, exit_info: Any, note: str | None = None) -> None:
        """Record how a job that is no longer running ended (once), and count it."""
        progress = self._read_progress(job)
        job_dir = job.job_dir
        code = exit_info.get("exit_code") if isinstance(exit_info, dict) else None
        commit = self._commit(job)
        state = final_state(exit_code=code, cancel_requested=job.cancel_requested, commit=commit)
        result = None
        if job_dir is not None and state == JobState.SUCCEEDED:
            result = read_json(job_file(job_dir, RESULT))
            if result is None and commit == COMMITTED:  # killed after its commit, before its summary
                result = {"committed": bool((read_json(job_file(job_dir, COMMIT)) or {}).get("committed"))}
        error: str | None = None
        if state == JobState.FAILED:
            err = read_json(job_file(job_dir, ERROR)) if job_dir is not None else None
            # the job's own message may name a URI: no credentials or query strings in the record
            reported = str(err["error"]) if isinstance(err, dict) and "error" in err else None
            error = redact(note or reported or describe_exit(code))
            if commit == COMMITTING:
                error += "; it ended during its dataset commit: check the dataset's catalog"
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
        self.local.forget(job.id)
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
        """Start a job claimed from the queue: its folder, its spec, then its process."""
        job_dir = job_file(self.jobs_dir, job.id)
        if "://" not in job_dir:
            make_private_dir(job_dir)
        try:
            write_json_atomic(job_file(job_dir, SPEC), job.spec)
        except OSError as e:
            self._fail_launch(job, f"cannot write the job folder ({type(e).__name__})")
            return
        self._counted[job.id] = None
        self._start(job, job_dir)

    def _start(self, job: JobRecord, job_dir: str) -> None:
        """Launch (or submit again) ``job``'s process for the folder ``job_dir``."""
        kind = KINDS.get(job.kind)
        if kind is None:  # recorded by a build that had this kind
            self._fail_launch(job, f"unknown kind {job.kind!r}")
            return
        try:
            address = self.ray.address()
            args = kind.args(job_dir=job_dir, ray_address=address)
            self.launcher.launch(job, args=args, job_dir=job_dir, ray_address=address)
        except (RayUnavailable, LaunchFailed) as e:
            self._fail_launch(job, str(e))

    def _fail_launch(self, job: JobRecord, error: str) -> None:
        state = next_state(job.state, JobEvent.FAILED, cancel_requested=job.cancel_requested)
        if self.store.finish_job(job.id, state=state, now=time.time(), error=error):
            self.metrics.count_finished(kind=job.kind, state=state.value, seconds=0.0)
        log.error("job %s could not start: %s", job.id, error)
