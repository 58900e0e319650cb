"""The shard table: part indexes as arrays, written per part at commit and per version by the first reader."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from radforge.sharder.catalog import load_catalog
from radforge.sharder.commit_log import part_shards
from radforge.sharder.shard_table import (
    PART_TABLE,
    TABLES,
    ShardFiles,
    concat_tables,
    load_table,
    open_table,
    table_from_entries,
    table_name,
    write_table,
)
from radforge.storage import resolve
from tests.sharder.table_support import commit_part, make_dataset, part_id, sample


def test_table_holds_every_index_entry(tmp_path: Path) -> None:
    """Compressed and uncompressed parts: every row gives back its part index's entry, through a file."""
    root = resolve(str(tmp_path / "ds"))
    make_dataset(root, {part_id(1): 12}, per_shard=5)
    make_dataset(root, {part_id(2): 7}, per_shard=3, compression=None)
    catalog = load_catalog(root)
    table = load_table(catalog, cache_dir=str(tmp_path / "cache"))

    want = part_shards(root, part_id(1)) + part_shards(root, part_id(2))
    assert len(table) == 6 and table.parts == [part_id(1), part_id(2)]
    assert [table.entry(r) for r in range(len(table))] == want
    assert table.rows_of(part_id(2)) == (3, 6) and table.samples.tolist() == [5, 5, 2, 3, 3, 1]
    assert table.stored_path(0).endswith(".mds.zstd") and table.stored_path(3).endswith(".mds")
    assert not table.samples.flags.writeable  # a view of the read-only memory map, not a copy
    # the version's table is kept in the (local) dataset; the parts' tables next to their indexes
    assert (tmp_path / "ds" / TABLES / table_name(catalog)).is_file()
    assert (tmp_path / "ds" / "parts" / part_id(1) / PART_TABLE).is_file()


def test_a_new_version_is_built_from_the_part_tables(tmp_path: Path) -> None:
    """A commit adds a part: the next version's table reads the old parts' tables, not their indexes."""
    root = resolve(str(tmp_path / "ds"))
    make_dataset(root, {part_id(1): 6, part_id(2): 4}, root_index_max_shards=1)  # no root index to refresh
    first = load_table(load_catalog(root), cache_dir=str(tmp_path / "cache"))
    first_name = table_name(load_catalog(root))
    (tmp_path / "ds" / "parts" / part_id(1) / "index.json").unlink()  # only its table is left to read
    commit_part(root, part_id(3), ["c/0", "c/1", "c/2"], root_index_max_shards=1)
    catalog = load_catalog(root)
    second = load_table(catalog, cache_dir=str(tmp_path / "cache"))

    assert first.seq == 2 and second.seq == 3 and second.parts == [part_id(1), part_id(2), part_id(3)]
    assert second.samples.tolist() == [*first.samples.tolist(), 3]
    assert sorted(os.listdir(tmp_path / "ds" / TABLES)) == sorted([first_name, table_name(catalog)])


def test_missing_or_stale_part_table_is_rebuilt_from_its_index(tmp_path: Path) -> None:
    root = resolve(str(tmp_path / "ds"))
    make_dataset(root, {part_id(1): 6, part_id(2): 4}, per_shard=2)
    part1 = tmp_path / "ds" / "parts" / part_id(1) / PART_TABLE
    part2 = tmp_path / "ds" / "parts" / part_id(2) / PART_TABLE
    part1.unlink()  # a part committed before tables existed
    write_table(
        table_from_entries(part_shards(root, part_id(2))[:1], part_id=part_id(2)), str(part2)
    )  # stale

    table = load_table(load_catalog(root), cache_dir=str(tmp_path / "cache"))

    assert table.samples.tolist() == [2, 2, 2, 2, 2]
    assert part1.is_file() and len(open_table(str(part1))) == 3  # stored again for later readers
    assert len(open_table(str(part2))) == 2


def test_tables_are_deterministic(tmp_path: Path) -> None:
    """Two builders write the same bytes, so writers racing to create a version's table are harmless."""
    root = resolve(str(tmp_path / "ds"))
    make_dataset(root, {part_id(1): 9, part_id(2): 4}, per_shard=4)
    catalog = load_catalog(root)
    load_table(catalog, cache_dir=str(tmp_path / "c1"))
    stored = tmp_path / "ds" / TABLES / table_name(catalog)
    first = stored.read_bytes()
    stored.unlink()
    for part in (part_id(1), part_id(2)):
        (tmp_path / "ds" / "parts" / part / PART_TABLE).unlink()
    assert len(load_table(catalog, cache_dir=str(tmp_path / "c2"))) == 4
    assert stored.read_bytes() == first


def test_legacy_root_index_dataset_is_read_from_its_root_index(tmp_path: Path) -> None:
    """A dataset written before the log (root index.json with a radforge section, no _log)."""
    src = resolve(str(tmp_path / "src"))
    make_dataset(src, {part_id(1): 5, part_id(2): 3}, per_shard=2)
    catalog = load_catalog(src)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "index.json").write_text(json.dumps(catalog.to_index()))

    table = load_table(load_catalog(resolve(str(legacy))), cache_dir=str(tmp_path / "cache"))

    assert table.parts == [part_id(1), part_id(2)] and table.samples.tolist() == [2, 2, 1, 2, 1]
    assert not (legacy / TABLES).exists()


def test_concat_deduplicates_formats_and_offsets_paths(tmp_path: Path) -> None:
    root = resolve(str(tmp_path / "ds"))
    make_dataset(root, {part_id(1): 4}, per_shard=2)
    make_dataset(root, {part_id(2): 4}, per_shard=2, compression=None)
    a = table_from_entries(part_shards(root, part_id(1)), part_id=part_id(1))
    b = table_from_entries(part_shards(root, part_id(2)), part_id=part_id(2))
    both = concat_tables([a, b, a], seq=9)
    assert len(both.formats) == 2 and both.format.tolist() == [0, 0, 1, 1, 0, 0]
    paths_a, paths_b = [a.raw_path(r) for r in range(2)], [b.raw_path(r) for r in range(2)]
    assert [both.raw_path(r) for r in range(6)] == paths_a + paths_b + paths_a
    assert both.part_rows.tolist() == [0, 2, 4, 6]


def test_shard_files_read_local_and_s3_shards_lazily(tmp_path: Path, s3_bucket: str) -> None:
    """Local uncompressed shards are read in place; compressed and remote ones are decompressed into the
    cache, only when a sample of them is read, and evicted above the cache limit."""
    local = resolve(str(tmp_path / "ds"))
    keys = make_dataset(local, {part_id(1): 6}, per_shard=3, compression=None)[part_id(1)]
    table = load_table(load_catalog(local), cache_dir=str(tmp_path / "cache"))
    files = ShardFiles(local, table, cache_dir=str(tmp_path / "cache"), cache_limit=None)
    got = files.sample(1, 2)
    assert got["key"] == keys[5] and np.array_equal(got["image"], sample(keys[5])["image"])
    assert not (tmp_path / "cache" / "shards").exists()

    remote = resolve(f"s3://{s3_bucket}/ds")
    keys = make_dataset(remote, {part_id(7): 8}, per_shard=2)[part_id(7)]
    cache = tmp_path / "rcache"
    table = load_table(load_catalog(remote), cache_dir=str(cache))
    stored = remote.join(TABLES, table_name(load_catalog(remote)))
    assert remote.fs.exists(stored.path)  # stored for other nodes: another node downloads it
    other = load_table(load_catalog(remote), cache_dir=str(tmp_path / "other-node"))
    assert other.samples.tolist() == table.samples.tolist()
    assert [p.read_bytes() for p in (tmp_path / "other-node").rglob("*.rft")] == [
        remote.fs.cat_file(stored.path)
    ]
    limit = 2 * int(table.raw_bytes.max())
    files = ShardFiles(remote, table, cache_dir=str(cache), cache_limit=limit)
    assert not list(cache.rglob("*.mds"))  # nothing read before a sample is asked for
    for row in (3, 0, 2, 1):
        for i in range(2):
            got = files.sample(row, i)
            assert got["key"] == keys[2 * row + i] and got["meta"]["key"] == keys[2 * row + i]
    cached = list(cache.rglob("*.mds"))
    assert 1 <= len(cached) <= 2 and sum(p.stat().st_size for p in cached) <= limit
    files.close()


def test_shard_files_close_their_descriptors_when_dropped(tmp_path: Path) -> None:
    """The open shards' raw descriptors are closed with close() and when the reader is collected (a
    process that builds loaders one after another, as the test suite does, must not run out of files)."""
    import gc

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    local = resolve(str(tmp_path / "ds"))
    make_dataset(local, {part_id(1): 12}, per_shard=2, compression=None)
    table = load_table(load_catalog(local), cache_dir=str(tmp_path / "cache"))
    gc.collect()  # earlier tests' garbage closes its descriptors now, not mid-count
    before = open_fds()
    files = ShardFiles(local, table, cache_dir=str(tmp_path / "cache"), cache_limit=None)
    for row in range(len(table)):
        files.sample(row, 0)
    assert open_fds() == before + len(table)  # one descriptor per shard read (fewer than the LRU's 16)
    files.close()
    assert open_fds() == before
    files = ShardFiles(local, table, cache_dir=str(tmp_path / "cache"), cache_limit=None)
    files.sample(0, 0)
    del files
    gc.collect()
    assert open_fds() == before


@pytest.mark.parametrize("encoding", ["str", "json", "bytes", "ndarray"])
def test_column_decoding_matches_streaming(encoding: str) -> None:
    from streaming.base.format.mds.encodings import mds_decode

    from radforge.sharder.mds import SampleEncoder
    from radforge.sharder.shard_table import decode_column

    values = {
        "str": "slice/ü",
        "json": {"a": [1, 2.5, None]},
        "bytes": b"\x00\x01",
        "ndarray": np.arange(300 * 2, dtype=np.uint16).reshape(300, 2),
    }
    data = SampleEncoder({"x": encoding}).encode({"x": values[encoding]})[4:]
    ours, stock = decode_column(encoding, data), mds_decode(encoding, data)
    if encoding == "ndarray":
        assert ours.dtype == stock.dtype and np.array_equal(ours, stock)
    else:
        assert ours == stock
