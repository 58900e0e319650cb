"""The job runner: starts, follows and cancels jobs on Ray, and re-attaches to them after a restart.

Two ways to run a job's process (a Ray driver), one contract (the job folder,
:mod:`radforge.services.jobs.progress`):

- local: ``python -m radforge.services.jobs.supervisor --job-dir DIR -- python <kind's args>`` in a session
of its
  own on the service's host, connected to the cluster (embedded or a GCS address); it outlives the
  service and is followed by PID (and start time); ``exit.json`` records how it ended;
- Ray's Job Submission API (``ray_address`` is a dashboard URL,
:mod:`radforge.services.jobs.ray_submission`): the
  driver runs on the cluster; it is followed by its submission id, recorded before submitting.

Everything the runner knows about a job is in the database and the job's folder, so a new runner
picks up where an old one stopped: jobs that still run are followed, jobs that ended meanwhile are
closed from their exit record, and jobs whose process vanished without one are marked failed.

Decisions (which job starts, in which order) are
:func:`radforge.services.schedule.decisions.choose_jobs_to_start`.
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
from collections import deque
from pathlib import Path
from typing import Any

from radforge.files import make_private_dir, touch_private
from radforge.services.app.db import Store
from radforge.services.app.metrics import Metrics
from radforge.services.app.models import JobRecord, JobState
from radforge.services.jobs.kinds import KINDS
from radforge.services.jobs.process_identity import is_running, process_start_ticks, signal_group
from radforge.services.jobs.progress import (
    COMMIT,
    COMMITTED,
    COMMITTING,
    ERROR,
    EXIT,
    LOG,
    PROGRESS,
    RESULT,
    SPEC,
    SUBMITTED,
    JobProgress,
    job_file,
    read_json,
    write_json_atomic,
)
from radforge.services.jobs.ray_submission import RayJobMissing, RayJobs, submission_id
from radforge.services.jobs.raycluster import RayProvider, RayUnavailable
from radforge.services.schedule.decisions import QueuedJob, choose_jobs_to_start

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


class CancelRefused(RuntimeError):
    """The job is past its point of no return (its dataset commit): it will end as it ends."""


def final_state(*, exit_code: int | None, cancel_requested: bool, commit: str | None = None) -> JobState:
    """How a job that ended is recorded.

    Success wins over a late cancel, and a committed dataset is a success whatever the exit status
    (the commit is the point of no return); otherwise a cancel wins over a failure.
    """
    if exit_code == 0 or commit == COMMITTED:
        return JobState.SUCCEEDED
    return JobState.CANCELLED if cancel_requested else JobState.FAILED


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


def _submissions(job_dir: str) -> int:
    """How many times Ray accepted the job in ``job_dir`` (its ``submitted.json``; 0 without one)."""
    marker = read_json(job_file(job_dir, SUBMITTED))
    return int(marker.get("submissions", 1)) if isinstance(marker, dict) else 0


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
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.ray = ray
        self.ray_jobs = ray if isinstance(ray, RayJobs) else None
        # job folders: an absolute local path (Ray Train wants one), or a URI both sides reach
        self.jobs_dir = str(jobs_dir) if "://" in str(jobs_dir) else str(Path(jobs_dir).resolve())
        self.max_running = max_running
        self.max_running_by_kind = dict(max_running_by_kind or {})
        self.tick_seconds = tick_seconds
        self.cancel_grace_seconds = cancel_grace_seconds
        self.ray_job_resubmits = ray_job_resubmits
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._counted: dict[str, JobProgress | None] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

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
        if job.ray_job_id is not None and self.ray_jobs is not None:
            try:
                return self.ray_jobs.logs(job.ray_job_id, lines)
            except Exception as e:  # a cluster that is down has no logs to give
                return [f"(logs unavailable from Ray: {type(e).__name__})"]
        if job.job_dir is None or "://" in job.job_dir:
            return []
        return tail_lines(Path(job.job_dir) / LOG, lines)

    def _commit(self, job: JobRecord) -> str | None:
        """The job's commit state (``committing``, ``committed``) or None if it has not begun one."""
        if job.job_dir is None:
            return None
        marker = read_json(job_file(job.job_dir, COMMIT))
        state = marker.get("state") if isinstance(marker, dict) else None
        return state if state in (COMMITTING, COMMITTED) else None

    def _follow(self, job: JobRecord) -> None:
        if job.ray_job_id is not None:
            self._follow_ray(job)
            return
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

    def _follow_ray(self, job: JobRecord) -> None:
        assert job.ray_job_id is not None
        if self.ray_jobs is None:  # recorded by a service that used the Job Submission API
            self._close(job, exit_info=None, note="the service no longer uses Ray's Job Submission API")
            return
        try:
            state = self.ray_jobs.state(job.ray_job_id)
        except RayJobMissing:
            self._missing_from_ray(job)
            return
        except Exception as e:  # the cluster is unreachable now: try again next tick
            log.warning("cannot reach Ray for job %s: %s", job.id, type(e).__name__)
            return
        if not state.ended:
            self._read_progress(job)
            self._signal_cancel(job)
            return
        code = 0 if state.status == "SUCCEEDED" else state.exit_code
        note = None
        if state.status == "STOPPED" and not job.cancel_requested:
            note = "stopped through Ray, not through this service"
        elif code is None and state.status == "FAILED":
            note = f"Ray reports the job failed: {state.message or 'no message'}"[:300]
        self._close(job, exit_info={"exit_code": code}, note=note)

    def _missing_from_ray(self, job: JobRecord) -> None:
        """Ray has no record of a job this service recorded: submit it (again), or report it lost."""
        submissions = _submissions(job.job_dir) if job.job_dir else 0
        note = missing_job_note(
            submissions=submissions, resubmits=self.ray_job_resubmits, cancelled=job.cancel_requested
        )
        if note is not None or job.job_dir is None:
            self._close(job, exit_info=None, note=note or "the Ray cluster has no record of the job")
            return
        if self._commit(job) == COMMITTED:  # lost after its dataset commit: its work is done
            self._close(job, exit_info=None)
            return
        if submissions == 0:
            log.info("job %s was recorded but never submitted (the service stopped): submitting", job.id)
        else:
            log.warning("job %s: the Ray cluster lost it (head restarted?); submitting it again", job.id)
        self._resubmit(job)

    def _read_progress(self, job: JobRecord) -> dict[str, Any] | None:
        if job.job_dir is None:
            return None
        data = read_json(job_file(job.job_dir, PROGRESS))
        if not isinstance(data, dict) or data == job.progress:
            return job.progress
        progress = JobProgress.model_validate(data)
        self.store.update_progress(job.id, data, now=time.time())
        self.metrics.count_progress(job.kind, self._counted.get(job.id), progress)
        self._counted[job.id] = progress
        return data

    def _signal_cancel(self, job: JobRecord) -> None:
        if not job.cancel_requested:
            return
        if self._commit(job) is not None:
            return  # past the point of no return: the job finishes (and ignores SIGTERM)
        now = time.time()
        if job.ray_job_id is not None and self.ray_jobs is not None:
            if job.cancel_signalled_at is None:
                log.info("cancelling job %s: stop through the Job Submission API", job.id)
                self.ray_jobs.stop(job.ray_job_id)
                self.store.mark_cancel_signalled(job.id, now=now)
            return
        if job.pid is None:
            return
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
            error = note or (
                str(err["error"]) if isinstance(err, dict) and "error" in err else describe_exit(code)
            )
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
        job_dir = job_file(self.jobs_dir, job.id)
        if "://" not in job_dir:
            make_private_dir(job_dir)
        try:
            address = self.ray.address()
            write_json_atomic(job_file(job_dir, SPEC), job.spec)
        except RayUnavailable as e:
            self._fail_launch(job, str(e))
            return
        except OSError as e:
            self._fail_launch(job, f"cannot write the job folder ({type(e).__name__})")
            return
        args = kind.args(job_dir=job_dir, ray_address=address)
        self._counted[job.id] = None
        if self.ray_jobs is not None:
            self._submit_to_ray(job, args=args, job_dir=job_dir)
            return
        argv = [sys.executable, "-m", "radforge.services.jobs.supervisor", "--job-dir", job_dir, "--"]
        argv += [sys.executable, *args]
        touch_private(Path(job_dir) / LOG)
        with open(Path(job_dir) / LOG, "ab") as out:
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
        self.store.set_process(
            job.id,
            pid=proc.pid,
            proc_start=process_start_ticks(proc.pid),
            job_dir=job_dir,
            ray_address=address,
            now=time.time(),
        )
        log.info("job %s (%s) started, pid %d", job.id, job.kind, proc.pid)

    def _submit_to_ray(self, job: JobRecord, *, args: list[str], job_dir: str) -> None:
        """Record the submission id first (a restart then finds the job), submit, then mark it submitted."""
        assert self.ray_jobs is not None
        sid = submission_id(job.id)
        self.store.set_process(
            job.id,
            pid=None,
            proc_start=None,
            job_dir=job_dir,
            ray_address=self.ray_jobs.dashboard,
            ray_job_id=sid,
            now=time.time(),
        )
        try:
            self.ray_jobs.submit(job_id=job.id, args=args, env=JOB_ENV)
        except RayUnavailable as e:
            self._fail_launch(job, str(e))
            return
        try:
            marker = {"submission_id": sid, "submissions": _submissions(job_dir) + 1}
            write_json_atomic(job_file(job_dir, SUBMITTED), marker)
        except OSError as e:  # Ray losing this job later would then look like a first submission
            log.warning("job %s: cannot mark it submitted (%s)", job.id, type(e).__name__)
        log.info("job %s (%s) submitted to Ray as %s", job.id, job.kind, sid)

    def _resubmit(self, job: JobRecord) -> None:
        """Submit a recorded job Ray has no record of (never submitted, or lost): same id, same folder."""
        kind = KINDS.get(job.kind)
        assert job.job_dir is not None  # recorded with the submission id
        if kind is None:  # recorded by a build that had this kind
            self._fail_launch(job, f"unknown kind {job.kind!r}")
            return
        try:
            args = kind.args(job_dir=job.job_dir, ray_address=self.ray.address())
        except RayUnavailable as e:
            self._fail_launch(job, str(e))
            return
        self._submit_to_ray(job, args=args, job_dir=job.job_dir)

    def _fail_launch(self, job: JobRecord, error: str) -> None:
        now = time.time()
        if self.store.finish_job(job.id, state=JobState.FAILED, now=now, error=error):
            self.metrics.count_finished(kind=job.kind, state=JobState.FAILED.value, seconds=0.0)
        log.error("job %s could not start: %s", job.id, error)
