"""Header discovery: the fast scanner agrees with pydicom on real and synthetic files; failures are typed."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest

from radforge.ingest.discover import Header, header_from_dataset, list_objects, parse_header, read_header
from radforge.ingest.errors import IngestError, SourceError
from radforge.storage import resolve
from radforge.synthetic import build_synthetic_archive


def _reference(data: bytes) -> Header:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
    return header_from_dataset(ds, path="x", size=len(data))


def _dicom_files() -> list[Path]:
    """Every .dcm shipped by pydicom (test_files) and pydicom-data (data_store), read from disk."""
    import data_store

    roots = [Path(pydicom.__file__).parent / "data" / "test_files", Path(data_store.__file__).parent / "data"]
    return sorted(f for root in roots for f in root.rglob("*.dcm") if f.stat().st_size < 20_000_000)


def test_fast_headers_equal_pydicom_headers_on_real_files() -> None:
    compared = 0
    for f in _dicom_files():
        data = f.read_bytes()
        try:
            ref = _reference(data)
        except Exception:
            continue
        try:
            got = parse_header(data, path="x", size=len(data))
        except IngestError:
            continue
        assert got == ref, f.name
        compared += 1
    assert compared >= 80


def test_fast_headers_equal_pydicom_on_the_synthetic_archive(tmp_path: Path) -> None:
    spec = build_synthetic_archive(str(tmp_path / "a"), size=32, n_slices=4, seed=2)
    compared = 0
    for rel in spec.files():
        data = (tmp_path / "a" / rel).read_bytes()
        try:
            ref = _reference(data)
            got = parse_header(data, path="x", size=len(data))
        except Exception:
            continue
        assert got == ref, rel
        compared += 1
    assert compared >= 40


def test_vendor_attributes_are_read_on_the_fast_path(tmp_path: Path) -> None:
    from radforge.ingest.discover import _fast_values

    spec = build_synthetic_archive(str(tmp_path / "a"), size=16, n_slices=4, seed=3, include_bad=False)

    def header(case: str) -> Header:
        data = (tmp_path / "a" / spec.case(case).files[0]).read_bytes()
        assert _fast_values(data) is not None, case  # no pydicom parse for these
        return parse_header(data, path="x", size=len(data))

    assert (header("mr_dwi_v0").b_value, header("mr_dwi_v0").gradient) == ("0", None)
    assert (header("mr_dwi_v2").b_value, header("mr_dwi_v2").gradient) == ("1000", "0,1,0")
    mosaic = header("mr_mosaic_csa_v0")
    assert (mosaic.mosaic_count, mosaic.csa_normal) == (4, [0.0, 0.0, 1.0])
    plain = header("mr_mosaic_no_csa_v1")
    assert (plain.mosaic_count, plain.spacing_between) == (None, 2.5)
    assert mosaic.acquisition_matrix == plain.acquisition_matrix == [16, 0, 0, 16]
    assert header("mr_swi_phase").image_type[2] == "P"


def test_unreadable_objects_become_records_not_exceptions(tmp_path: Path) -> None:
    (tmp_path / "zero.dcm").write_bytes(b"")
    (tmp_path / "text.dcm").write_text("not a dicom file at all\n" * 20)
    root = resolve(str(tmp_path))
    for name in ("zero.dcm", "text.dcm"):
        h = read_header(root, name, (tmp_path / name).stat().st_size)
        assert h.kind == "unreadable" and h.reason == "unreadable" and h.detail
    assert read_header(root, "vol.nii.gz", 10).kind == "nifti"


def test_listing_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        list_objects(resolve(str(tmp_path / "missing")))
    with pytest.raises(SourceError, match="holds no objects"):
        list_objects(resolve(str(tmp_path)))
    (tmp_path / "deep" / "er").mkdir(parents=True)
    (tmp_path / "deep" / "er" / "a b é.dcm").write_bytes(b"x")
    assert list_objects(resolve(str(tmp_path))) == [("deep/er/a b é.dcm", 1)]


def test_header_row_is_a_detached_copy_that_round_trips() -> None:
    from dataclasses import asdict

    from radforge.ingest.discover import Header

    h = Header(path="s/1.dcm", size=10, kind="dicom", image_type=["ORIGINAL", "AXIAL"], ipp=[0.0, 1.0, 2.0])
    row = h.to_row()
    assert row == asdict(h)
    row["image_type"].append("LOCALIZER")  # the row is the header's copy, not a view of it
    assert h.image_type == ["ORIGINAL", "AXIAL"]
    assert Header.from_row(h.to_row()) == h
