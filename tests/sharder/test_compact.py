"""Compaction and vacuum: small shards rewritten into large ones as one commit, exactly once.

Datasets here are written by the real write path (:meth:`MDSDatasink.write`, the Ray task's body,
and :func:`commit_part`, the commit), or by a real ingest where a test is about ingest; they are
read back by a stock ``StreamingDataset`` (no radforge code) and radforge's own reader. Faults are
injected by subclassing :class:`Compactor` or by killing a compaction's process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from radforge.cli import main as cli_main
from radforge.sharder.catalog import INDEX, load_catalog
from radforge.sharder.commit_log import COMPACT, checkpoint_loc, entry_loc, read_state, write_checkpoint
from radforge.sharder.compact import Compactor, compact_dataset, plan_groups
from radforge.sharder.datasink import MDSDatasink, commit_part, rows_block
from radforge.sharder.lease import PartLease
from radforge.sharder.marker import mark_dataset
from radforge.sharder.mds import SampleEncoder
from radforge.sharder.schema import COLUMNS
from radforge.sharder.shard_table import open_table, part_table_loc
from radforge.sharder.stream_memory import release_stream
from radforge.sharder.torch_dataset import RadforgeDataset
from radforge.sharder.vacuum import parse_duration, vacuum_dataset
from radforge.sharder.verify import verify_dataset
from radforge.storage import Location, resolve

ROOT = Path(__file__).resolve().parents[2]
SLICES = 4
COUNT = "CT|axial|raw|-"
SMALL_SHARDS = 1500  # bytes: about two 16x16 int16 samples per shard
TARGET = 16 << 10  # the compaction target here: every part of these tests fits in one shard


# ---- datasets ------------------------------------------------------------------------------------
def write_task(root: Location, part_id: str, archive: str, series: list[str]) -> dict[str, Any]:
    """One write task's output for ``series`` (real shards, zstd, many small ones), not committed."""
    encoder = SampleEncoder(COLUMNS)
    rows = []
    for key in series:
        seed = int.from_bytes(key.encode(), "little") % (1 << 32)
        images = np.random.default_rng(seed).integers(-1024, 2000, (SLICES, 16, 16), dtype=np.int16)
        for i in range(SLICES):
            sample = {
                "key": f"{key}/axial/{i:05d}/raw",
                "image": images[i],
                "fg": np.full((1, 1), i, np.uint8),
                "meta": {"series_key": key, "slice_index": i, "archive_id": archive, "modality": "CT"},
            }
            rows.append(
                {"record": "sample", "key": sample["key"], "sample": encoder.encode(sample), "count": COUNT}
                | {"series": ""}
            )
        record = {"series_key": key, "status": "ingested", "reason": None, "slices_kept": SLICES}
        rows.append(dict(record="series", key=key, sample=b"", count="", series=json.dumps(record)))
    sink = MDSDatasink(root.uri, part_id=part_id, part_info={}, compression="zstd:1", size_limit=SMALL_SHARDS)
    return sink.write([rows_block(rows)], None)


def write_part(
    root: Location, part_id: str, archive: str, series: list[str], *, base_seq: int | None = None
) -> None:
    """Write and commit one part holding ``series``, as an ingest run does (under its part lease)."""
    with PartLease(root, part_id):
        written = write_task(root, part_id, archive, series)
        commit_part(
            root,
            part_id=part_id,
            part_info={"archive_id": archive, "config_hash": "cfg"},
            task_returns=[written],
            base_seq=base_seq,
        )


def make_dataset(uri: str | Path) -> Location:
    """Three parts: two of archive ``a`` (consecutive), one of archive ``b``; all in small shards."""
    root = resolve(str(uri))
    mark_dataset(root)
    write_part(root, "p-000000000000000a", "a", ["a1", "a2"])
    write_part(root, "p-000000000000000b", "a", ["a3"])
    write_part(root, "p-000000000000000c", "b", ["b1", "b2"])
    return root


def stock_samples(local: str | Path, *, remote: str | None = None) -> list[tuple[str, bytes, bytes, str]]:
    """Every sample in dataset order through a stock StreamingDataset: (key, image, fg, meta JSON)."""
    from streaming import StreamingDataset

    for name in ("RANK", "LOCAL_RANK", "NODE_RANK"):
        os.environ.setdefault(name, "0")
    for name in ("WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        os.environ.setdefault(name, "1")
    ds = StreamingDataset(local=str(local), remote=remote, shuffle=False, batch_size=1)
    try:
        return [_flat(ds[i]) for i in range(len(ds))]
    finally:
        release_stream(ds)


def _flat(s: dict[str, Any]) -> tuple[str, bytes, bytes, str]:
    image, fg = s["image"], s["fg"]
    return (
        s["key"],
        image.dtype.str.encode() + image.tobytes(),
        fg.tobytes(),
        json.dumps(s["meta"], sort_keys=True),
    )


def radforge_samples(uri: str) -> list[tuple[str, bytes]]:
    """(key, image bytes) of every sample in order through radforge's map-style reader."""
    ds = RadforgeDataset(uri)
    return [(ds[i]["key"], ds[i]["image"].numpy().tobytes()) for i in range(len(ds))]


def shard_count(root: Location) -> int:
    return read_state(root).total_shards


def series_claimed(root: Location) -> list[str]:
    """Series keys marked ingested by the committed parts' manifests, in part order (as ingest plans)."""
    keys: list[str] = []
    for part in load_catalog(root).parts:
        loc = root.join(part["manifest"])
        table = pq.read_table(loc.path).to_pydict()
        keys += [k for k, s in zip(table["series_key"], table["status"], strict=True) if s == "ingested"]
    return keys


# ---- planning ------------------------------------------------------------------------------------------
def _part(pid: str, archive: str, shards: int, nbytes: int) -> dict[str, Any]:
    return {"id": pid, "archive_id": archive, "shards": shards, "bytes": nbytes, "schema_version": "1.0"}


def test_plan_groups_runs_of_consecutive_small_parts_of_one_archive() -> None:
    parts = [
        _part("p1", "a", 4, 400),  # small
        _part("p2", "a", 1, 100),  # small: joins p1
        _part("p3", "a", 2, 10_000),  # large: ends the run
        _part("p4", "a", 1, 50),  # small but alone with one shard: nothing to gain
        _part("p5", "b", 3, 30),  # another archive
        _part("p6", "c", 2, 20),
        _part("p7", "c", 1, 10),
    ]
    groups = plan_groups(parts, min_shard_bytes=1000)
    assert [[p["id"] for p in g] for g in groups] == [["p1", "p2"], ["p5"], ["p6", "p7"]]
    assert plan_groups(parts, min_shard_bytes=1) == []


def test_parse_duration() -> None:
    assert [parse_duration(t) for t in ("90", "90s", "30m", "1h", "2d", "0.5h")] == [
        90,
        90,
        1800,
        3600,
        172800,
        1800,
    ]
    with pytest.raises(ValueError, match="'1 hour'"):
        parse_duration("1 hour")


# ---- compaction ------------------------------------------------------------------------------------------
def test_compaction_is_sample_for_sample_equal_with_fewer_shards(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds")
    before_stock, before_ours = stock_samples(root.path), radforge_samples(root.uri)
    claimed = series_claimed(root)
    shards_before = shard_count(root)
    assert shards_before >= 10 and len(before_stock) == 5 * SLICES

    summary = compact_dataset(root.uri, target_shard_bytes=TARGET)

    state = read_state(root)
    # archive a's two parts became one part, b's one: 2 compactions, in the places of the old parts
    assert [c["replaces"] for c in summary.compactions] == [
        ["p-000000000000000a", "p-000000000000000b"],
        ["p-000000000000000c"],
    ]
    assert list(state.parts) == [c["part"] for c in summary.compactions]
    assert summary.shards_before == shards_before and summary.shards_after == shard_count(root) == 2
    assert set(state.replaced) == {"p-000000000000000a", "p-000000000000000b", "p-000000000000000c"}
    entry = json.loads(Path(entry_loc(root, state.seq).path).read_text())
    assert entry["op"] == COMPACT and entry["total_shards"] == 2
    # the root index (a stock reader's view) follows the log; stock and radforge readers see the same
    assert json.loads((tmp_path / "ds" / INDEX).read_text())["radforge"]["log_seq"] == state.seq
    assert stock_samples(root.path) == before_stock
    assert radforge_samples(root.uri) == before_ours
    for part_id in state.parts:  # each new part is a stock MDS dataset on its own
        assert [s[0] for s in stock_samples(root.join("parts", part_id).path)]
        # with its shard table beside its index (what the trainer's loader reads), naming its files
        table = open_table(part_table_loc(root, part_id).path)
        assert int(table.samples.sum()) == state.parts[part_id]["samples"]
        assert all((tmp_path / "ds" / table.raw_path(i)).parent.name == part_id for i in range(len(table)))
    report = verify_dataset(root.uri)
    assert report.ok and report.shards_checked == 2 and report.samples == len(before_stock)
    assert series_claimed(root) == claimed  # the series the old parts claimed stay claimed, in order
    catalog_counts = sum(sum(p["counts"].values()) for p in load_catalog(root).parts)
    assert catalog_counts == len(before_stock)
    # nothing left to do: a second run commits nothing
    again = compact_dataset(root.uri, target_shard_bytes=TARGET)
    assert again.compactions == [] and read_state(root).seq == state.seq


def test_a_reader_opened_before_compaction_keeps_reading_every_sample(tmp_path: Path) -> None:
    from streaming import StreamingDataset

    root = make_dataset(tmp_path / "ds")
    expected = stock_samples(root.path)
    old = StreamingDataset(local=root.path, shuffle=False, batch_size=1)  # the old version's index
    first = [_flat(old[i]) for i in range(3)]

    compact_dataset(root.uri, target_shard_bytes=TARGET)
    waiting = vacuum_dataset(root.uri, older_than_s=3600)  # within the grace period: nothing removed

    assert waiting.removed == [] and len(waiting.waiting) == 3
    assert first + [_flat(old[i]) for i in range(3, len(old))] == expected
    assert [_flat(s) for s in old] == expected  # a whole iteration too (streaming's own partitioning)
    release_stream(old)
    assert stock_samples(root.path) == expected  # a reader opened now reads the new shards


class _IngestDuringCompaction(Compactor):
    """Another writer commits a new part between this compaction's plan and its commit."""

    def commit(self, state: Any, group: list[dict[str, Any]], part: dict[str, Any]) -> int:
        if not read_state(self.root).parts.get("p-00000000000000dd"):
            write_part(self.root, "p-00000000000000dd", "a", ["a9"], base_seq=state.seq)
        return super().commit(state, group, part)


def test_compaction_rebases_on_an_ingest_committed_meanwhile(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds")
    expected = stock_samples(root.path)

    summary = _IngestDuringCompaction(root.uri, target_shard_bytes=TARGET).run()

    state = read_state(root)
    entries = [json.loads(Path(entry_loc(root, s).path).read_text()) for s in range(1, state.seq + 1)]
    assert [e["op"] for e in entries] == ["add_part"] * 3 + ["add_part", COMPACT, COMPACT]
    assert summary.conflicts == 0  # the ingest touched none of the compacted parts: rebased, not re-planned
    # the ingest's part is kept, once, after the compacted part of the parts before it
    assert list(state.parts) == [
        summary.compactions[0]["part"],
        summary.compactions[1]["part"],
        "p-00000000000000dd",
    ]
    assert state.total_shards == 2 + int(state.parts["p-00000000000000dd"]["shards"])
    got = stock_samples(root.path)
    assert got[: len(expected)] == expected and [k for k, *_ in got[len(expected) :]] == [
        f"a9/axial/{i:05d}/raw" for i in range(SLICES)
    ]
    assert verify_dataset(root.uri).ok


def test_an_ingest_that_planned_before_a_compaction_commits_on_top_of_it(tmp_path: Path) -> None:
    """The other order: an ingest plans and writes, a compaction commits (sparing the ingest's live part),
    then the ingest commits on top of it."""
    root = make_dataset(tmp_path / "ds")
    expected = stock_samples(root.path)
    planned = read_state(root).seq
    with PartLease(root, "p-00000000000000ee"):  # the ingest's part, written and not committed yet
        written = write_task(root, "p-00000000000000ee", "z", ["z1"])

        summary = compact_dataset(root.uri, target_shard_bytes=TARGET)
        commit_part(
            root,
            part_id="p-00000000000000ee",
            part_info={"archive_id": "z"},
            task_returns=[written],
            base_seq=planned,
        )

    assert summary.cleaned == []  # a live writer's part is not an orphan
    state = read_state(root)
    assert list(state.parts) == [*(c["part"] for c in summary.compactions), "p-00000000000000ee"]
    got = stock_samples(root.path)
    assert got[: len(expected)] == expected
    assert [k for k, *_ in got[len(expected) :]] == [f"z1/axial/{i:05d}/raw" for i in range(SLICES)]
    assert verify_dataset(root.uri).ok


def test_a_checkpoint_carries_the_compaction(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds")
    compact_dataset(root.uri, target_shard_bytes=TARGET)
    folded = read_state(root)  # every entry folded: no checkpoint yet

    write_checkpoint(root, folded.seq)

    checkpoint = json.loads(Path(checkpoint_loc(root, folded.seq).path).read_text())
    assert set(checkpoint["replaced"]) == set(folded.replaced)
    again = read_state(root)  # now read from the checkpoint
    assert again == folded and list(again.parts) == list(folded.parts)
    write_part(root, "p-00000000000000dd", "b", ["b7"])  # a commit on top counts from the checkpoint
    assert (
        read_state(root).total_shards
        == folded.total_shards + read_state(root).parts["p-00000000000000dd"]["shards"]
    )


class _CompactedMeanwhile(Compactor):
    """Another compaction of the same parts commits first."""

    def commit(self, state: Any, group: list[dict[str, Any]], part: dict[str, Any]) -> int:
        if not read_state(self.root).replaced:
            Compactor(self.root.uri, target_shard_bytes=TARGET).run()
        return super().commit(state, group, part)


def test_a_part_is_never_compacted_twice(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds")
    expected = stock_samples(root.path)

    summary = _CompactedMeanwhile(root.uri, target_shard_bytes=TARGET).run()

    state = read_state(root)
    entries = [json.loads(Path(entry_loc(root, s).path).read_text()) for s in range(4, state.seq + 1)]
    assert [e["op"] for e in entries] == [COMPACT, COMPACT]  # the other run's two: this one re-planned
    assert summary.conflicts == 1 and summary.compactions == []
    assert stock_samples(root.path) == expected and verify_dataset(root.uri).ok
    on_disk = sorted(p.name for p in (tmp_path / "ds" / "parts").iterdir())
    assert on_disk == sorted([*state.parts, *state.replaced])  # this run's output was removed


CRASHING = """
import signal, sys
from radforge.sharder.compact import Compactor

class Crash(Compactor):
    def commit(self, state, group, part):
        print(part["id"], flush=True)  # written and verified: the commit comes next
        signal.pause()

Crash(sys.argv[1], target_shard_bytes=int(sys.argv[2])).run()
"""


def test_a_compaction_killed_before_its_commit_leaves_no_trace_and_is_cleaned_up(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds")
    expected, seq = stock_samples(root.path), read_state(root).seq
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(CRASHING), root.uri, str(TARGET)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        dead = proc.stdout.readline().strip()
        assert dead, proc.stderr.read() if proc.stderr else ""
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert (tmp_path / "ds" / "parts" / dead / INDEX).exists()  # written, never committed

    assert read_state(root).seq == seq and dead not in load_catalog(root).part_ids
    assert stock_samples(root.path) == expected and verify_dataset(root.uri).ok

    summary = compact_dataset(root.uri, target_shard_bytes=TARGET)

    assert summary.cleaned == [dead]
    assert not (tmp_path / "ds" / "parts" / dead).exists()
    assert not (tmp_path / "ds" / "manifests" / f"{dead}.parquet").exists()
    assert len(summary.compactions) == 2 and stock_samples(root.path) == expected


def test_vacuum_removes_replaced_parts_after_the_grace_period_only(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds")
    expected = stock_samples(root.path)
    compact_dataset(root.uri, target_shard_bytes=TARGET)
    state = read_state(root)
    at = max(r["at"] for r in state.replaced.values())
    parts = tmp_path / "ds" / "parts"

    early = vacuum_dataset(root.uri, older_than_s=60, now=at + 59)
    assert early.removed == [] and sorted(early.waiting) == sorted(state.replaced)
    assert all((parts / pid).exists() for pid in state.replaced)

    late = vacuum_dataset(root.uri, older_than_s=60, now=at + 61)
    assert sorted(late.removed) == sorted(state.replaced) and late.waiting == []
    assert sorted(p.name for p in parts.iterdir()) == sorted(state.parts)  # current parts untouched
    assert sorted(p.name for p in (tmp_path / "ds" / "manifests").iterdir()) == sorted(
        f"{pid}.parquet" for pid in state.parts
    )
    assert stock_samples(root.path) == expected and verify_dataset(root.uri).ok
    assert vacuum_dataset(root.uri, older_than_s=0).removed == []  # idempotent


def test_compaction_on_s3(tmp_path: Path, s3_bucket: str) -> None:
    root = make_dataset(f"s3://{s3_bucket}/ds")
    expected = stock_samples(tmp_path / "before", remote=root.uri)

    summary = compact_dataset(root.uri, target_shard_bytes=TARGET)

    assert summary.shards_after == 2 < summary.shards_before
    assert stock_samples(tmp_path / "after", remote=root.uri) == expected
    assert verify_dataset(root.uri).ok
    assert vacuum_dataset(root.uri, older_than_s=0).removed == sorted(read_state(root).replaced)
    assert verify_dataset(root.uri).ok


def test_cli_compact_and_vacuum(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_dataset(tmp_path / "ds")
    assert (
        cli_main(["dataset", "compact", root.uri, "--target-shard-mb", str(TARGET / (1 << 20)), "--json"])
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["shards_after"] == 2 and len(out["compactions"]) == 2
    assert cli_main(["dataset", "vacuum", root.uri, "--older-than", "0s", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["removed"]) == 3
    with pytest.raises(SystemExit):
        cli_main(["dataset", "vacuum", root.uri, "--older-than", "soon"])
    assert "'soon'" in capsys.readouterr().err


# ---- over a real ingest: claims, the training loader --------------------------------------------------
@pytest.fixture(scope="module")
def compacted(tmp_path_factory: pytest.TempPathFactory, ray_local: None) -> tuple[Path, str]:
    """The training tests' tiny ingest (14 samples in small shards), compacted into shards of 32 KiB."""
    from tests.trainer.support import ingest_tiny

    root = tmp_path_factory.mktemp("compacted")
    dataset = ingest_tiny(root, str(root / "ds"))
    summary = compact_dataset(dataset, target_shard_bytes=32 << 10, min_shard_bytes=32 << 10)
    assert 1 < summary.shards_after < summary.shards_before
    return root / "archive", dataset


def test_an_ingest_after_compaction_skips_the_series_it_holds(compacted: tuple[Path, str]) -> None:
    from radforge.ingest.config import load_config
    from radforge.ingest.pipeline import run_ingest
    from tests.trainer.support import SHARDS

    archive, dataset = compacted
    seq = read_state(resolve(dataset)).seq

    again = run_ingest(str(archive), dataset, load_config(overrides=SHARDS))

    assert not again.committed and again.samples_written == 0
    assert again.by_reason == {"already_ingested": 3}
    assert read_state(resolve(dataset)).seq == seq


def test_loader_resume_and_elastic_shrink_over_a_compacted_dataset(
    compacted: tuple[Path, str], tmp_path: Path
) -> None:
    """Global batch 4 in micro-batches of 2 over the compacted dataset: 2 ranks (torchrun) run step 1
    and checkpoint, then the run shrinks to 1 process (accumulating 2), resumes and runs step 2. Both
    steps have the samples, in order, and the losses of one process that ran steps 1-2 straight."""
    from radforge.trainer.loop import read_metrics, run_training
    from tests.trainer.support import tiny_run
    from tests.trainer.test_ray_launcher import _torchrun, assert_same_run

    _, dataset = compacted
    common = ("batch.micro_size=2", "checkpoint.every=1", "data.loader_workers=0")
    run_training(tiny_run(dataset, str(tmp_path / "ref"), tmp_path, *common, "steps=2"))
    elastic = tmp_path / "elastic"
    _torchrun(elastic, dataset, tmp_path, *common, "batch.global_size=4", "steps=1")

    shrunk = run_training(tiny_run(dataset, str(elastic), tmp_path, *common, "steps=2"))

    assert shrunk.resumed_from == 1
    records = read_metrics(str(elastic))
    assert [(r["world_size"], r["accumulation"]) for r in records] == [(2, 1), (1, 2)]
    assert_same_run(read_metrics(str(tmp_path / "ref")), records, steps=[1, 2])
    assert len({k for r in records for k in r["keys"]}) == 8  # 14 samples: no key twice in an epoch
