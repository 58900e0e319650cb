"""The contract between a job process and the service: progress, result and exit files in its job folder.

A job process (any kind) writes ``progress.json`` (a :class:`JobProgress`, replaced atomically,
about once a second) and, when it ends normally, ``result.json`` (its PHI-free summary) or
``error.json`` (one line). A job with a point of no return (an ingest job's dataset commit)
writes ``commit.json`` (``{"state": "committing"}`` before it, ``"committed"`` after): from then
on the job is not cancelled, and it counts as succeeded once committed. The supervisor
(:mod:`radforge.services.jobs.supervisor`) writes ``exit.json`` with the exit status. The service reads these
files; it never talks to the job process, so it can restart at any time and read them again.

The job folder is a local path, or a URI (``s3://...``) when jobs run on a remote cluster through
Ray's Job Submission API: both sides read and write it through :func:`write_json_atomic` and
:func:`read_json`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from radforge.files import PRIVATE_FILE, read_bounded

PROGRESS = "progress.json"
RESULT = "result.json"
ERROR = "error.json"
EXIT = "exit.json"
SPEC = "spec.json"
# Written by the control plane each time Ray accepts the job's submission ({"submission_id",
# "submissions"}). A job whose submission id is recorded but which Ray does not know was never
# submitted when this is missing (the service stopped in between), and was lost by Ray when it is
# there (a head restart): either way it is submitted again, the latter up to ray_job_resubmits times.
SUBMITTED = "submitted.json"
LOG = "log.txt"
MAX_RECORD_BYTES = 16 << 20  # spec (a resolved run config), progress, result: kilobytes each
COMMIT = "commit.json"
COMMITTING, COMMITTED = "committing", "committed"


class JobProgress(BaseModel):
    """How far a job is. Counters are cumulative; ``*_per_second`` are current rates (last seconds)."""

    model_config = ConfigDict(extra="ignore")

    phase: str | None = None
    updated_at: float | None = None
    # ingest
    series_done: int | None = None
    series_total: int | None = None
    samples_written: int | None = None  # 2D slice samples (one slice in one window)
    shards_written: int | None = None
    bytes_written: int | None = None
    samples_per_second: float | None = None
    bytes_per_second: float | None = None
    # train
    step: int | None = None
    total_steps: int | None = None
    images_seen: int | None = None
    images_per_second: float | None = None
    loss: float | None = None
    data_wait_seconds: float | None = None  # cumulative time the step loop waited for data
    data_wait_fraction: float | None = None  # of the latest steps' time, spent waiting for data
    tokens_per_second: float | None = None
    mfu: float | None = None  # model FLOPs utilisation, when the trainer reports it
    # eval: (backbone, task) evaluations done, of all
    tasks_done: int | None = None
    tasks_total: int | None = None


JOB_EXIT_FAILED = 1


def job_file(job_dir: str | Path, name: str) -> str:
    """The path or URI of ``name`` in a job folder (a local path or a URI)."""
    return f"{str(job_dir).rstrip('/')}/{name}"


def _remote(path: str | Path) -> bool:
    text = str(path)
    return "://" in text and not text.startswith("file://")


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Replace ``path`` (a file or an object) with ``obj`` as JSON: readers see the old or the new whole."""
    data = json.dumps(obj, sort_keys=True)
    if _remote(path):
        from radforge.storage import resolve, write_bytes_atomic

        write_bytes_atomic(resolve(str(path)), data.encode())
        return
    local = Path(str(path).removeprefix("file://"))
    tmp = local.with_name(f".{local.name}.{os.getpid()}.tmp")
    # 0600 from the start: job records name archives and datasets (no window with wider modes)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    with os.fdopen(fd, "w") as f:
        f.write(data)
    os.replace(tmp, local)


def read_json(path: str | Path) -> Any | None:
    """The JSON in ``path``, or None if it does not exist (or is not JSON, e.g. a foreign file).

    Read bounded (:func:`radforge.files.read_bounded`): a job folder on shared storage is writable
    by the job and the cluster, and a device, a pipe or a huge file there is refused (None), never
    read into the service's memory.
    """
    try:
        if _remote(path):
            from radforge.storage import resolve

            loc = resolve(str(path))
            loc.fs.invalidate_cache(loc.path)
        return json.loads(read_bounded(str(path), limit=MAX_RECORD_BYTES))
    except (FileNotFoundError, ValueError):  # FileRefused is a ValueError
        return None


class RateWindow:
    """The rate of a growing counter over the last ``seconds`` (for "current throughput")."""

    def __init__(self, *, seconds: float = 10.0) -> None:
        self.seconds = seconds
        self._points: deque[tuple[float, float]] = deque()

    def add(self, value: float, *, now: float | None = None) -> float | None:
        """Record ``value`` at ``now``; returns the rate over the window (None until two points)."""
        t = time.monotonic() if now is None else now
        self._points.append((t, value))
        while len(self._points) > 2 and t - self._points[1][0] >= self.seconds:
            self._points.popleft()
        (t0, v0), (t1, v1) = self._points[0], self._points[-1]
        return (v1 - v0) / (t1 - t0) if t1 > t0 else None


def job_main(
    argv: list[str] | None,
    *,
    prog: str,
    description: str | None,
    run: Callable[[str, str], int],
    describe_error: Callable[[Exception], str],
    logger: logging.Logger,
) -> int:
    """The entry point every job process shares: ``--job-dir DIR --ray-address ADDR``, then ``run``.

    An exception ``run`` lets through ends the process with exit 1 and ``error.json`` holding
    ``describe_error(e)``: each kind decides how much of an unexpected error may leave the process
    (patient data must not, so most give only the exception's type).
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--job-dir", required=True, help="the job folder (path or URI)")
    parser.add_argument("--ray-address", required=True, help="the Ray cluster the job runs on")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(args.job_dir, args.ray_address)
    except Exception as e:
        write_json_atomic(job_file(args.job_dir, ERROR), {"error": describe_error(e)})
        logger.exception("%s failed", prog)
        return JOB_EXIT_FAILED


def unexpected_error_type(e: Exception) -> str:
    """Only the type of an unexpected error: its message may quote anything."""
    return f"unexpected {type(e).__name__}"
