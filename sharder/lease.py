"""Who is writing what, recorded in the dataset itself: leases on the storage.

Several ingest runs write one dataset at once (hospitals deliver in parallel); the commit log
serialises their commits (:mod:`radforge.sharder.commit_log`: optimistic concurrency, a series is
never committed twice). What still needs mutual exclusion is held as leases, small objects in
``_radforge_leases/`` at the dataset root, so every spelling of the dataset (a symlink alias,
``s3a://``) and every writer (a service job, a CLI ingest, another control plane) sees them:

- **archive lease** (``archive-<hash of the archive id>.json``, :class:`ArchiveLease`): one run per
  archive at a time. Two runs of one archive would plan the same series into the same part id and
  write the same folder; runs of different archives go in parallel. Held from before the run reads
  the catalog it plans from until after its commit.
- **part lease** (``part-<part id>.json``, :class:`PartLease`): the liveness record of a part being
  written, created before its first file and deleted after its commit (or failure). Orphan cleanup
  (:func:`radforge.sharder.datasink.remove_orphans`) removes an uncommitted part only once it can
  take this lease itself: nobody holds it, its holder ran on this node under a pid that is gone, or
  its heartbeat is older than a grace period (:data:`ORPHAN_GRACE_S`).

Protocol of a lease (every step is one conditional write, so no two holders can both win it):

- **acquire**: create the lease only if none exists (exclusive create: ``link`` on local disks,
  ``If-None-Match: *`` on S3). If one exists and is live, the writer is refused
  (:class:`DatasetBusyError`, naming the holder).
- **take over**: a lease whose expiry has passed belongs to a writer that died (or stalled past its
  expiry, which then lost it); so does one whose holder ran on this node (same kernel boot and pid
  namespace) under a pid that no longer exists. It is replaced only if it is still the version that
  was read (compare-and-replace: ``If-Match: <ETag>`` on S3, a version check under a POSIX lock
  locally). Of several writers racing for one stale lease, exactly one replaces it; the others see
  a live lease and are refused.
- **heartbeat**: a thread renews the lease (compare-and-replace on the holder's own version)
  every ``ttl_s / 4``. If the version changed, the lease was taken over: the holder has lost it.
- **fence**: the commit renews once more, synchronously, just before creating its log entry, and
  refuses (:class:`LeaseLostError`) if the lease is no longer its own.
- **release**: a conditional delete of the holder's version, at the end (commit or failure).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Self

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

LEASES = "_radforge_leases"  # the folder of the dataset's leases (a reserved "_radforge_" name)
DEFAULT_TTL_S = 60.0  # a dead writer's lease is taken over after at most this long
# Orphan cleanup takes an uncommitted part's lease over only this long after its last heartbeat
# (or at once when its holder's pid is gone on this node): well beyond any stall a live writer
# survives, and beyond clock skew between hosts. An orphan only costs storage meanwhile.
ORPHAN_GRACE_S = 600.0
ACQUIRE_ATTEMPTS = 4  # a lease released or taken over under our feet is read again this often
JOB_ID_ENV = "RADFORGE_JOB_ID"  # the control plane's job id, recorded in the lease when set


class DatasetBusyError(DatasetError):
    """Another live writer holds the lease (of an archive, or of a part); the message names it."""


class LeaseLostError(DatasetError):
    """The writer's lease was taken over (it stalled past its expiry): it must not commit."""


@dataclass(frozen=True)
class LeaseRecord:
    """The content of a lease object (times are Unix seconds)."""

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


def is_stale(
    record: LeaseRecord,
    now: float,
    *,
    node: str,
    pid_alive: Callable[[int], bool],
    grace_s: float = 0.0,
) -> bool:
    """Whether a lease's holder is gone: it expired (and beat last ``grace_s`` ago), or its pid is gone.

    A holder that stopped renewing is gone once the expiry passes; orphan cleanup also waits until
    its heartbeat is ``grace_s`` old. One that ran in this node (same kernel boot and pid
    namespace) under a dead pid is gone at once. A reused pid only makes a dead holder look alive:
    the lease then waits for its expiry.
    """
    if now >= max(record.expires_at, record.heartbeat_at + grace_s):
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


def archive_lease_loc(root: Location, archive_id: str) -> Location:
    """Where the lease of ``archive_id`` lives (a hash: archive ids are free text)."""
    return root.join(LEASES, f"archive-{hashlib.sha256(archive_id.encode()).hexdigest()[:32]}.json")


def part_lease_loc(root: Location, part_id: str) -> Location:
    """Where the liveness record of part ``part_id`` lives while it is being written."""
    return root.join(LEASES, f"part-{part_id}.json")


class Lease:
    """The lease of one ``key`` (an archive id, a part id) of the dataset at ``root``; a context manager.

    Entering acquires it and starts its heartbeat, leaving releases it. Subclasses say what is
    leased (``kind``) and where its object lives (``location``).

    ``ttl_s`` bounds how long a dead writer blocks others; it must exceed the clock skew between
    writers' hosts plus the heartbeat interval (``ttl_s / 4``).
    """

    kind: ClassVar[str]

    @staticmethod
    def location(root: Location, key: str, /) -> Location:
        raise NotImplementedError

    def __init__(
        self, root: Location, key: str, *, job_id: str | None = None, ttl_s: float = DEFAULT_TTL_S
    ) -> None:
        self.root = root
        self.loc = self.location(root, key)
        self.subject = f"{self.kind} {key!r} of dataset {root.uri}"  # what it protects, in messages
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
    def acquire(self, *, grace_s: float = 0.0) -> Self:
        """Take the lease (create it, or take over a stale one) or raise :class:`DatasetBusyError`.

        ``grace_s``: a holder whose pid is not provably gone counts as gone only once its
        heartbeat is that old, as well as expired (orphan cleanup; see :func:`is_stale`).
        """
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
                    f"destination {self.root.uri} is not writable: cannot create the write lease of "
                    f"{self.subject} ({type(e).__name__})"
                ) from None
            current = read_versioned(self.loc)
            if current is None:
                continue  # released between our create and our read: try again
            data, version = current
            held = _parse(data, self.loc)
            if not is_stale(held, time.time(), node=this_node(), pid_alive=pid_alive, grace_s=grace_s):
                raise DatasetBusyError(
                    f"{self.subject} is busy: its write lease is {held.describe()}, "
                    f"expiring {_utc(held.expires_at)} unless renewed; try again after that job ends"
                )
            try:
                self._version = replace_if_match(self.loc, record.to_bytes(), version)
            except ConditionFailed:
                continue  # renewed, released or taken over by another writer meanwhile: read again
            self.record = record
            log.warning("took over the stale write lease of %s (%s)", self.subject, held.describe())
            return self
        raise DatasetBusyError(f"{self.subject} is busy: its write lease kept changing hands")

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
                log.warning("the write lease of %s was taken over before its release", self.subject)
            except OSError as e:  # it expires on its own
                log.warning("could not release the write lease of %s: %s", self.subject, type(e).__name__)
            self._version = None

    # ---- keeping it -------------------------------------------------------------------------------
    def renew(self) -> None:
        """Push the expiry ``ttl_s`` ahead; :class:`LeaseLostError` if the lease is no longer ours."""
        with self._mutex:
            if self._lost or self._version is None or self.record is None:
                raise LeaseLostError(f"this writer no longer holds the write lease of {self.subject}")
            now = time.time()
            record = self._record(acquired_at=self.record.acquired_at, now=now)
            try:
                self._version = replace_if_match(self.loc, record.to_bytes(), self._version)
            except ConditionFailed:
                self._lost = True
                raise LeaseLostError(
                    f"the write lease of {self.subject} was taken over by another writer (this one "
                    f"stalled past its expiry): nothing was committed"
                ) from None
            self.record = record

    def fence(self) -> None:
        """Renew now, before a commit: afterwards the lease is ours for ``ttl_s`` at least."""
        self.renew()

    def start_heartbeat(self) -> None:
        """Renew every ``ttl_s / 4`` on a daemon thread until :meth:`release`."""
        self._thread = threading.Thread(target=self._beat, name="write-lease-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                self.renew()
            except LeaseLostError:
                log.error("lost the write lease of %s: this run will not commit", self.subject)
                return
            except OSError as e:  # a storage hiccup: the next beat tries again, well before expiry
                log.warning("write lease heartbeat of %s failed: %s", self.subject, type(e).__name__)

    def __enter__(self) -> Self:
        self.acquire()
        self.start_heartbeat()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("a write lease stays in the process that holds it (it is not sent to Ray tasks)")

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


class ArchiveLease(Lease):
    """The lease of one archive's runs into the dataset at ``root``: one run per archive at a time."""

    kind = "archive"
    location = staticmethod(archive_lease_loc)


class PartLease(Lease):
    """The liveness record of a part while it is written: orphan cleanup spares it."""

    kind = "part"
    location = staticmethod(part_lease_loc)


def read_lease(loc: Location) -> LeaseRecord | None:
    """The lease at ``loc`` (:func:`archive_lease_loc`, :func:`part_lease_loc`), if any."""
    current = read_versioned(loc)
    return None if current is None else _parse(current[0], loc)


def _parse(data: bytes, loc: Location) -> LeaseRecord:
    try:
        return LeaseRecord.from_bytes(data)
    except (ValueError, KeyError, TypeError):
        raise DatasetError(
            f"{loc.uri} is not a valid write lease: if no writer is running, delete it and retry"
        ) from None


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
