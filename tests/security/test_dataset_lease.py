"""An archive's write lease on real storage (local disk and a moto S3 server): races, takeover, loss.

Runs of different archives write one dataset at once (the commit log serialises their commits); two
runs of one archive never do: each holds the archive's lease in the dataset (``ArchiveLease``).

Writers race from real threads released together by a barrier; "stale" is a lease whose expiry
has passed (a writer with ``ttl_s=0`` is stale at once) or whose holder, a real process on this
node, was killed, so nothing here waits on a clock.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from radforge.sharder.lease import (
    ArchiveLease,
    DatasetBusyError,
    LeaseLostError,
    LeaseRecord,
    archive_lease_loc,
    read_lease,
)
from radforge.storage import Location, create_exclusive, exists, resolve

REPO = Path(__file__).parents[2]
RACERS = 6
ROUNDS = 4
ARCHIVE = "hospital-a-2026-11"


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> Location:
    if request.param == "s3":
        return resolve(f"s3://{request.getfixturevalue('s3_bucket')}/datasets/ct")
    (tmp_path / "ds").mkdir()
    return resolve(str(tmp_path / "ds"))


def _held(root: Location) -> LeaseRecord | None:
    return read_lease(archive_lease_loc(root, ARCHIVE))


def _race(take: Callable[[], ArchiveLease]) -> tuple[list[ArchiveLease], list[str]]:
    """Run ``take`` on RACERS threads released at once: (winners, refusal messages)."""
    barrier = threading.Barrier(RACERS)
    winners: list[ArchiveLease] = []
    refused: list[str] = []
    errors: list[BaseException] = []

    def run() -> None:
        barrier.wait()
        try:
            winners.append(take())
        except DatasetBusyError as e:
            refused.append(str(e))
        except BaseException as e:  # surfaced below: a racer must win or be refused, nothing else
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(RACERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    return winners, refused


def test_exactly_one_of_racing_writers_takes_a_free_lease(root: Location) -> None:
    for _ in range(ROUNDS):
        winners, refused = _race(lambda: ArchiveLease(root, ARCHIVE).acquire())
        assert len(winners) == 1 and len(refused) == RACERS - 1
        held = _held(root)
        assert held is not None and held.owner == winners[0].owner
        assert all("is busy" in m and f"pid {held.pid}" in m and "\n" not in m for m in refused)
        winners[0].release()
        assert not exists(archive_lease_loc(root, ARCHIVE))


def test_a_stale_lease_is_taken_over_by_exactly_one_of_racing_writers(root: Location) -> None:
    for _ in range(ROUNDS):
        dead = ArchiveLease(root, ARCHIVE, job_id="job-dead", ttl_s=0).acquire()  # expired as soon as written
        winners, refused = _race(lambda: ArchiveLease(root, ARCHIVE, job_id="job-new").acquire())
        assert len(winners) == 1 and len(refused) == RACERS - 1
        held = _held(root)
        assert held is not None and held.owner == winners[0].owner and held.job_id == "job-new"
        # The writer that stalled past its expiry finds out at its next renewal and never commits.
        with pytest.raises(LeaseLostError, match="taken over"):
            dead.fence()
        dead.release()  # does not delete the new holder's lease
        assert _held(root) == held
        winners[0].release()


def test_a_live_lease_is_never_taken_over(root: Location) -> None:
    holder = ArchiveLease(root, ARCHIVE, job_id="job-1").acquire()
    before = _held(root)
    with pytest.raises(DatasetBusyError, match="job job-1"):
        ArchiveLease(root, ARCHIVE).acquire()
    assert _held(root) == before
    holder.fence()  # still ours
    holder.release()
    ArchiveLease(root, ARCHIVE).acquire().release()  # free again


def test_the_heartbeat_keeps_the_lease_alive(root: Location) -> None:
    with ArchiveLease(root, ARCHIVE, ttl_s=2.0) as lease:
        first = _held(root)
        assert first is not None
        deadline = time.monotonic() + 30
        while (now := _held(root)) is not None and now.heartbeat_at == first.heartbeat_at:
            assert time.monotonic() < deadline, "the heartbeat never renewed the lease"
            time.sleep(0.05)
        assert now is not None and now.expires_at > first.expires_at and now.owner == lease.owner
        assert now.acquired_at == first.acquired_at
    assert _held(root) is None  # released on exit


HOLD_AND_WAIT = textwrap.dedent(
    """
    import signal, sys
    from radforge.sharder.lease import ArchiveLease
    from radforge.storage import resolve

    ArchiveLease(resolve(sys.argv[1]), sys.argv[2]).acquire()
    print("held", flush=True)
    signal.pause()  # until the test kills it
    """
)


def test_the_lease_of_a_killed_writer_on_this_node_is_taken_over_at_once(root: Location) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_AND_WAIT, root.uri, ARCHIVE],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    # the holder says so once it holds the lease (a line on its stdout; EOF if it died first)
    line = proc.stdout.readline()  # type: ignore[union-attr]
    assert line == b"held\n", proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
    dead = _held(root)
    assert dead is not None and dead.pid == proc.pid and dead.expires_at > time.time()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)

    lease = ArchiveLease(root, ARCHIVE).acquire()  # not expired, but its holder is provably gone
    assert _held(root) == lease.record
    lease.release()


def test_a_lease_from_another_node_waits_for_its_expiry(root: Location) -> None:
    # Its pid means nothing here (another machine or pid namespace): only the expiry counts.
    now = time.time()
    foreign = LeaseRecord(
        owner="elsewhere",
        host="node-7",
        node="other-boot/1",
        pid=2**22 + 1,  # above pid_max: no such process here
        job_id=None,
        acquired_at=now,
        heartbeat_at=now,
        expires_at=now + 600,
    )
    create_exclusive(archive_lease_loc(root, ARCHIVE), foreign.to_bytes())
    with pytest.raises(DatasetBusyError, match="held by node-7 pid"):
        ArchiveLease(root, ARCHIVE).acquire()
    assert _held(root) == foreign


def test_two_archives_lease_one_dataset_at_once_and_an_alias_takes_the_same_lease(
    root: Location, tmp_path: Path
) -> None:
    if root.is_local:
        os.symlink(root.path, tmp_path / "alias")
        alias = resolve(str(tmp_path / "alias"))
    else:
        alias = resolve(f"s3a://{root.path}/")
    first = ArchiveLease(root, ARCHIVE, job_id="job-a").acquire()
    other = ArchiveLease(alias, "hospital-b-2026-11").acquire()  # another archive: runs beside it
    with pytest.raises(DatasetBusyError, match="job job-a"):
        ArchiveLease(alias, ARCHIVE).acquire()  # the same archive through another spelling: refused
    assert _held(root) == first.record
    other.release()
    first.release()
