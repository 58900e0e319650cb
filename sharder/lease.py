"""One writer at a time, enforced by the dataset itself: a lease object on the storage.

``_radforge_lease.json`` at the dataset root names its holder (owner id, host, pid, job id) and
carries acquired/heartbeat/expiry times. Every writer (a service job, a CLI ingest, another
service) takes it before reading the catalog it plans from and holds it to its commit, so two
spellings of one dataset (a symlink alias, ``s3a://``) or two control planes cannot interleave.

Protocol (every step is one conditional write, so no two writers can both win it):

- **acquire**: create the lease only if none exists (exclusive create: ``link`` on local disks,
  ``If-None-Match: *`` on S3). If one exists and is live, the writer is refused
  (:class:`DatasetBusyError`, naming the holder).
- **take over**: a lease whose expiry has passed belongs to a writer that died (or stalled past its
  expiry, which then lost it); so does one whose holder ran on this node (same kernel boot and pid
  namespace) under a pid that no longer exists. It is replaced only if it is still the version that was read
  (compare-and-replace: ``If-Match: <ETag>`` on S3, a version check under a POSIX lock locally).
  Of several writers racing for one stale lease, exactly one replaces it; the others see a live
  lease and are refused.
- **heartbeat**: a thread renews the lease (compare-and-replace on the holder's own version)
  every ``ttl_s / 4``. If the version changed, the lease was taken over: the writer has lost it.
- **fence**: the commit renews once more, synchronously, just before writing the root index and
  refuses (:class:`LeaseLostError`) if the lease is no longer its own.
- **release**: a conditional delete of the holder's version, at the end of the run (commit or
  failure).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from radforge.sharder.catalog import DatasetError
from radforge.storage import (
    ConditionFailed,
    Location,
    create_exclusive,
    delete_if_match,
    read_versioned,
    replace_if_match,
)

log = logging.getLogger(__name__)

LEASE = "_radforge_lease.json"
DEFAULT_TTL_S = 60.0  # a dead writer's lease is taken over after at most this long
ACQUIRE_ATTEMPTS = 4  # a lease released or taken over under our feet is read again this often
JOB_ID_ENV = "RADFORGE_JOB_ID"  # the control plane's job id, recorded in the lease when set


class DatasetBusyError(DatasetError):
    """Another live writer holds the dataset's lease; the message names it and when it expires."""


class LeaseLostError(DatasetError):
    """The writer's lease was taken over (it stalled past its expiry): it must not commit."""


@dataclass(frozen=True)
class LeaseRecord:
    """The content of the lease object (times are Unix seconds)."""

    owner: str
    host: str
    node: str  # the kernel and pid namespace the holder runs in: where its pid means something
    pid: int
    job_id: str | None
    acquired_at: float
    heartbeat_at: float
    expires_at: float

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> LeaseRecord:
        obj = json.loads(data)
        return cls(**{k: obj[k] for k in cls.__dataclass_fields__})

    def describe(self) -> str:
        job = f" job {self.job_id}" if self.job_id else ""
        return f"held by {self.host} pid {self.pid}{job} since {_utc(self.acquired_at)}"


def is_stale(record: LeaseRecord, now: float, *, node: str, pid_alive: Callable[[int], bool]) -> bool:
    """Whether a lease's holder is gone: its expiry passed, or it ran on ``node`` under a dead pid.

    A holder that stopped renewing is gone once the expiry passes. One that ran in this node (same
    kernel boot and pid namespace) under a pid that no longer exists is gone at once. A reused
    pid only makes a dead holder look alive: the lease then waits for its expiry.
    """
    if now >= record.expires_at:
        return True
    return record.node == node and not pid_alive(record.pid)


@functools.cache
def this_node() -> str:
    """The id of this kernel boot and pid namespace: processes with one node id see each other's pids."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        pidns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:  # no /proc: pids of lease holders are never judged, only expiry
        return f"unknown-{uuid.uuid4().hex}"
    return f"{boot}/{pidns}"


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists in this pid namespace (zombies count as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


class DatasetLease:
    """The write lease of the dataset at ``root``; a context manager (acquire + heartbeat, release).

    ``ttl_s`` bounds how long a dead writer blocks the dataset; it must exceed the clock skew
    between writers' hosts plus the heartbeat interval (``ttl_s / 4``).
    """

    def __init__(self, root: Location, *, job_id: str | None = None, ttl_s: float = DEFAULT_TTL_S) -> None:
        self.root = root
        self.loc = root.join(LEASE)
        self.ttl_s = ttl_s
        self.job_id = job_id if job_id is not None else os.environ.get(JOB_ID_ENV)
        self.owner = uuid.uuid4().hex
        self.record: LeaseRecord | None = None
        self._version: str | None = None
        self._lost = False
        self._mutex = threading.Lock()  # the heartbeat thread and the commit fence renew
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- taking and giving back ---------------------------------------------------------------
    def acquire(self) -> DatasetLease:
        """Take the lease (create it, or take over a stale one) or raise :class:`DatasetBusyError`."""
        for _ in range(ACQUIRE_ATTEMPTS):
            now = time.time()
            record = self._record(acquired_at=now, now=now)
            try:
                self._version = create_exclusive(self.loc, record.to_bytes())
                self.record = record
                return self
            except FileExistsError:
                pass
            except Exception as e:  # OSError, or the storage client's own (no credentials, endpoint down)
                raise DatasetError(
                    f"destination {self.root.uri} is not writable: cannot create its write lease "
                    f"({type(e).__name__})"
                ) from None
            current = read_versioned(self.loc)
            if current is None:
                continue  # released between our create and our read: try again
            data, version = current
            held = _parse(data, self.loc)
            if not is_stale(held, time.time(), node=this_node(), pid_alive=pid_alive):
                raise DatasetBusyError(
                    f"dataset {self.root.uri} is busy: its write lease is {held.describe()}, "
                    f"expiring {_utc(held.expires_at)} unless renewed; try again after that job ends"
                )
            try:
                self._version = replace_if_match(self.loc, record.to_bytes(), version)
            except ConditionFailed:
                continue  # renewed, released or taken over by another writer meanwhile: read again
            self.record = record
            log.warning("took over the stale write lease of %s (%s)", self.root.uri, held.describe())
            return self
        raise DatasetBusyError(f"dataset {self.root.uri} is busy: its write lease kept changing hands")

    def release(self) -> None:
        """Stop the heartbeat and delete the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._mutex:
            if self._version is None or self._lost:
                return
            try:
                delete_if_match(self.loc, self._version)
            except ConditionFailed:
                log.warning("the write lease of %s was taken over before its release", self.root.uri)
            except OSError as e:  # it expires on its own
                log.warning("could not release the write lease of %s: %s", self.root.uri, type(e).__name__)
            self._version = None

    # ---- keeping it -------------------------------------------------------------------------------
    def renew(self) -> None:
        """Push the expiry ``ttl_s`` ahead; :class:`LeaseLostError` if the lease is no longer ours."""
        with self._mutex:
            if self._lost or self._version is None or self.record is None:
                raise LeaseLostError(f"this writer no longer holds the write lease of {self.root.uri}")
            now = time.time()
            record = self._record(acquired_at=self.record.acquired_at, now=now)
            try:
                self._version = replace_if_match(self.loc, record.to_bytes(), self._version)
            except ConditionFailed:
                self._lost = True
                raise LeaseLostError(
                    f"the write lease of {self.root.uri} was taken over by another writer (this one stalled "
                    f"past its expiry): nothing was committed"
                ) from None
            self.record = record

    def fence(self) -> None:
        """Renew now, before a commit: afterwards the lease is ours for ``ttl_s`` at least."""
        self.renew()

    def start_heartbeat(self) -> None:
        """Renew every ``ttl_s / 4`` on a daemon thread until :meth:`release`."""
        self._thread = threading.Thread(target=self._beat, name="dataset-lease-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                self.renew()
            except LeaseLostError:
                log.error("lost the write lease of %s: this run will not commit", self.root.uri)
                return
            except OSError as e:  # a storage hiccup: the next beat tries again, well before expiry
                log.warning("write lease heartbeat of %s failed: %s", self.root.uri, type(e).__name__)

    def __enter__(self) -> DatasetLease:
        self.acquire()
        self.start_heartbeat()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("a DatasetLease stays in the process that holds it (it is not sent to Ray tasks)")

    def _record(self, *, acquired_at: float, now: float) -> LeaseRecord:
        return LeaseRecord(
            owner=self.owner,
            host=socket.gethostname(),
            node=this_node(),
            pid=os.getpid(),
            job_id=self.job_id,
            acquired_at=acquired_at,
            heartbeat_at=now,
            expires_at=now + self.ttl_s,
        )


def read_lease(root: Location) -> LeaseRecord | None:
    """The lease of the dataset at ``root``, if any (for status displays and tests)."""
    current = read_versioned(root.join(LEASE))
    return None if current is None else _parse(current[0], root.join(LEASE))


def _parse(data: bytes, loc: Location) -> LeaseRecord:
    try:
        return LeaseRecord.from_bytes(data)
    except (ValueError, KeyError, TypeError):
        raise DatasetError(
            f"{loc.uri} is not a valid write lease: if no writer is running, delete it and retry"
        ) from None


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
