"""How a job's process is started, followed, stopped and read: one :class:`Launcher` protocol, two ways.

- :class:`LocalLauncher`: ``python -m radforge.services.jobs.supervisor --job-dir DIR -- python
  <kind's args>`` in a session of its own on the service's host, connected to the cluster (embedded
  or a GCS address); it outlives the service and is followed by PID (and start time); ``exit.json``
  records how it ended.
- :class:`RayJobLauncher`: Ray's Job Submission API (``ray_address`` is a dashboard URL,
  :mod:`radforge.services.jobs.ray_submission`): the driver runs on the cluster and is followed by
  its submission id, recorded before submitting.

Both record where a job runs in the store and answer what they see of it as an
:class:`Observation`; the runner (:mod:`radforge.services.jobs.runner`) decides what that means.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from radforge.files import touch_private
from radforge.services.app.db import Store
from radforge.services.app.models import JobRecord
from radforge.services.jobs.process_identity import is_running, process_start_ticks, signal_group
from radforge.services.jobs.progress import EXIT, LOG, SUBMITTED, job_file, read_json, write_json_atomic
from radforge.services.jobs.ray_submission import RayJobMissing, RayJobs, submission_id
from radforge.services.jobs.raycluster import RayProvider, RayUnavailable

log = logging.getLogger(__name__)

# Quieter job logs: no progress bars in files.
JOB_ENV = {"TQDM_DISABLE": "1", "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "PYTHONUNBUFFERED": "1"}


class LaunchFailed(RuntimeError):
    """The job could not be started; the message is the job's error (one line)."""


@dataclass(frozen=True)
class Observation:
    """What a launcher sees of a job recorded as running."""

    running: bool = False
    exit_info: dict[str, Any] | None = None  # how it ended: {"exit_code": ..., "finished_at": ...}
    note: str | None = None  # why it ended, when the launcher knows better than an exit status
    missing: bool = False  # the cluster has no record of it: the runner submits it again or closes it
    unknown: bool = False  # cannot tell now (the cluster is unreachable): ask again next tick


class Launcher(Protocol):
    """Starts a job's process and follows it; the job's folder is the rest of the contract."""

    def launch(self, job: JobRecord, *, args: list[str], job_dir: str, ray_address: str) -> None:
        """Start ``python ARGS`` for ``job`` and record where it runs; :class:`LaunchFailed` if it cannot."""
        ...

    def observe(self, job: JobRecord) -> Observation: ...

    def cancel(self, job: JobRecord, *, now: float) -> None:
        """Ask the job's process to stop (called every tick until it ends: escalate if it does not)."""
        ...

    def logs(self, job: JobRecord, lines: int) -> list[str]: ...

    def forget(self, job_id: str) -> None:
        """The job has been recorded as ended: drop what is kept about its process."""
        ...


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


def submissions(job_dir: str) -> int:
    """How many times Ray accepted the job in ``job_dir`` (its ``submitted.json``; 0 without one)."""
    marker = read_json(job_file(job_dir, SUBMITTED))
    return int(marker.get("submissions", 1)) if isinstance(marker, dict) else 0


class LocalLauncher:
    """Job processes on this host under the job supervisor, followed by PID and ``exit.json``."""

    def __init__(self, *, store: Store, ray: RayProvider, cancel_grace_seconds: float) -> None:
        self.store = store
        self.ray = ray
        self.cancel_grace_seconds = cancel_grace_seconds
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    def launch(self, job: JobRecord, *, args: list[str], job_dir: str, ray_address: str) -> None:
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
                raise LaunchFailed(f"cannot start the job process ({e.strerror})") from None
        self._children[job.id] = proc
        self.store.set_process(
            job.id,
            pid=proc.pid,
            proc_start=process_start_ticks(proc.pid),
            job_dir=job_dir,
            ray_address=ray_address,
            now=time.time(),
        )
        log.info("job %s (%s) started, pid %d", job.id, job.kind, proc.pid)

    def observe(self, job: JobRecord) -> Observation:
        if job.pid is None or job.job_dir is None:
            return Observation(note="the service stopped before the job process started")
        child = self._children.get(job.id)
        if child is not None:
            child.poll()  # reap our own child
        exit_path = Path(job.job_dir) / EXIT
        exit_info = read_json(exit_path)
        if exit_info is None and is_running(job.pid, job.proc_start):
            return Observation(running=True)
        # read again: the supervisor may have written it between the two checks
        exit_info = exit_info or read_json(exit_path)
        return Observation(exit_info=exit_info if isinstance(exit_info, dict) else None)

    def cancel(self, job: JobRecord, *, now: float) -> None:
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

    def logs(self, job: JobRecord, lines: int) -> list[str]:
        if job.job_dir is None or "://" in job.job_dir:
            return []
        return tail_lines(Path(job.job_dir) / LOG, lines)

    def forget(self, job_id: str) -> None:
        self._children.pop(job_id, None)


class RayJobLauncher:
    """Job drivers on a Ray cluster through its Job Submission API, followed by submission id."""

    def __init__(self, *, store: Store, ray_jobs: RayJobs) -> None:
        self.store = store
        self.ray_jobs = ray_jobs

    def launch(self, job: JobRecord, *, args: list[str], job_dir: str, ray_address: str) -> None:
        """Record the submission id first (a restart then finds the job), submit, then mark it submitted.

        Also submits a recorded job again (same id, same folder) when Ray has no record of it.
        """
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
            raise LaunchFailed(str(e)) from None
        try:
            marker = {"submission_id": sid, "submissions": submissions(job_dir) + 1}
            write_json_atomic(job_file(job_dir, SUBMITTED), marker)
        except OSError as e:  # Ray losing this job later would then look like a first submission
            log.warning("job %s: cannot mark it submitted (%s)", job.id, type(e).__name__)
        log.info("job %s (%s) submitted to Ray as %s", job.id, job.kind, sid)

    def observe(self, job: JobRecord) -> Observation:
        assert job.ray_job_id is not None
        try:
            state = self.ray_jobs.state(job.ray_job_id)
        except RayJobMissing:
            return Observation(missing=True)
        except Exception as e:  # the cluster is unreachable now: try again next tick
            log.warning("cannot reach Ray for job %s: %s", job.id, type(e).__name__)
            return Observation(unknown=True)
        if not state.ended:
            return Observation(running=True)
        code = 0 if state.status == "SUCCEEDED" else state.exit_code
        note = None
        if state.status == "STOPPED" and not job.cancel_requested:
            note = "stopped through Ray, not through this service"
        elif code is None and state.status == "FAILED":
            note = f"Ray reports the job failed: {state.message or 'no message'}"[:300]
        return Observation(exit_info={"exit_code": code}, note=note)

    def cancel(self, job: JobRecord, *, now: float) -> None:
        if job.ray_job_id is None or job.cancel_signalled_at is not None:
            return  # Ray escalates to SIGKILL itself (RAY_JOB_STOP_WAIT_TIME_S)
        log.info("cancelling job %s: stop through the Job Submission API", job.id)
        self.ray_jobs.stop(job.ray_job_id)
        self.store.mark_cancel_signalled(job.id, now=now)

    def logs(self, job: JobRecord, lines: int) -> list[str]:
        if job.ray_job_id is None:
            return []
        try:
            return self.ray_jobs.logs(job.ray_job_id, lines)
        except Exception as e:  # a cluster that is down has no logs to give
            return [f"(logs unavailable from Ray: {type(e).__name__})"]

    def forget(self, job_id: str) -> None:
        return None
