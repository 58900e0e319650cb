"""The MDS datasink against a real local Ray and a moto S3 server: stock reads, faults, increments."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from radforge.ingest.config import IngestConfig, load_config
from radforge.ingest.pipeline import run_ingest
from radforge.sharder.catalog import load_catalog
from radforge.sharder.datasink import MDSDatasink
from radforge.storage import resolve
from tests.support import make_archive, read_all

SMALL_SHARDS = {"shards": {"size_limit": 16384, "samples_per_task": 8}}


def _cfg(**extra: Any) -> IngestConfig:
    data = dict(SMALL_SHARDS)
    data.update(extra)
    return load_config(overrides=data)


def _same_samples(a: dict[str, dict], b: dict[str, dict]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k]["image"], b[k]["image"]) and a[k]["image"].dtype == b[k]["image"].dtype
        assert np.array_equal(a[k]["fg"], b[k]["fg"])
        assert a[k]["meta"] == b[k]["meta"]


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_archive(tmp_path_factory.mktemp("arch") / "hospital-a", n_ct=2, n_mr=1)


def test_local_and_s3_give_identical_samples_through_a_stock_reader(
    ray_local: None, archive: Path, s3_bucket: str, tmp_path: Path
) -> None:
    import s3fs

    local_ds = tmp_path / "ds"
    summary = run_ingest(f"file://{archive}", f"file://{local_ds}", _cfg())
    assert summary.committed and summary.samples_written > 0

    fs = s3fs.S3FileSystem()
    fs.put(str(archive), f"{s3_bucket}/archives/hospital-a", recursive=True)
    s3_ds = f"s3://{s3_bucket}/datasets/main"
    s3_summary = run_ingest(f"s3://{s3_bucket}/archives/hospital-a", s3_ds, _cfg())
    assert s3_summary.samples_written == summary.samples_written

    local = read_all(local_ds)
    remote = read_all(tmp_path / "cache", remote=s3_ds)
    assert len(local) == summary.samples_written
    _same_samples(local, remote)
    # Several shards and several write tasks, all referenced from the root index.
    assert len(load_catalog(resolve(str(local_ds))).shards) > 1


class KillOnceDatasink(MDSDatasink):
    """Kills its own Ray worker (SIGKILL) in the middle of its first write; Ray retries the task."""

    marker_dir: str = ""

    def write(self, blocks: Any, ctx: Any) -> dict[str, Any]:
        marker = Path(self.part_info["marker_dir"]) / "killed"

        def killing_blocks() -> Any:
            for i, block in enumerate(blocks):
                yield block
                if i == 0 and not marker.exists():
                    marker.write_text(str(os.getpid()))
                    os.kill(os.getpid(), signal.SIGKILL)

        return super().write(killing_blocks(), ctx)


def test_sigkilled_write_task_is_retried_and_every_key_is_written_once(
    ray_local: None, archive: Path, tmp_path: Path
) -> None:
    reference = tmp_path / "reference"
    run_ingest(str(archive), str(reference), _cfg())
    expected = read_all(reference)

    ds = tmp_path / "ds"

    class Sink(KillOnceDatasink):
        def __init__(self, *a: Any, **kw: Any) -> None:
            kw["part_info"] = {**kw["part_info"], "marker_dir": str(tmp_path)}
            super().__init__(*a, **kw)

    summary = run_ingest(str(archive), str(ds), _cfg(), sink_cls=Sink)
    assert (tmp_path / "killed").exists(), "the fault was not injected"
    assert summary.committed
    # The killed attempt's staging files are gone: only referenced shards remain.
    catalog = load_catalog(resolve(str(ds)))
    referenced = {(s.get("zip_data") or s["raw_data"])["basename"] for s in catalog.shards}
    referenced |= {f"parts/{p['id']}/index.json" for p in catalog.parts}
    on_disk = {p.relative_to(ds).as_posix() for p in (ds / "parts").rglob("*") if p.is_file()}
    assert on_disk == referenced
    _same_samples(expected, read_all(ds))


DIE_BEFORE_COMMIT = textwrap.dedent(
    """
    import os, signal, sys
    from radforge.runtime import ensure_ray
    from radforge.ingest.config import load_config
    from radforge.ingest.pipeline import run_ingest
    from radforge.sharder.datasink import MDSDatasink

    class DieBeforeCommit(MDSDatasink):
        def on_write_complete(self, write_result):
            os.kill(os.getpid(), signal.SIGKILL)

    ensure_ray(sys.argv[3])
    run_ingest(sys.argv[1], sys.argv[2], load_config(overrides={"shards": {"size_limit": 16384,
               "samples_per_task": 8}}), sink_cls=DieBeforeCommit)
    """
)


def test_job_killed_before_commit_leaves_committed_dataset_unchanged(
    ray_local: None, archive: Path, tmp_path: Path
) -> None:
    import ray

    first = tmp_path / "first"
    make_archive(first, n_ct=1, n_mr=0, seed=7)
    ds = tmp_path / "ds"
    run_ingest(str(first), str(ds), _cfg())
    index_before = (ds / "index.json").read_bytes()
    samples_before = read_all(ds)

    both = tmp_path / "both"
    shutil.copytree(first, both / "first")
    shutil.copytree(archive, both / "second")
    address = ray.get_runtime_context().gcs_address
    proc = subprocess.run(
        [sys.executable, "-c", DIE_BEFORE_COMMIT, str(both), str(ds), address],
        cwd=Path(__file__).parents[2],
        capture_output=True,
        timeout=600,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert (ds / "index.json").read_bytes() == index_before
    _same_samples(samples_before, read_all(ds))
    assert any((ds / "parts").iterdir())  # the dead job left uncommitted shards behind

    summary = run_ingest(str(both), str(ds), _cfg())
    after = read_all(ds)
    assert set(samples_before) < set(after)
    assert len(after) == len(samples_before) + summary.samples_written
    catalog = load_catalog(resolve(str(ds)))
    assert len(catalog.parts) == 2
    parts_on_disk = {p.name for p in (ds / "parts").iterdir()}
    assert parts_on_disk == {p["id"] for p in catalog.parts}  # the orphan part was removed


def test_incremental_ingest_adds_new_series_once_and_unchanged_archive_changes_nothing(
    ray_local: None, tmp_path: Path
) -> None:
    a = make_archive(tmp_path / "A", n_ct=1, n_mr=1, seed=1)
    b = make_archive(tmp_path / "B", n_ct=1, n_mr=0, seed=2)
    ab = tmp_path / "AB"
    shutil.copytree(a, ab / "A")
    shutil.copytree(b, ab / "B")
    ds = tmp_path / "ds"

    s1 = run_ingest(str(a), str(ds), _cfg())
    only_a = read_all(ds)
    s2 = run_ingest(str(ab), str(ds), _cfg())
    both = read_all(ds)
    assert s1.committed and s2.committed
    assert set(only_a) < set(both)
    assert len(both) == s1.samples_written + s2.samples_written
    assert s2.by_reason.get("already_ingested") == 2

    fresh = tmp_path / "fresh"
    run_ingest(str(ab), str(fresh), _cfg())
    assert set(read_all(fresh)) == set(both)

    index = (ds / "index.json").read_bytes()
    s3 = run_ingest(str(a), str(ds), _cfg())
    assert not s3.committed and s3.samples_written == 0
    assert (ds / "index.json").read_bytes() == index
    catalog = json.loads(index)["radforge"]
    assert [p["archive_id"] for p in catalog["parts"]] == ["A", "AB"]
    assert {p["config_hash"] for p in catalog["parts"]} == {_cfg().content_hash()}


def _rows(n: int) -> list[dict[str, Any]]:
    rows = [
        {
            "record": "sample",
            "key": f"k{i}",
            "sample": bytes([i]) * (1000 + i),
            "count": "CT|axial",
            "series": "",
        }
        for i in range(n)
    ]
    return [
        *rows,
        {"record": "series", "key": "", "sample": b"", "count": "", "series": '{"series_key": "s"}'},
    ]


def test_rows_block_reads_back_every_row_as_views_of_one_buffer() -> None:
    from radforge.sharder.datasink import iter_rows, rows_block

    rows = _rows(5)
    got = list(iter_rows(rows_block(rows)))
    assert [(r, k, bytes(s), c, j) for r, k, s, c, j in got] == [
        (r["record"], r["key"], r["sample"], r["count"], r["series"]) for r in rows
    ]
    parts = [{**r, "sample": [r["sample"][:7], memoryview(r["sample"])[7:]]} for r in rows]  # encode_parts
    assert [bytes(s) for _, _, s, _, _ in iter_rows(rows_block(parts))] == [r["sample"] for r in rows]
    views = [s for _, _, s, _, _ in got if len(s)]
    assert all(isinstance(v, memoryview) for v in views)
    assert len({id(v.obj) for v in views}) == 1  # zero-copy: every sample points into one Arrow buffer


def test_rows_block_chunks_stay_below_the_allocator_mmap_threshold() -> None:
    # A 128 MiB series in one buffer was a fresh mmap (page faults) per series; chunks of at most
    # chunk_bytes are reused heap memory. A sample bigger than a chunk is a batch of its own.
    from radforge.sharder.datasink import ROWS_CHUNK_BYTES, iter_rows, rows_block

    assert ROWS_CHUNK_BYTES < 32 << 20  # glibc's largest mmap threshold
    sizes = [1000, 1000, 1000, 5000, 10, 990, 0]
    rows = [
        {"record": "sample", "key": f"k{i}", "sample": bytes([i]) * n, "count": "c", "series": ""}
        for i, n in enumerate(sizes)
    ]
    table = rows_block(rows, chunk_bytes=2500)
    batches = table.to_batches()
    assert [b.num_rows for b in batches] == [2, 1, 1, 3]
    for batch in batches:
        data = batch.column("sample").buffers()[2]
        assert data.size <= 2500 or batch.num_rows == 1
    got = list(iter_rows(table))
    assert [(k, bytes(s)) for _, k, s, _, _ in got] == [(r["key"], r["sample"]) for r in rows]
    owners = [id(s.obj) for _, _, s, _, _ in got if len(s)]
    assert len(set(owners)) == 4  # zero-copy views, one buffer per chunk
    assert rows_block([]).num_rows == 0


def test_iter_rows_reads_sliced_arrow_and_pandas_blocks() -> None:
    import pyarrow as pa

    from radforge.sharder.datasink import iter_rows, rows_block

    rows = _rows(6)
    table = pa.concat_tables([rows_block(rows[:3]), rows_block(rows[3:])]).slice(2, 4)  # two chunks, offsets
    assert [bytes(s) for _, _, s, _, _ in iter_rows(table)] == [r["sample"] for r in rows[2:6]]
    frame = rows_block(rows).to_pandas()
    assert [k for _, k, _, _, _ in iter_rows(frame)] == [r["key"] for r in rows]
    with pytest.raises(TypeError, match="column 'sample' must hold bytes"):
        list(
            iter_rows(
                pa.table({"record": ["sample"], "key": ["k"], "sample": [1], "count": [""], "series": [""]})
            )
        )
