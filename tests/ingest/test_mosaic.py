"""Siemens MOSAIC: layout, de-mosaic and slice positions, against nibabel on a real Siemens header and
slice by slice against the volumes the synthetic generator tiled (with and without a CSA header)."""

from __future__ import annotations

import gzip
import io
import warnings
from pathlib import Path

import nibabel
import numpy as np
import pydicom
import pytest

from radforge.ingest.assemble import load_dicom_volume
from radforge.ingest.config import GeometryConfig
from radforge.ingest.discover import Header, parse_header
from radforge.ingest.errors import IngestError, Reason
from radforge.ingest.mosaic import demosaic, mosaic_layout
from radforge.ingest.series import PlanRules, SeriesPlan, plan_group
from radforge.synthetic.mosaic import tile, write_mosaic_series
from radforge.synthetic.phantom import mr_phantom

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # nibabel warns that its DICOM readers are experimental
    from nibabel.nicom import dicomwrappers

SALT = b"mosaic-test-salt"
REAL_DWI = Path(nibabel.__file__).parent / "nicom" / "tests" / "data" / "siemens_dwi_1000.dcm.gz"


def _headers(files: dict[str, bytes]) -> list[Header]:
    return [parse_header(data, path=name, size=len(data)) for name, data in sorted(files.items())]


def _plans(files: dict[str, bytes], max_volumes: int = 4) -> list[SeriesPlan]:
    rules = PlanRules(max_volumes=max_volumes)
    return plan_group(_headers(files), salt=SALT, already_ingested=frozenset(), rules=rules)


def test_real_siemens_dwi_mosaic_equals_nibabel_slice_by_slice() -> None:
    # nibabel's Siemens DWI test file has real headers (CSA included) and zeroed pixels: random
    # pixels make every tile distinguishable; nibabel's MosaicWrapper is the independent reference.
    ds = pydicom.dcmread(io.BytesIO(gzip.decompress(REAL_DWI.read_bytes())))
    ds.PixelData = np.random.default_rng(0).integers(1, 4000, (896, 896), dtype=np.uint16).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    (plan,) = _plans({"dwi.dcm": data})
    assert plan.status == "pending" and plan.mosaic is not None and plan.mosaic["n_slices"] == 48
    vol = load_dicom_volume(plan, lambda _: data, geometry=GeometryConfig())
    wrapper = dicomwrappers.wrapper_from_data(ds)
    reference = wrapper.get_data()  # (rows, cols, slices)
    assert vol.array.shape == (48, 128, 128)
    for k in range(48):  # axial, slices stacked toward superior: canonical slice k is tile k
        np.testing.assert_array_equal(vol.array[k], reference[:, :, k])
    np.testing.assert_allclose(vol.origin, wrapper.image_position, atol=1e-6)
    assert vol.spacing == pytest.approx((3.0, 1.796875, 1.796875), abs=1e-3)


@pytest.mark.parametrize("csa", [True, False])
def test_synthetic_mosaic_volumes_come_back_slice_by_slice(tmp_path: Path, csa: bool) -> None:
    phantom = mr_phantom(shape=(10, 24, 32), spacing=(3.0, 2.0, 2.5), seed=3)
    volumes = [phantom.array.astype(np.uint16) + 7 * t for t in range(3)]
    origin = (-40.0, -30.0, -12.5)
    series = write_mosaic_series(volumes, tmp_path, spacing=phantom.spacing, origin=origin, csa=csa)
    files = {Path(p).name: Path(p).read_bytes() for p in series.paths}
    plans = _plans(files)
    assert [p.status for p in plans] == ["pending"] * 3
    assert all(p.volumes_found == 3 and p.volumes_kept == 3 for p in plans)
    assert len({p.series_key for p in plans}) == 3
    by_path = {p.instances[0].path: p for p in plans}
    for t, path in enumerate(series.paths):
        plan = by_path[Path(path).name]
        assert plan.mosaic is not None and plan.mosaic["trim_padding"] is (not csa)
        vol = load_dicom_volume(plan, files.__getitem__, geometry=GeometryConfig())
        assert vol.array.shape == (10, 24, 32)  # a 4x4 grid of tiles: 6 padding tiles dropped
        for k in range(10):
            np.testing.assert_array_equal(vol.array[k], volumes[t][k])
        assert vol.origin == pytest.approx(origin) and vol.spacing == pytest.approx(phantom.spacing)


def test_volumes_beyond_the_cap_are_chosen_evenly_and_recorded(tmp_path: Path) -> None:
    volumes = [np.full((4, 8, 8), t + 1, dtype=np.uint16) for t in range(6)]
    series = write_mosaic_series(volumes, tmp_path, spacing=(2.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    files = {Path(p).name: Path(p).read_bytes() for p in series.paths}
    plans = _plans(files, max_volumes=4)
    kept = [p for p in plans if p.status == "pending"]
    # evenly over 6 volumes in acquisition order, the first and the last included
    assert sorted(p.instances[0].path for p in kept) == [f"MOSAIC000{t}.dcm" for t in (1, 3, 4, 6)]
    assert all((p.volumes_found, p.volumes_kept) == (6, 4) for p in kept)
    (left,) = [p for p in plans if p.status != "pending"]
    assert (left.status, left.reason, left.n_objects) == ("skipped", Reason.VOLUME_NOT_KEPT.value, 2)
    assert sum(p.n_objects for p in plans) == 6


def test_mosaic_whose_count_cannot_be_established_is_skipped(tmp_path: Path) -> None:
    series = write_mosaic_series(
        [np.ones((4, 8, 8), dtype=np.uint16)],
        tmp_path,
        spacing=(2.0, 1.0, 1.0),
        origin=(0.0, 0.0, 0.0),
        csa=False,
    )
    ds = pydicom.dcmread(series.paths[0])
    ds.AcquisitionMatrix = [6, 0, 0, 6]  # reconstructed at another size: 16 is not a multiple of 6
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    (plan,) = _plans({"m.dcm": buffer.getvalue()})
    assert (plan.status, plan.reason) == ("skipped", Reason.MOSAIC_UNDECODABLE.value)
    assert "does not tile" in (plan.detail or "")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"csa_count": None, "acquisition_matrix": None}, "without a CSA header or an Acquisition Matrix"),
        ({"csa_count": 10, "acquisition_matrix": None, "rows": 102}, "does not tile"),
        ({"csa_count": 10, "acquisition_matrix": None, "spacing": None}, "no positions"),
        ({"csa_count": None, "acquisition_matrix": [64, 0, 0, 32]}, "square grid"),
    ],
)
def test_layout_refusals_name_what_is_missing(kwargs: dict, match: str) -> None:
    args = {"rows": 256, "cols": 256, "spacing": 3.0, "normal": None, **kwargs}
    with pytest.raises(IngestError, match=match) as caught:
        mosaic_layout(**args)
    assert caught.value.reason is Reason.MOSAIC_UNDECODABLE


def test_demosaic_is_the_inverse_of_tiling() -> None:
    volume = np.random.default_rng(1).integers(1, 100, (7, 5, 6)).astype(np.uint16)
    image = tile(volume)
    assert image.shape == (15, 18)
    layout = mosaic_layout(rows=15, cols=18, csa_count=7, acquisition_matrix=None, spacing=1.0, normal=None)
    np.testing.assert_array_equal(demosaic(image, layout), volume)
