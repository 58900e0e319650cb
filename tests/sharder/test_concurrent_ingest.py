"""Concurrent ingests into one dataset (issue 15): real ingest processes, local disk and moto S3.

Writers are real processes running the real ingest (``run_ingest``) against the session's Ray,
each with its own archive; the archives overlap (writer ``w`` holds series ``w`` and ``w + 1``), so
their series claims collide in the commit log. Every writer plans against the same log head (all
of them are held at the start of their write until all have planned), and the writers after the
first run their orphan cleanup while the first writer's part is on storage and not committed yet:
without a liveness record they would delete it. The first writer commits only after they did.

Orphan cleanup itself is also tested without Ray: parts whose writer is alive, dead on this node,
silent for less or more than the grace period, committed, or committed after the catalog was read.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from radforge.ingest.config import load_config
from radforge.ingest.pipeline import run_ingest
from radforge.sharder.catalog import load_catalog
from radforge.sharder.datasink import commit_part, remove_orphans
from radforge.sharder.lease import (
    LEASES,
    ORPHAN_GRACE_S,
    LeaseRecord,
    PartLease,
    archive_lease_loc,
    part_lease_loc,
    read_lease,
    this_node,
)
from radforge.sharder.marker import mark_dataset
from radforge.sharder.verify import verify_dataset
from radforge.storage import Location, create_exclusive, exists, resolve, write_bytes_atomic
from tests.sharder.test_commit_log import _write
from tests.support import make_archive, read_all

REPO = Path(__file__).parents[2]
DEADLINE_S = 300
SHARDS = {"shards": {"size_limit": 16384, "samples_per_task": 8}}

# argv: source dataset ray_address workdir name names(comma-separated; the first is the first writer)
WRITER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from radforge.ingest.config import load_config
    from radforge.ingest.pipeline import run_ingest
    from radforge.runtime import ensure_ray
    from radforge.sharder.datasink import MDSDatasink

    source, dataset, address, work, name, names = sys.argv[1:7]
    work, names = Path(work), names.split(",")
    first, others = names[0], [n for n in names if n != name]

    def wait(stage, who):
        deadline = time.monotonic() + 240
        while not all((work / f"{w}.{stage}").exists() or (work / f"{w}.ended").exists() for w in who):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{who} did not reach {stage}")
            time.sleep(0.05)

    class Staggered(MDSDatasink):
        attempts = 0

        def on_write_start(self, schema=None):
            Staggered.attempts += 1
            if Staggered.attempts == 1:
                (work / f"{name}.planned").touch()
                wait("planned", names)  # every writer planned against the same log head
                if name != first:
                    wait("written", [first])  # the first writer's part is on storage, uncommitted
            super().on_write_start(schema)  # orphan cleanup, beside the first writer's live part
            (work / f"{name}.cleaned").touch()

        def on_write_complete(self, write_result):
            if Staggered.attempts == 1:
                (work / f"{name}.written").touch()
                if name == first:
                    wait("cleaned", others)
            super().on_write_complete(write_result)

    try:
        ensure_ray(address)
        cfg = load_config(overrides={"shards": {"size_limit": 16384, "samples_per_task": 8}})
        summary = run_ingest(source, dataset, cfg, sink_cls=Staggered)
        result = {k: getattr(summary, k) for k in ("committed", "part_id", "samples_written", "replans")}
        (work / f"{name}.result").write_text(json.dumps(result))
    finally:
        (work / f"{name}.ended").touch()
    """
)

# argv: source dataset ray_address: writes its part, then says so and waits to be killed
KILLED_BEFORE_COMMIT = textwrap.dedent(
    """
    import signal, sys
    from radforge.ingest.config import load_config
    from radforge.ingest.pipeline import run_ingest
    from radforge.runtime import ensure_ray
    from radforge.sharder.commit_log import write_part_index
    from radforge.sharder.datasink import MDSDatasink
    from radforge.storage import resolve

    class Killed(MDSDatasink):
        def on_write_complete(self, write_result):
            shards = [s for r in write_result.write_returns if r is not None for s in r["shards"]]
            write_part_index(resolve(self.dataset_uri), self.part_id, shards)  # all but the log entry
            print(self.part_id, flush=True)
            signal.pause()  # until the test kills this process

    ensure_ray(sys.argv[3])
    cfg = load_config(overrides={"shards": {"size_limit": 16384, "samples_per_task": 8}})
    run_ingest(sys.argv[1], sys.argv[2], cfg, sink_cls=Killed)
    """
)


def _python(script: str, *args: str, stdout: int = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=stdout,
        stderr=subprocess.PIPE,
    )


def _ray_address() -> str:
    import ray

    return str(ray.get_runtime_context().gcs_address)


def _dataset(storage: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if storage == "s3":
        return f"s3://{request.getfixturevalue('s3_bucket')}/datasets/{request.node.callspec.id}"
    return str(tmp_path / "ds")


def _keys(dataset: str, cache: Path) -> dict[str, dict]:
    """Every sample by key through a stock StreamingDataset (read_all refuses a duplicate key)."""
    return read_all(cache, remote=dataset) if dataset.startswith("s3://") else read_all(dataset)


def _listed(folder: Location) -> set[str]:
    try:
        return {str(p).rstrip("/").rsplit("/", 1)[-1] for p in folder.fs.ls(folder.path, refresh=True)}
    except FileNotFoundError:
        return set()


@pytest.fixture(scope="module")
def series_pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five small CT series, one folder each: the archives below are made of copies of them."""
    return make_archive(tmp_path_factory.mktemp("pool"), n_ct=5, n_mr=0, size=32, n_slices=4, seed=7)


def _overlapping_archives(pool: Path, root: Path, writers: int) -> list[Path]:
    """Archive ``w`` holds series ``w`` and ``w + 1``: each shares one series with the next."""
    series = sorted(pool.iterdir())
    archives = []
    for w in range(writers):
        for s in series[w : w + 2]:
            shutil.copytree(s, root / f"delivery-{w}" / s.name)
        archives.append(root / f"delivery-{w}")
    return archives


@pytest.mark.parametrize(  # (s3, 2) adds little to (s3, 4) and costs ~50 s on this machine
    ("storage", "writers"), [("local", 2), ("local", 4), ("s3", 4)], ids=lambda v: str(v)
)
def test_concurrent_ingests_commit_every_series_once(
    ray_local: None,
    series_pool: Path,
    tmp_path: Path,
    storage: str,
    writers: int,
    request: pytest.FixtureRequest,
) -> None:
    dataset = _dataset(storage, tmp_path, request)
    archives = _overlapping_archives(series_pool, tmp_path / "archives", writers)
    work = tmp_path / "work"
    work.mkdir()
    names = [f"w{w}" for w in range(writers)]
    address = _ray_address()
    procs = [
        _python(WRITER, str(a), dataset, address, str(work), n, ",".join(names))
        for a, n in zip(archives, names, strict=True)
    ]
    results = []
    for proc, name in zip(procs, names, strict=True):
        _, err = proc.communicate(timeout=DEADLINE_S)
        assert proc.returncode == 0, err.decode()[-3000:]
        results.append(json.loads((work / f"{name}.result").read_text()))

    root = resolve(dataset)
    catalog = load_catalog(root)
    committed = [r for r in results if r["committed"]]
    assert sorted(r["part_id"] for r in committed) == sorted(catalog.part_ids)
    assert catalog.seq == len(catalog.parts)  # every log entry a commit, no part twice
    # all planned against the empty log and the archives overlap: every later claim of a shared
    # series was refused at commit and its writer planned again (at least one did)
    assert sum(r["replans"] for r in results) >= 1, results
    keys = _keys(dataset, tmp_path / "cache")
    assert len({k.split("/")[0] for k in keys}) == writers + 1  # every series ...
    assert len(keys) == sum(r["samples_written"] for r in committed)  # ... once, keys unique
    report = verify_dataset(dataset)  # the first writer's part survived the others' cleanup
    assert report.ok and report.samples == len(keys), report.to_dict()
    # refused parts were cleaned up by the runs that planned again; no lease is left behind
    assert _listed(root.join("parts")) == catalog.part_ids
    assert not {n for n in _listed(root.join(LEASES)) if n.endswith(".json")}


@pytest.mark.parametrize("storage", ["local"])  # cleanup on S3: the orphan test below
def test_a_writer_killed_before_its_log_entry_leaves_no_trace_and_the_next_run_removes_it(
    ray_local: None, series_pool: Path, tmp_path: Path, storage: str, request: pytest.FixtureRequest
) -> None:
    dataset = _dataset(storage, tmp_path, request)
    root = resolve(dataset)
    archives = _overlapping_archives(series_pool, tmp_path / "archives", 4)
    first, killed, later = archives[0], archives[1], archives[3]  # the killed one's series 2 is its own
    cfg = load_config(overrides=SHARDS)
    run_ingest(str(first), dataset, cfg)
    before = _keys(dataset, tmp_path / "before")

    proc = _python(KILLED_BEFORE_COMMIT, str(killed), dataset, _ray_address(), stdout=subprocess.PIPE)
    line = proc.stdout.readline()  # type: ignore[union-attr]  # the part id, once its files are written
    assert line.strip(), proc.stderr.read().decode()[-3000:]  # type: ignore[union-attr]
    orphan = line.decode().strip()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert exists(root.join("parts", orphan, "index.json"))
    record = read_lease(part_lease_loc(root, orphan))
    assert record is not None and record.pid == proc.pid  # its liveness record names a dead writer

    assert orphan not in load_catalog(root).part_ids  # no trace in readers
    assert _keys(dataset, tmp_path / "after-kill").keys() == before.keys()
    assert verify_dataset(dataset).ok

    summary = run_ingest(str(later), dataset, cfg)  # another archive's run: its cleanup removes it
    assert summary.committed and summary.replans == 0
    assert orphan not in _listed(root.join("parts")) and read_lease(part_lease_loc(root, orphan)) is None
    rerun = run_ingest(str(killed), dataset, cfg)  # its archive's lease was taken over at once
    assert rerun.committed
    keys = _keys(dataset, tmp_path / "end")
    assert len({k.split("/")[0] for k in keys}) == 5 and verify_dataset(dataset).ok
    assert read_lease(archive_lease_loc(root, killed.name)) is None


def _plant(root: Location, part_id: str, record: LeaseRecord | None, *, manifest_only: bool = False) -> None:
    """An uncommitted part on storage (shards and part index, or only a manifest) and its lease."""
    if manifest_only:
        write_bytes_atomic(root.join("manifests", f"{part_id}.parquet"), b"PAR1")
    else:
        _write(root, part_id, [f"series-of-{part_id}"])
    if record is not None:
        create_exclusive(part_lease_loc(root, part_id), record.to_bytes())


def _foreign(heartbeat_age_s: float) -> LeaseRecord:
    """The lease of a writer on another node (its pid means nothing here) that beat last that long ago."""
    beat = time.time() - heartbeat_age_s
    return LeaseRecord("elsewhere", "node-7", "other-boot/1", 2**22 + 1, None, beat, beat, beat + 60)


@pytest.mark.parametrize("storage", ["local", "s3"])
def test_orphan_cleanup_spares_live_writers_and_committed_parts(
    storage: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    root = resolve(_dataset(storage, tmp_path, request))
    mark_dataset(root)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    dead_pid = int(dead.stdout)  # a process of this node that has ended
    now = time.time()
    dead_here = LeaseRecord("gone", "here", this_node(), dead_pid, None, now, now, now + 60)
    parts = {
        "live": "p-000000000000000a",  # held by this process, right now
        "dead-here": "p-000000000000000b",  # its writer's pid is gone: removed at once
        "silent-within-grace": "p-000000000000000c",  # expired, but beat less than the grace ago
        "silent-past-grace": "p-000000000000000d",
        "no-lease": "p-000000000000000e",  # its writer let go (refused at commit, or failed)
        "manifest-only": "p-000000000000000f",
        "unreadable-lease": "p-0000000000000011",  # not judged: left for a person to look at
    }
    live = PartLease(root, parts["live"]).acquire()
    _plant(root, parts["live"], None)
    _plant(root, parts["dead-here"], dead_here)
    _plant(root, parts["silent-within-grace"], _foreign(ORPHAN_GRACE_S - 100))
    _plant(root, parts["silent-past-grace"], _foreign(ORPHAN_GRACE_S + 100))
    _plant(root, parts["no-lease"], None)
    _plant(root, parts["manifest-only"], None, manifest_only=True)
    _plant(root, parts["unreadable-lease"], None)
    create_exclusive(part_lease_loc(root, parts["unreadable-lease"]), b"{not json")
    # committed after the cleaner read the catalog, its writer gone (lease released): never removed
    stale_view = load_catalog(root)
    late = "p-0000000000000010"
    commit_part(root, part_id=late, part_info={}, task_returns=[_write(root, late, ["late"])])

    removed = remove_orphans(root, stale_view, keep=set())
    gone = {parts[k] for k in ("dead-here", "silent-past-grace", "no-lease", "manifest-only")}
    assert set(removed) == gone
    left = _listed(root.join("parts"))
    assert left == {parts["live"], parts["silent-within-grace"], parts["unreadable-lease"], late}
    assert _listed(root.join("manifests")) == {f"{late}.parquet"}
    assert all(read_lease(part_lease_loc(root, p)) is None for p in gone)  # claims released
    live.fence()  # the live writer's lease is still its own
    live.release()
    assert verify_dataset(root.uri).ok and load_catalog(root).part_ids == {late}
