"""The plane policy: the acquired plane always, reformats only when near-isotropic and big enough."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from radforge.ingest.config import ContentConfig, ReformatConfig
from radforge.ingest.planes import choose_planes, plane_short_side
from radforge.ingest.slicer import SliceCounts, volume_samples
from radforge.ingest.volume import Volume, plane_slices, to_canonical
from radforge.synthetic.dicom import slice_geometry

LIMITS = {"max_anisotropy": 2.0, "min_side": 64}


def _acquired(shape: tuple[int, int, int], spacing: tuple[float, float, float], orientation: str) -> Volume:
    """A canonical volume built the way assembly builds it, from slices taken along ``orientation``."""
    geometry = slice_geometry(shape, spacing, orientation=orientation)
    stack = np.ones((geometry.n_slices, geometry.rows, geometry.columns), dtype=np.int16)
    return to_canonical(
        stack,
        iop=geometry.orientation,
        first_position=geometry.positions[0],
        pixel_spacing=geometry.pixel_spacing,
        slice_spacing=geometry.slice_spacing,
    )


def test_near_isotropic_3d_ct_gets_all_three_planes() -> None:
    vol = _acquired((96, 96, 96), (1.0, 1.0, 1.0), "axial")
    choice = choose_planes(vol, ["auto"], **LIMITS)
    assert vol.acquired_plane == "axial" and choice.planes == ["axial", "coronal", "sagittal"]


def test_2d_sagittal_mr_with_5mm_slices_keeps_its_own_plane_only() -> None:
    vol = _acquired((256, 256, 24), (0.9, 0.9, 5.0), "sagittal")
    assert vol.acquired_plane == "sagittal"
    auto = choose_planes(vol, ["auto"], **LIMITS)
    assert auto.planes == ["sagittal"] and "slice spacing 5.00 mm > 2 x 0.90 mm" in auto.rule
    # an explicit list never writes the 24-pixel-wide reformats the old default produced
    explicit = choose_planes(vol, ["axial", "coronal", "sagittal"], **LIMITS)
    assert explicit.planes == ["sagittal"] and "24 px < min_side 64" in explicit.rule
    assert plane_short_side(vol, "axial") == 24


@pytest.mark.parametrize(
    ("orientation", "shape", "spacing"),
    [("coronal", (128, 30, 128), (0.8, 4.0, 0.8)), ("sagittal", (128, 128, 30), (0.8, 0.8, 4.0))],
)
def test_non_axial_acquisitions_are_no_longer_lost_by_default(
    orientation: str, shape: tuple[int, int, int], spacing: tuple[float, float, float]
) -> None:
    vol = _acquired(shape, spacing, orientation)
    assert choose_planes(vol, ["auto"], **LIMITS).planes == [orientation]
    assert choose_planes(vol, ["axial"], **LIMITS).planes == []  # 30-pixel-wide axial strips: none


def test_uneven_spacing_allows_no_reformat() -> None:
    vol = replace(_acquired((96, 96, 96), (1.0, 1.0, 1.0), "axial"), uniform_spacing=False)
    choice = choose_planes(vol, ["auto"], **LIMITS)
    assert choice.planes == ["axial"] and "uneven" in choice.rule
    assert choose_planes(vol, ["coronal"], **LIMITS).planes == []


def test_short_sides_match_the_slices_plane_slices_cuts() -> None:
    vol = _acquired((30, 50, 70), (2.5, 0.8, 1.0), "axial")
    for plane in ("axial", "coronal", "sagittal"):
        first = next(plane_slices(vol, plane))  # type: ignore[arg-type]
        assert min(first.image.shape) == plane_short_side(vol, plane), plane


def test_slicer_records_the_choice_and_writes_only_chosen_planes() -> None:
    vol = _acquired((64, 64, 8), (0.9, 0.9, 5.0), "sagittal")
    vol = replace(vol, array=np.full(vol.array.shape, 300, dtype=np.int16))  # all body: nothing dropped
    counts = SliceCounts()
    samples = list(
        volume_samples(
            vol,
            modality="CT",
            series_key="k",
            planes=["auto"],
            windows=["raw"],
            content=ContentConfig(),
            base_meta={},
            counts=counts,
            reformat=ReformatConfig(),
        )
    )
    assert counts.planes == ["sagittal"] and "slice spacing" in counts.plane_rule
    assert {s["meta"]["plane"] for s in samples} == {"sagittal"} and len(samples) == 8
