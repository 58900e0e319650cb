"""The commit log: sequential and concurrent commits (local, moto S3), crashes, checkpoints, upgrade, export.

Writers here are the real write path without Ray: :meth:`MDSDatasink.write` (the Ray task's body)
writes real MDS shards of small samples, :func:`commit_part` commits them; a writer plans against
the log like an ingest run (series already ingested are skipped) and re-plans when a concurrent
writer claimed its series first.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from radforge.sharder import commit_log
from radforge.sharder.catalog import INDEX, load_catalog
from radforge.sharder.commit_log import LOG, SeriesClaimedError, read_state
from radforge.sharder.datasink import MDSDatasink, commit_part, remove_orphans, rows_block
from radforge.sharder.marker import mark_dataset
from radforge.sharder.mds import SampleEncoder
from radforge.sharder.schema import COLUMNS
from radforge.sharder.verify import verify_dataset
from radforge.storage import Location, resolve
from tests.support import read_all

SLICES = 3
COUNT = "CT|axial|raw|-"


def _write(root: Location, part_id: str, series: list[str]) -> dict[str, Any]:
    """One write task's output (real shards) for ``series``, as the datasink's ``write`` returns it."""
    encoder = SampleEncoder(COLUMNS)
    rows = []
    for key in series:
        for i in range(SLICES):
            sample = {
                "key": f"{key}/axial/{i:05d}/raw",
                "image": np.full((8, 8), i, np.int16),
                "fg": np.zeros((1, 1), np.uint8),
                "meta": {"series_key": key},
            }
            encoded = encoder.encode(sample)
            rows.append(
                {"record": "sample", "key": sample["key"], "sample": encoded, "count": COUNT, "series": ""}
            )
        record = {"series_key": key, "status": "ingested", "reason": None, "slices_kept": SLICES}
        rows.append(dict(record="series", key=key, sample=b"", count="", series=json.dumps(record)))
    sink = MDSDatasink(root.uri, part_id=part_id, part_info={}, compression=None, size_limit=2048)
    return sink.write([rows_block(rows)], None)


def _ingested(root: Location) -> set[str]:
    """Series keys the committed parts ingested (read from their manifests, as ingest plans)."""
    keys: set[str] = set()
    for part in load_catalog(root).parts:
        loc = root.join(part["manifest"])
        with loc.fs.open(loc.path, "rb") as f:
            table = pq.read_table(f).to_pydict()
        keys |= {k for k, s in zip(table["series_key"], table["status"], strict=True) if s == "ingested"}
    return keys


def _writer(uri: str, archive: str, series: list[str], start: threading.Barrier | None = None) -> list[str]:
    """Plan against the log, write, commit; re-plan on a lost claim. Returns the part ids committed."""
    from radforge.ingest.pipeline import part_id_for

    root = resolve(uri)
    if start is not None:
        start.wait()
    committed = []
    for _ in range(50):
        catalog = load_catalog(root)
        pending = sorted(set(series) - _ingested(root))
        if not pending:
            return committed
        part_id = part_id_for(archive, "cfg", pending)
        ret = _write(root, part_id, pending)
        try:
            commit_part(
                root,
                part_id=part_id,
                part_info={"archive_id": archive, "config_hash": "cfg"},
                task_returns=[ret],
                base_seq=catalog.seq,
            )
        except SeriesClaimedError:
            continue  # another writer won some of these series: plan again against the log tail
        committed.append(part_id)
    raise AssertionError("writer did not finish in 50 rounds")


def _keys_of_parts(root: Location, cache: Path) -> list[str]:
    """Every sample key of every committed part, each part read by a stock StreamingDataset."""
    keys: list[str] = []
    for part in load_catalog(root).parts:
        loc = root.join("parts", part["id"])
        keys += list(read_all(loc.path) if root.is_local else read_all(cache / part["id"], remote=loc.uri))
    return keys


def test_sequential_commits_are_consecutive_entries_and_match_the_root_index_layout(
    tmp_path: Path,
) -> None:
    log_root, old_root = resolve(str(tmp_path / "log")), resolve(str(tmp_path / "old"))
    for n, series in enumerate([["s1", "s2"], ["s3"], ["s4", "s5", "s6"]]):
        for root, layout in ((log_root, "log"), (old_root, "root_index")):
            ret = _write(root, f"p-{n:016x}", series)
            pid = f"p-{n:016x}"
            commit_part(root, part_id=pid, part_info={"archive_id": "a"}, task_returns=[ret], layout=layout)
    entries = sorted(os.listdir(tmp_path / "log" / LOG))
    assert entries == [f"{i:020d}.json" for i in (1, 2, 3)]
    assert [json.loads((tmp_path / "log" / LOG / e).read_text())["seq"] for e in entries] == [1, 2, 3]
    assert not (tmp_path / "old" / LOG).exists()
    new, old = load_catalog(log_root), load_catalog(old_root)
    assert (new.seq, new.layout, old.layout) == (3, "log", "root_index")
    drop = {"committed_at", "index", "log_seq"}
    assert [{k: v for k, v in p.items() if k not in drop} for p in new.parts] == [
        {k: v for k, v in p.items() if k not in drop} for p in old.parts
    ]
    assert new.shards == old.shards
    assert verify_dataset(log_root.uri).ok
    # below the threshold the log layout keeps a root index a stock reader opens: the same samples
    assert read_all(log_root.path).keys() == read_all(old_root.path).keys()
    assert len(read_all(log_root.path)) == 6 * SLICES


def test_a_claimed_series_refuses_the_commit_and_the_writer_replans(tmp_path: Path) -> None:
    root = resolve(str(tmp_path / "ds"))
    base = load_catalog(root).seq
    slow = _write(root, "p-000000000000000a", ["s1", "s2"])  # planned at `base`, not yet committed
    fast = _write(root, "p-000000000000000b", ["s2", "s3"])
    commit_part(root, part_id="p-000000000000000b", part_info={}, task_returns=[fast], base_seq=base)
    with pytest.raises(SeriesClaimedError, match="1 series of part p-000000000000000a"):
        commit_part(root, part_id="p-000000000000000a", part_info={}, task_returns=[slow], base_seq=base)
    assert [p["id"] for p in load_catalog(root).parts] == ["p-000000000000000b"]
    assert _writer(root.uri, "a", ["s1", "s2"]) != []  # re-planned: only s1 is left
    assert _ingested(root) == {"s1", "s2", "s3"}
    keys = list(read_all(root.path))
    assert len(keys) == len(set(keys)) == 3 * SLICES


def _race(uri: str, writers: int, cache: Path) -> None:
    """``writers`` threads, each its own archive, over overlapping series, released at once."""
    start = threading.Barrier(writers)
    plans = [[f"s{w * 2 + i}" for i in range(4)] for w in range(writers)]  # each shares 2 with the next
    with ThreadPoolExecutor(writers) as pool:
        done = list(pool.map(lambda w: _writer(uri, f"arch-{w}", plans[w], start), range(writers)))
    root = resolve(uri)
    catalog = load_catalog(root)
    assert sorted(p for parts in done for p in parts) == sorted(catalog.part_ids)
    assert catalog.seq == len(catalog.parts)  # every entry a commit, no gap, no part twice
    assert _ingested(root) == {s for plan in plans for s in plan}
    keys = _keys_of_parts(root, cache)
    assert len(keys) == len(set(keys)) == len({s for plan in plans for s in plan}) * SLICES
    report = verify_dataset(uri)
    assert report.ok and report.shards_checked == len(catalog.shards)


@pytest.mark.parametrize("writers", [2, 4])
def test_concurrent_writers_local_every_series_once(tmp_path: Path, writers: int) -> None:
    _race(str(tmp_path / "ds"), writers, tmp_path / "cache")


@pytest.mark.parametrize("writers", [2, 4])
def test_concurrent_writers_s3_every_series_once(s3_bucket: str, writers: int, tmp_path: Path) -> None:
    _race(f"s3://{s3_bucket}/ds-{writers}", writers, tmp_path / "cache")  # the bucket name drops the param


def test_a_writer_killed_before_its_log_entry_leaves_no_trace_and_the_next_run_cleans_up(
    tmp_path: Path,
) -> None:
    root = resolve(str(tmp_path / "ds"))
    mark_dataset(root)
    _writer(root.uri, "a", ["s1"])
    before = read_all(root.path).keys()
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parents[2])!r})
        from radforge.sharder.commit_log import write_part_index
        from radforge.storage import resolve
        from tests.sharder.test_commit_log import _write
        root = resolve({root.path!r})
        ret = _write(root, "p-00000000000000dd", ["s2", "s3"])
        write_part_index(root, "p-00000000000000dd", ret["shards"])  # all a commit writes but its entry
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], check=False)
    assert proc.returncode == -signal.SIGKILL
    assert (tmp_path / "ds" / "parts" / "p-00000000000000dd" / INDEX).exists()
    catalog = load_catalog(root)
    assert "p-00000000000000dd" not in catalog.part_ids and catalog.seq == 1
    assert read_all(root.path).keys() == before  # the stock root index does not see it either
    assert verify_dataset(root.uri).ok
    assert remove_orphans(root, catalog, keep=set()) == ["p-00000000000000dd"]  # what the next run does first
    assert not (tmp_path / "ds" / "parts" / "p-00000000000000dd").exists()


def test_checkpoint_and_tail_read_equals_a_full_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(commit_log, "CHECKPOINT_EVERY", 3)
    root = resolve(str(tmp_path / "ds"))
    for n in range(8):
        _writer(root.uri, f"a{n}", [f"s{n}"])
    logdir = tmp_path / "ds" / LOG
    checkpoints = sorted(p.name for p in logdir.glob("*.checkpoint.json"))
    assert checkpoints == [f"{s:020d}.checkpoint.json" for s in (3, 6)]
    assert json.loads((logdir / commit_log.LAST_CHECKPOINT).read_text())["seq"] == 6
    full = commit_log.LogState()
    for seq in range(1, 9):
        full.fold(json.loads((logdir / f"{seq:020d}.json").read_text()))
    state = read_state(root)
    assert (state.seq, state.parts, state.total_shards) == (full.seq, full.parts, full.total_shards)
    # the hint lost: the newest checkpoint is found by listing the log; an older state is read as of then
    (logdir / commit_log.LAST_CHECKPOINT).unlink()
    assert read_state(root).parts == full.parts
    assert list(read_state(root, upto=4).parts) == list(full.parts)[:4]


def test_export_index_above_the_threshold_is_read_by_a_stock_reader(tmp_path: Path) -> None:
    root = resolve(str(tmp_path / "ds"))
    for n, series in enumerate([["s1", "s2"], ["s3"]]):
        ret = _write(root, f"p-{n:016x}", series)
        commit_part(root, part_id=f"p-{n:016x}", part_info={}, task_returns=[ret], root_index_max_shards=0)
    assert not (tmp_path / "ds" / INDEX).exists()  # above the threshold: no root index
    out = subprocess.run(
        [sys.executable, "-m", "radforge", "dataset", "export-index", root.path],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "shards" in out.stdout
    samples = read_all(root.path)
    assert len(samples) == 3 * SLICES
    assert {s["meta"]["series_key"] for s in samples.values()} == {"s1", "s2", "s3"}
    # the next commit above the threshold removes the copy (it would go stale)
    ret = _write(root, "p-0000000000000009", ["s4"])
    commit_part(root, part_id="p-0000000000000009", part_info={}, task_returns=[ret], root_index_max_shards=0)
    assert not (tmp_path / "ds" / INDEX).exists()


def test_a_dataset_in_the_root_index_layout_opens_and_upgrades_on_its_next_commit(tmp_path: Path) -> None:
    root = resolve(str(tmp_path / "ds"))
    for n, series in enumerate([["s1"], ["s2", "s3"]]):
        ret = _write(root, f"p-{n:016x}", series)
        pid = f"p-{n:016x}"
        commit_part(root, part_id=pid, part_info={"archive_id": "a"}, task_returns=[ret], layout="root_index")
    os.remove(tmp_path / "ds" / "parts" / "p-0000000000000000" / INDEX)  # a part of an older radforge
    old = load_catalog(root)
    assert old.layout == "root_index" and len(old.parts) == 2
    _writer(root.uri, "b", ["s3", "s4"])  # plans against the old catalog: s3 is already there
    logdir = tmp_path / "ds" / LOG
    assert (logdir / f"{0:020d}.checkpoint.json").exists() and (logdir / f"{1:020d}.json").exists()
    new = load_catalog(root)
    assert new.seq == 1 and [p["id"] for p in new.parts][:2] == [p["id"] for p in old.parts]
    assert new.shards[: len(old.shards)] == old.shards
    keys = list(read_all(root.path))
    assert len(keys) == len(set(keys)) == 4 * SLICES
    assert verify_dataset(root.uri).ok


def test_stats_and_mixing_read_a_dataset_above_the_threshold_without_a_root_index(tmp_path: Path) -> None:
    from radforge.sharder.mixing import MixSpec, build_streams
    from radforge.sharder.stats import dataset_stats

    root = resolve(str(tmp_path / "ds"))
    for n, series in enumerate([["s1", "s2"], ["s3"]]):
        ret = _write(root, f"p-{n:016x}", series)
        commit_part(root, part_id=f"p-{n:016x}", part_info={}, task_returns=[ret], root_index_max_shards=0)
    catalog = load_catalog(root)
    stats = dataset_stats(root.uri)
    assert (stats["shards"], stats["samples"]) == (len(catalog.shards), 3 * SLICES)
    assert stats["bytes"] == sum((s.get("zip_data") or s["raw_data"])["bytes"] for s in catalog.shards)
    spec = MixSpec.model_validate({"sources": [{"uri": root.uri, "choose": 30}]})
    streams = build_streams(spec, cache_dir=str(tmp_path / "cache"))
    parts = ("p-0000000000000000", "p-0000000000000001")
    assert [s.local for s in streams] == [root.join("parts", p).path for p in parts]
    assert [s.choose for s in streams] == [20, 10]  # split by the parts' samples (6 and 3)
    ret = _write(root, "p-0000000000000002", ["s4"])  # a commit below the threshold writes a root index:
    commit_part(root, part_id="p-0000000000000002", part_info={}, task_returns=[ret])  # one stream again
    assert [s.local for s in build_streams(spec, cache_dir=str(tmp_path / "cache"))] == [root.path]
