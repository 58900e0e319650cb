"""The ingest job end to end on a real local Ray: outcomes, HU fidelity, de-identification, bad input."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
import zstandard

from radforge.cli import main
from radforge.ingest.config import load_config
from radforge.ingest.errors import Reason, Status, status_for
from radforge.ingest.pipeline import IngestSummary, run_ingest
from radforge.synthetic import ArchiveSpec, ExpectedSeries, build_synthetic_archive
from tests.support import read_all

# the archive's images are 48 pixels: reformats down to 16 pixels a side count as images here
CFG = {"shards": {"size_limit": 1 << 18, "samples_per_task": 64}, "reformat": {"min_side": 16}}


@pytest.fixture(scope="module")
def ingested(
    tmp_path_factory: pytest.TempPathFactory, ray_local: None
) -> tuple[ArchiveSpec, Path, IngestSummary]:
    root = tmp_path_factory.mktemp("pipeline")
    spec = build_synthetic_archive(str(root / "export-2026-11"), size=48, n_slices=8, seed=11)
    ds = root / "ds"
    report = root / "trust-zone" / "operator-report.json"
    summary = run_ingest(spec.root, str(ds), load_config(overrides=CFG), operator_report=str(report))
    return spec, ds, summary


def _status(entry: ExpectedSeries) -> str:
    """The manifest status the generator's expected reason maps to (the generator names reasons only)."""
    return status_for(Reason(entry.reason)).value if entry.reason else Status.INGESTED.value


def _manifest(ds: Path) -> list[dict]:
    rows: list[dict] = []
    for f in sorted((ds / "manifests").glob("*.parquet")):
        rows += pq.read_table(f).to_pylist()
    return rows


def test_every_object_is_accounted_for_with_the_expected_outcome(ingested: tuple) -> None:
    spec, ds, summary = ingested
    manifest = _manifest(ds)
    expected = Counter((_status(e), e.reason) for e in spec.series)
    got = Counter((m["status"], m["reason"]) for m in manifest)
    assert got == expected
    assert sum(m["n_objects"] for m in manifest) == len(spec.files()) == summary.objects
    assert summary.committed and summary.by_status.get("ingested") == len(spec.ingested())


def test_ingested_ct_slices_equal_the_phantom_hu(ingested: tuple) -> None:
    spec, ds, _ = ingested
    samples = read_all(ds)
    by_bytes = {s["image"].tobytes(): s for s in samples.values() if s["meta"]["modality"] == "CT"}
    checked = 0
    for entry in spec.ingested():
        if entry.modality != "CT" or entry.phantom is None:
            continue
        for k in range(entry.phantom.array.shape[0]):
            ref = entry.phantom.array[k].astype(np.int16)
            if (ref > -500).mean() < 0.05:
                continue  # an air slice the filter drops
            sample = by_bytes.get(ref.tobytes())
            assert sample is not None, f"{entry.case}: slice {k} missing or altered"
            assert sample["meta"]["slice_index"] == k and sample["meta"]["plane"] == "axial"
            assert sample["meta"]["series_length"] == entry.phantom.array.shape[0]
            checked += 1
    assert checked >= 10


def test_mosaic_volumes_come_out_slice_by_slice_and_never_as_mosaics(ingested: tuple) -> None:
    spec, ds, _ = ingested
    samples = read_all(ds)
    by_bytes = {s["image"].tobytes(): s for s in samples.values() if s["meta"]["modality"] == "MR"}
    mosaic_shapes = set()
    volume_keys = []
    for entry in spec.series:
        if not entry.case.startswith("mr_mosaic") or entry.phantom is None:
            continue
        image = pydicom.dcmread(Path(spec.root) / entry.files[0], stop_before_pixels=True)
        mosaic_shapes.add((int(image.Rows), int(image.Columns)))
        keys, checked = set(), 0
        for k in range(entry.phantom.array.shape[0]):
            sample = by_bytes.get(entry.phantom.array[k].astype(np.uint16).tobytes())
            if sample is None:
                continue  # an air slice the filter drops
            meta = sample["meta"]
            assert (meta["slice_index"], meta["series_length"]) == (k, len(entry.phantom.array))
            keys.add(sample["meta"]["series_key"])
            checked += 1
        assert checked >= entry.phantom.array.shape[0] // 2, entry.case
        assert len(keys) == 1, entry.case  # one volume, one key
        volume_keys.extend(keys)
    assert len(volume_keys) == len(set(volume_keys)) == 4  # two series of two volumes each
    assert mosaic_shapes and all(s["image"].shape not in mosaic_shapes for s in samples.values())
    rows = {(m["status"], m["reason"], m["mosaic"], m["volumes_found"]) for m in _manifest(ds) if m["mosaic"]}
    assert rows == {("ingested", None, True, 2)}
    # 4D: mosaics (2 volumes), the classic DWI (4), the enhanced fMRI (3), each volume its own record
    manifest = _manifest(ds)
    volumes = Counter((m["volumes_found"], m["volumes_kept"]) for m in manifest if m["volumes_found"] > 1)
    assert volumes == Counter({(2, 2): 4, (4, 4): 4, (3, 3): 3})


def test_plane_policy_and_gaps_are_recorded_per_series(ingested: tuple) -> None:
    _, ds, summary = ingested
    ingested_rows = [m for m in _manifest(ds) if m["status"] == "ingested"]
    by_planes = Counter(m["planes"] for m in ingested_rows)
    assert by_planes["axial,coronal,sagittal"] >= 1  # the near-isotropic CT
    thick = [m for m in ingested_rows if "slice spacing 5.00 mm > 2" in m["plane_rule"]]
    assert [m["planes"] for m in thick] == ["sagittal"]  # the 2D sagittal MR: its own plane only
    gapped = [m for m in ingested_rows if "uneven slice spacing" in m["plane_rule"]]
    assert [m["planes"] for m in gapped] == ["axial"]  # the CT with a missing slice: native slices only
    assert gapped[0]["slices_kept"] + gapped[0]["slices_dropped"] == 7  # 8 slices, one missing
    assert all(m["planes"] for m in ingested_rows)
    # the run summary (what `radforge ingest` and the demo print) counts what was beyond plain 3D
    assert summary.by_kind["mosaic volume"] == 4 and summary.by_kind["volume of a 4D series"] == 11
    assert summary.by_kind["uneven spacing"] == 1 and summary.by_kind["reformatted"] >= 1


def test_operator_report_names_the_objects_of_every_series_not_ingested(ingested: tuple) -> None:
    spec, ds, _ = ingested
    report = json.loads((ds.parent / "trust-zone" / "operator-report.json").read_text())
    assert "trust zone" in report["warning"] and report["archive"] == spec.root
    got = Counter((e["reason"], tuple(e["objects"])) for e in report["series"])
    want = Counter((e.reason, tuple(sorted(e.files))) for e in spec.series if not e.ingested)
    assert got == want  # every skipped or quarantined entry, with exactly its objects
    assert not any("operator-report" in str(p) for p in ds.rglob("*"))  # never inside the dataset


def test_empty_slices_are_dropped_and_counted(ingested: tuple) -> None:
    _, ds, summary = ingested
    samples = read_all(ds)
    assert summary.slices_dropped > 0
    assert min(s["meta"]["fg_fraction"] for s in samples.values()) >= load_config().content.min_foreground
    for s in samples.values():
        h, w = s["image"].shape
        assert s["fg"].shape == (-(-h // 16), -(-w // 16))
        r0, c0, r1, c1 = s["meta"]["body_box"]
        assert 0 <= r0 < r1 <= h and 0 <= c0 < c1 <= w


def _all_output_bytes(ds: Path) -> list[tuple[str, bytes]]:
    out = []
    for f in sorted(p for p in ds.rglob("*") if p.is_file()):
        data = f.read_bytes()
        if f.suffix == ".zstd":
            data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
        if f.suffix == ".parquet":
            data += json.dumps(pq.read_table(f).to_pylist()).encode()
        out.append((str(f.relative_to(ds)), data))
    return out


def test_no_planted_identifying_value_reaches_any_output_byte(ingested: tuple) -> None:
    spec, ds, summary = ingested
    markers = spec.markers()
    assert len(markers) > 20
    outputs = _all_output_bytes(ds)
    assert any(name.endswith(".mds.zstd") for name, _ in outputs)
    summary_text = json.dumps(summary.to_dict())
    for marker in markers:
        needle = marker.encode()
        for name, data in outputs:
            assert needle not in data, f"{marker!r} found in {name}"
        assert marker not in summary_text
    # Folder names (which carry patient names) never appear either.
    for entry in spec.series:
        for part in Path(entry.folder).parts:
            if "PHI" in part:
                assert all(part.encode() not in data for _, data in outputs)


def test_cli_ingest_prints_summary_and_rejects_bad_runs(
    tmp_path: Path, ingested: tuple, capsys: pytest.CaptureFixture[str]
) -> None:
    spec, _, _ = ingested
    ds = tmp_path / "cli-ds"
    assert main(["ingest", spec.root, str(ds), "--json", "--set", "shards.samples_per_task=64"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["committed"] and summary["samples_written"] > 0

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["ingest", str(empty), str(ds)]) == 1
    assert "holds no objects" in capsys.readouterr().err
    assert main(["ingest", str(tmp_path / "missing"), str(ds)]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["ingest", spec.root, str(ds), "--operator-report", str(ds / "operator.json")]) == 1
    assert "inside the dataset" in capsys.readouterr().err
    assert main(["ingest", spec.root, str(ds), "--set", "planes=[axial,oblique]"]) == 2
    assert "planes.1" in capsys.readouterr().err
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("x")
    assert main(["ingest", spec.root, str(blocker / "ds")]) == 1
    assert "not writable" in capsys.readouterr().err


def test_sample_archive_of_real_files_matches_its_expected_outcomes(ray_local: None, tmp_path: Path) -> None:
    """Real DICOM/NIfTI files from pydicom, pydicom-data, nibabel and nilearn, plus a synthetic export."""
    from radforge.synthetic import build_sample_archive

    spec = build_sample_archive(str(tmp_path / "sample"))
    ds = tmp_path / "ds"
    summary = run_ingest(spec.root, str(ds), load_config(overrides=CFG))
    manifest = _manifest(ds)
    assert Counter((m["status"], m["reason"]) for m in manifest) == Counter(
        (_status(e), e.reason) for e in spec.series
    )
    assert sum(m["n_objects"] for m in manifest) == summary.objects == len(spec.files())
    assert {e.source for e in spec.ingested()} >= {
        "pydicom",
        "pydicom-data",
        "nibabel",
        "nilearn",
    }
    outputs = _all_output_bytes(ds)
    for marker in spec.markers():
        assert all(marker.encode() not in data for _, data in outputs), marker


def test_distributed_grouping_gives_the_same_dataset_as_driver_grouping(
    ray_local: None, tmp_path: Path
) -> None:
    """Big archives group series with a Ray Data groupby; small ones on the driver: same samples."""
    from tests.support import make_archive

    arch = make_archive(tmp_path / "arch", n_ct=2, n_mr=1, seed=21)
    by_driver, by_groupby = tmp_path / "driver", tmp_path / "groupby"
    run_ingest(str(arch), str(by_driver), load_config(overrides=CFG))
    summary = run_ingest(
        str(arch),
        str(by_groupby),
        load_config(overrides={**CFG, "ray": {"distributed_grouping_min_objects": 0}}),
    )
    assert summary.by_status == {"ingested": 3}
    a, b = read_all(by_driver), read_all(by_groupby)
    assert a.keys() == b.keys() and all(np.array_equal(a[k]["image"], b[k]["image"]) for k in a)
