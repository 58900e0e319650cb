"""``dataset verify`` / ``dataset stats`` and schema-version checks on a dataset written for real."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from radforge.cli import main
from radforge.ingest.config import load_config
from radforge.ingest.pipeline import run_ingest
from radforge.sharder.catalog import load_catalog
from radforge.sharder.schema import SchemaVersionError
from radforge.sharder.stats import dataset_stats
from radforge.sharder.verify import verify_dataset
from radforge.storage import resolve
from tests.support import make_archive

CFG = {"shards": {"size_limit": 16384, "samples_per_task": 8}}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, ray_local: None) -> Path:
    root = tmp_path_factory.mktemp("verify")
    arch = make_archive(root / "hospital-v", n_ct=1, n_mr=1, seed=3)
    ds = root / "ds"
    run_ingest(str(arch), str(ds), load_config(overrides=CFG))
    return ds


def _copy(dataset: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    ds = tmp_path / "ds"
    shutil.copytree(dataset, ds)
    files = [(s.get("zip_data") or s["raw_data"])["basename"] for s in load_catalog(resolve(str(ds))).shards]
    return ds, files


def test_clean_dataset_verifies(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = verify_dataset(str(dataset))
    assert report.ok and report.shards_checked >= 3 and report.samples > 0
    assert main(["dataset", "verify", str(dataset)]) == 0
    assert "OK" in capsys.readouterr().out


def test_truncated_flipped_and_deleted_shards_are_named(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ds, files = _copy(dataset, tmp_path)
    truncated, flipped, deleted = files[0], files[1], files[2]
    data = (ds / truncated).read_bytes()
    (ds / truncated).write_bytes(data[: len(data) // 2])
    raw = bytearray((ds / flipped).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (ds / flipped).write_bytes(bytes(raw))
    (ds / deleted).unlink()

    report = verify_dataset(str(ds))
    found = {(p.kind, p.path) for p in report.problems}
    assert found == {("truncated", truncated), ("corrupt", flipped), ("missing", deleted)}
    assert main(["dataset", "verify", str(ds)]) == 1
    out = capsys.readouterr().out
    for name in (truncated, flipped, deleted):
        assert name in out


def test_stats_counts_what_was_written(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stats = dataset_stats(str(dataset))
    assert set(stats["by_modality"]) == {"CT", "MR"}
    assert sum(stats["by_modality"].values()) == stats["samples"]
    assert stats["by_plane"] == {"axial": stats["samples"]}
    assert stats["by_archive"] == {"hospital-v": stats["samples"]}
    assert stats["slices_per_series"]["series"] == 2
    assert main(["dataset", "stats", str(dataset), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == stats["samples"]


def test_incompatible_schema_names_both_versions(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ds, _ = _copy(dataset, tmp_path)
    entry_file = ds / "_log" / f"{1:020d}.json"  # the commit log is where readers learn the version
    entry = json.loads(entry_file.read_text())
    entry["part"]["schema_version"] = "7.0"
    entry_file.write_text(json.dumps(entry))
    with pytest.raises(SchemaVersionError, match=r"7\.0.*1\.0"):
        load_catalog(resolve(str(ds)))
    assert main(["dataset", "stats", str(ds)]) == 1
    assert "7.0" in capsys.readouterr().err


def test_missing_dataset_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dataset", "verify", str(tmp_path / "nothing")]) == 1
    assert "index.json is missing" in capsys.readouterr().err
