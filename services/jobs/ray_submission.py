"""Jobs on a remote Ray cluster through its Job Submission API (``ray_address: http(s)://HEAD:8265``).

Each job is one Ray job: the entrypoint is the kind's job process (``python -m
radforge.services.jobs.<kind> --job-dir URI --ray-address auto``), run by Ray's job supervisor on
the cluster. The submission id (``radforge-<job id>``) is recorded before the submission, so a
restarted service re-attaches to the job by id and never submits it twice. Status, exit code, stop
and logs come from the API; the job's progress and result come from its job folder (``jobs_uri``),
which both sides reach.

The client is created lazily: a cluster that is down delays launches (they fail with one line)
and following (retried next tick); it does not stop the service.
"""

from __future__ import annotations

import logging
import shlex
import time
from dataclasses import dataclass
from typing import Any

from radforge.services.app.security import redact
from radforge.services.jobs.raycluster import RayUnavailable

log = logging.getLogger(__name__)

ENDED = {"SUCCEEDED", "FAILED", "STOPPED"}
# A head that has just started answers "No available agent to submit job" until its node's job
# agent registers (seconds), and a busy head may drop a connection: submissions retry that long
# before the job fails.
SUBMIT_RETRY_S = 60.0
NOT_READY = "No available agent"
# The submission id is the job's own (deterministic), so a resubmission after a dropped connection
# that had in fact reached the head is refused with this: the job exists, which is what was asked.
ALREADY_EXISTS = "already exists"


class RayJobMissing(RuntimeError):
    """The cluster does not know the submission id (a new cluster, or the job's record was deleted)."""


@dataclass(frozen=True)
class RayJobState:
    """What the Job Submission API says about one job."""

    status: str  # PENDING, RUNNING, STOPPED, SUCCEEDED, FAILED
    exit_code: int | None
    message: str | None

    @property
    def ended(self) -> bool:
        return self.status in ENDED


def submission_id(job_id: str) -> str:
    """The Ray submission id of a radforge job (stable, so a restart finds the same job)."""
    return f"radforge-{job_id}"


class RayJobs:
    """A Ray cluster reached through its dashboard's Job Submission API; the service never stops it."""

    def __init__(self, address: str, *, python: str = "python") -> None:
        self.dashboard = address.rstrip("/")
        self.python = python
        self._client: Any = None

    # ---- RayProvider: what a job process connects to -----------------------------------------
    def address(self) -> str:
        return "auto"  # drivers run on the cluster, where Ray sets RAY_ADDRESS

    def job_env(self) -> dict[str, str]:
        return {}

    def describe(self) -> str:
        return redact(f"Job Submission API at {self.dashboard}")

    def close(self, *, jobs_running: bool) -> None:
        return None

    # ---- jobs ---------------------------------------------------------------------------------
    def client(self) -> Any:
        if self._client is None:
            from ray.job_submission import JobSubmissionClient

            try:
                self._client = JobSubmissionClient(self.dashboard)
            except (ConnectionError, RuntimeError, OSError) as e:
                where = redact(self.dashboard)
                raise RayUnavailable(
                    f"the Ray Job Submission API at {where} is not reachable ({type(e).__name__})"
                ) from None
        return self._client

    def submit(self, *, job_id: str, args: list[str], env: dict[str, str]) -> str:
        """Submit ``python ARGS`` as a Ray job; returns the submission id."""
        sid = submission_id(job_id)
        client = self.client()
        deadline = time.monotonic() + SUBMIT_RETRY_S
        retried = False
        while True:
            try:
                client.submit_job(
                    entrypoint=shlex.join([self.python, *args]),
                    submission_id=sid,
                    runtime_env={"env_vars": dict(env)},
                    metadata={"radforge_job_id": job_id},
                )
                return sid
            except Exception as e:
                if retried and ALREADY_EXISTS in str(e):
                    return sid  # an earlier attempt reached the head before its connection dropped
                transient = NOT_READY in str(e) or isinstance(e, ConnectionError | OSError)
                if transient and time.monotonic() < deadline:
                    retried = True
                    time.sleep(1.0)  # the head's job agent is registering, or a connection dropped
                    continue
                refused = redact(f"the Ray cluster refused the job ({type(e).__name__}: {e})")
                raise RayUnavailable(refused) from None

    def state(self, sid: str) -> RayJobState:
        """The job's status; :class:`RayJobMissing` if the cluster does not know it.

        Other errors (cluster unreachable) propagate: the caller retries later.
        """
        try:
            info = self.client().get_job_info(sid)
        except RuntimeError as e:
            if "does not exist" in str(e):
                raise RayJobMissing(sid) from None
            raise
        status = getattr(info.status, "value", info.status)
        return RayJobState(status=str(status), exit_code=info.driver_exit_code, message=info.message)

    def stop(self, sid: str) -> bool:
        """Ask Ray to stop the job (SIGTERM to the driver, SIGKILL after RAY_JOB_STOP_WAIT_TIME_S)."""
        return bool(self.client().stop_job(sid))

    def logs(self, sid: str, lines: int) -> list[str]:
        """The last ``lines`` lines of the job's driver log."""
        text: str = self.client().get_job_logs(sid)
        return text.splitlines()[-lines:]
