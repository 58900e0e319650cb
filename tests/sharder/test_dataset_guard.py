"""The dataset's own guards: the marker, the scope of orphan cleanup, canonical names, the commit fence."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from radforge.ingest.config import load_config
from radforge.ingest.pipeline import part_id_for, run_ingest
from radforge.sharder.catalog import Catalog, commit, is_part_id, load_catalog
from radforge.sharder.datasink import MDSDatasink, remove_orphans
from radforge.sharder.lease import LEASES, LeaseLostError, archive_lease_loc, read_lease
from radforge.sharder.marker import (
    MARKER,
    DestinationState,
    NotADatasetError,
    check_destination,
    destination_state,
    mark_dataset,
    new_marker,
    read_marker,
)
from radforge.storage import canonical_uri, resolve, write_bytes_atomic
from tests.support import make_archive

SMALL_SHARDS = {"shards": {"size_limit": 16384, "samples_per_task": 8}}


def test_destination_states(tmp_path: Path) -> None:
    root = resolve(str(tmp_path / "new"))
    assert destination_state(root) is DestinationState.EMPTY  # not there yet
    (tmp_path / "new").mkdir()
    assert destination_state(root) is DestinationState.EMPTY
    (tmp_path / "new" / LEASES).mkdir()  # another writer is creating the dataset
    (tmp_path / "new" / LEASES / "archive-0.json").write_bytes(b"{}")
    assert destination_state(root) is DestinationState.EMPTY
    (tmp_path / "new" / "thesis.tex").write_bytes(b"x")
    assert destination_state(root) is DestinationState.FOREIGN
    with pytest.raises(NotADatasetError, match=r"is not empty and is not a radforge dataset"):
        check_destination(root)
    with pytest.raises(NotADatasetError):
        mark_dataset(root)
    assert not (tmp_path / "new" / MARKER).exists()
    # a stock MDS dataset (no radforge section) is not ours either
    stock = tmp_path / "stock"
    stock.mkdir()
    (stock / "index.json").write_text(json.dumps({"version": 2, "shards": []}))
    assert destination_state(resolve(str(stock))) is DestinationState.FOREIGN
    # a file where the dataset should be
    (tmp_path / "file").write_bytes(b"x")
    assert destination_state(resolve(str(tmp_path / "file"))) is DestinationState.FOREIGN


def test_a_dataset_without_marker_is_upgraded_and_a_new_one_is_marked(tmp_path: Path) -> None:
    legacy = resolve(str(tmp_path / "legacy"))
    commit(legacy, Catalog())  # a radforge index.json as radforge wrote it before markers
    (tmp_path / "legacy" / "parts").mkdir()
    assert destination_state(legacy) is DestinationState.UNMARKED_DATASET
    assert mark_dataset(legacy)
    marker = read_marker(legacy)
    assert marker["format"] == "radforge-dataset" and marker["format_version"] == 1
    assert destination_state(legacy) is DestinationState.DATASET
    assert not mark_dataset(legacy)  # already marked: unchanged
    assert read_marker(legacy) == marker

    new = resolve(str(tmp_path / "new"))
    assert mark_dataset(new) and read_marker(new)["dataset_id"] != marker["dataset_id"]


def test_a_marker_of_a_newer_format_is_refused(tmp_path: Path) -> None:
    root = resolve(str(tmp_path))
    (tmp_path / MARKER).write_text(json.dumps({"format": "radforge-dataset", "format_version": 99}))
    with pytest.raises(Exception, match="version 99.*upgrade radforge"):
        mark_dataset(root)


def test_orphan_cleanup_removes_only_radforge_part_folders_of_a_marked_dataset(tmp_path: Path) -> None:
    root = resolve(str(tmp_path))
    committed, orphan = "p-0000000000000001", "p-00000000000000ff"
    for rel in (
        f"parts/{committed}/t/shard.00000.mds",
        f"parts/{orphan}/t/shard.00000.mds",
        "parts/p-notours/x",
        "parts/results/scores.npy",
        "parts/readme.md",
    ):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    catalog = Catalog(parts=[{"id": committed}])
    assert remove_orphans(root, catalog, keep=set()) == []  # no marker: not provably ours
    assert (tmp_path / "parts" / orphan).exists()
    (tmp_path / MARKER).write_text(json.dumps(new_marker()))
    assert remove_orphans(root, catalog, keep=set()) == [orphan]
    left = {p.relative_to(tmp_path).as_posix() for p in (tmp_path / "parts").rglob("*") if p.is_file()}
    kept = {"parts/p-notours/x", "parts/results/scores.npy", "parts/readme.md"}
    assert left == {f"parts/{committed}/t/shard.00000.mds"} | kept


def test_part_ids_are_recognised_as_radforge_names() -> None:
    assert is_part_id(part_id_for("hospital-a", "0123456789abcdef", ["k1", "k2"]))
    assert not is_part_id("p-bench") and not is_part_id("results") and not is_part_id("p-0123456789ABCDEF")


def test_canonical_uri_names_aliases_of_one_location_alike(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    os.symlink(tmp_path / "data", tmp_path / "alias")
    real = str((tmp_path / "data" / "ct").resolve())
    for spelling in (
        tmp_path / "alias" / "ct",
        f"file://{tmp_path}/alias/ct",
        f"{tmp_path}/alias/../data/ct/",
        tmp_path / "data" / "ct",
    ):
        assert canonical_uri(spelling) == real
    assert canonical_uri("s3a://bucket/datasets/ct/") == canonical_uri("S3://bucket/datasets/ct") == (
        "s3://bucket/datasets/ct"
    )
    assert resolve(str(tmp_path / "alias")).canonical.path == str((tmp_path / "data").resolve())


class TakenOverSink(MDSDatasink):
    """Another writer takes the archive's lease over while this run writes (as after a long stall)."""

    def on_write_start(self, schema: Any = None) -> None:
        super().on_write_start(schema)
        archive_lease = self.leases[0]
        record = read_lease(archive_lease.loc)
        assert record is not None
        stolen = json.dumps({**record.__dict__, "owner": "another-writer", "pid": 1}).encode()
        write_bytes_atomic(archive_lease.loc, stolen)


def test_a_run_whose_lease_was_taken_over_does_not_commit(ray_local: None, tmp_path: Path) -> None:
    cfg = load_config(overrides=SMALL_SHARDS)
    ds = tmp_path / "ds"
    run_ingest(str(make_archive(tmp_path / "a", n_ct=1, n_mr=0, seed=1)), str(ds), cfg)
    index = (ds / "index.json").read_bytes()
    assert read_lease(archive_lease_loc(resolve(str(ds)), "a")) is None  # released after the commit
    assert (ds / MARKER).exists()

    with pytest.raises(LeaseLostError, match="taken over"):
        second = make_archive(tmp_path / "b", n_ct=1, n_mr=0, seed=2)
        run_ingest(str(second), str(ds), cfg, sink_cls=TakenOverSink)
    assert (ds / "index.json").read_bytes() == index
    assert len(load_catalog(resolve(str(ds))).parts) == 1
    held = read_lease(archive_lease_loc(resolve(str(ds)), "b"))
    assert held is not None and held.owner == "another-writer"  # the loser left the winner's lease
    assert not list((ds / LEASES).glob("part-*.json"))  # its part's liveness record went with the run


def test_a_destination_in_a_missing_bucket_is_one_clear_error(moto_server: str) -> None:
    from radforge.sharder.catalog import DatasetError
    from radforge.sharder.lease import ArchiveLease

    root = resolve("s3://rf-no-such-bucket/datasets/ct")
    assert check_destination(root) is DestinationState.EMPTY
    with pytest.raises(DatasetError, match=r"^destination s3://rf-no-such-bucket/\S+ is not writable"):
        ArchiveLease(root, "a").acquire()
