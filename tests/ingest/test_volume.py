"""Slice ordering, spacing checks, reorientation to canonical LPS, NIfTI affines and plane conventions."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from radforge.config import ConfigError
from radforge.ingest.errors import IngestError, Reason
from radforge.ingest.volume import (
    Volume,
    check_spacing,
    from_nifti,
    gantry_tilt_deg,
    order_slices,
    plane_slices,
    slice_normal,
    to_canonical,
)

SPACING = (2.5, 0.8, 0.6)  # (z, y, x) mm
ORIGIN = np.array([-30.0, 12.0, 400.0])  # LPS mm of canonical voxel [0, 0, 0]
# LPS unit vector of each canonical array axis: z -> Superior, y -> Posterior, x -> Left.
AXIS_WORLD = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
MARKER = 5000  # left-posterior-superior corner blob


def canonical_volume(shape: tuple[int, int, int] = (5, 6, 7)) -> np.ndarray:
    """Every voxel distinct, plus a bright blob at the patient's left-posterior-superior corner."""
    vol = np.arange(math.prod(shape), dtype=np.int16).reshape(shape)
    vol[-2:, -2:, -2:] = MARKER
    return vol


def world_position(index: np.ndarray) -> np.ndarray:
    """LPS position of canonical voxel (z, y, x)."""
    return ORIGIN + (np.asarray(index, dtype=float) * SPACING) @ AXIS_WORLD


def acquire(
    vol: np.ndarray,
    axes: tuple[int, int, int],
    signs: tuple[int, int, int],
    rotation: np.ndarray | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray], list[float], tuple[float, float]]:
    """Write ``vol`` as a DICOM-like acquisition: per-slice images and positions, shuffled, plus IOP.

    ``axes`` names the canonical axis that the stack's slice, row and column index follow; ``signs``
    whether each index runs along (+1) or against (-1) it. ``rotation`` tilts the whole acquisition
    (an oblique scan) about the volume's origin.
    """
    stack = np.transpose(vol, axes)
    stack = stack[tuple(slice(None, None, s) for s in signs)]
    rot = np.eye(3) if rotation is None else rotation
    dirs = [rot @ (s * AXIS_WORLD[a]) for a, s in zip(axes, signs, strict=True)]
    iop = [*dirs[2], *dirs[1]]  # IOP[0:3]: along a row (column index), IOP[3:6]: down a column (row index)
    sp = [SPACING[a] for a in axes]
    corner = np.array([0 if s > 0 else vol.shape[a] - 1 for a, s in zip(axes, signs, strict=True)])
    canon_corner = np.zeros(3, dtype=int)
    canon_corner[list(axes)] = corner
    first = ORIGIN + rot @ (world_position(canon_corner) - ORIGIN)
    positions = [first + k * sp[0] * dirs[0] for k in range(stack.shape[0])]
    slices = list(stack)
    order = np.random.default_rng(sum(axes) * 7 + sum(signs)).permutation(len(slices))
    return [slices[i] for i in order], [positions[i] for i in order], iop, (sp[1], sp[2])


def ingest_stack(
    slices: list[np.ndarray],
    positions: list[np.ndarray],
    iop: list[float],
    pixel_spacing: tuple[float, float],
) -> Volume:
    order, distances = order_slices(positions, iop)
    return to_canonical(
        np.stack([slices[i] for i in order]),
        iop=iop,
        first_position=positions[order[0]],
        pixel_spacing=pixel_spacing,
        slice_spacing=check_spacing(distances),
    )


ACQUISITIONS = [
    (axes, signs)
    for axes in itertools.permutations(range(3))
    for signs in itertools.product((1, -1), repeat=3)
]


@pytest.mark.parametrize(("axes", "signs"), ACQUISITIONS, ids=[f"{a}{s}" for a, s in ACQUISITIONS])
def test_any_acquisition_and_flip_returns_the_canonical_volume(axes, signs) -> None:
    vol = canonical_volume()
    out = ingest_stack(*acquire(vol, axes, signs))
    np.testing.assert_array_equal(out.array, vol)
    assert out.spacing == pytest.approx(SPACING)
    assert np.allclose(out.origin, ORIGIN)
    assert out.oblique_deg == pytest.approx(0.0, abs=1e-6)
    # the marker sits where LPS says: largest z (superior), y (posterior) and x (left) indices
    assert out.array[-1, -1, -1] == MARKER and out.array[0, 0, 0] != MARKER


@pytest.mark.parametrize(
    ("name", "axes", "signs", "iop"),
    [
        ("axial", (0, 1, 2), (1, 1, 1), (1, 0, 0, 0, 1, 0)),
        ("coronal", (1, 0, 2), (1, -1, 1), (1, 0, 0, 0, 0, -1)),
        ("sagittal", (2, 0, 1), (1, -1, 1), (0, 1, 0, 0, 0, -1)),
        ("axial feet-first flipped", (0, 1, 2), (-1, 1, -1), (-1, 0, 0, 0, 1, 0)),
    ],
)
def test_standard_acquisitions_match_simpleitk_dicomorient(name, axes, signs, iop) -> None:
    vol = canonical_volume()
    slices, positions, got_iop, pixel_spacing = acquire(vol, axes, signs)
    assert np.allclose(got_iop, iop), name
    out = ingest_stack(slices, positions, got_iop, pixel_spacing)
    # Independent check: SimpleITK with the DICOM geometry, reoriented by ITK to LPS.
    order, distances = order_slices(positions, got_iop)
    img = sitk.GetImageFromArray(np.stack([slices[i] for i in order]))
    row, col = np.array(got_iop[:3]), np.array(got_iop[3:])
    img.SetDirection(np.column_stack([row, col, slice_normal(got_iop)]).ravel().tolist())
    img.SetSpacing((pixel_spacing[1], pixel_spacing[0], check_spacing(distances)))
    img.SetOrigin(positions[order[0]].tolist())
    ref = sitk.DICOMOrient(img, "LPS")
    np.testing.assert_array_equal(out.array, sitk.GetArrayFromImage(ref))
    assert np.allclose(out.origin, ref.GetOrigin())
    assert out.spacing == pytest.approx(ref.GetSpacing()[::-1])


def rotation_z(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def test_oblique_acquisition_goes_to_nearest_axes_and_reports_the_angle() -> None:
    vol = canonical_volume()
    out = ingest_stack(*acquire(vol, (1, 0, 2), (1, -1, 1), rotation=rotation_z(12.0)))  # oblique coronal
    np.testing.assert_array_equal(out.array, vol)
    assert out.oblique_deg == pytest.approx(12.0, abs=1e-6)
    assert out.spacing == pytest.approx(SPACING)


def test_order_slices_uses_positions_not_input_order() -> None:
    iop = (1, 0, 0, 0, 1, 0)
    positions = [(0, 0, 7.5), (0, 0, -2.5), (0, 0, 2.5)]
    order, distances = order_slices(positions, iop)
    assert order.tolist() == [1, 2, 0]
    np.testing.assert_allclose(distances, [-2.5, 2.5, 7.5])
    # a normal pointing inferior (row/col swapped) reverses the order
    order, _ = order_slices(positions, (0, 1, 0, 1, 0, 0))
    assert order.tolist() == [0, 2, 1]


def test_slice_normal_is_row_cross_column() -> None:
    np.testing.assert_allclose(slice_normal((1, 0, 0, 0, 1, 0)), [0, 0, 1])
    np.testing.assert_allclose(slice_normal((1, 0, 0, 0, 0, -1)), [0, 1, 0])
    np.testing.assert_allclose(slice_normal((0, 1, 0, 0, 0, -1)), [-1, 0, 0])


@pytest.mark.parametrize(
    "iop",
    [
        (0, 0, 0, 0, 1, 0),  # zero-length row direction
        (1, 0, 0, 1, 0, 0),  # parallel directions
        (1, 0, 0, 0.5, 0.866, 0),  # 30 degrees apart
        (1, 0, 0, 0, 1),  # five values
        (1, 0, 0, 0, float("nan"), 0),
        (3, 0, 0, 0, 1, 0),  # not a direction cosine
    ],
)
def test_degenerate_orientation_is_inconsistent_geometry(iop) -> None:
    with pytest.raises(IngestError) as err:
        order_slices([(0, 0, 0), (0, 0, 1)], iop)
    assert err.value.reason is Reason.INCONSISTENT_GEOMETRY


def test_iop_rounded_to_few_decimals_is_accepted() -> None:
    c, s = 0.9848, 0.1736  # cos/sin of 10 degrees, 4 decimals as some scanners write them
    np.testing.assert_allclose(slice_normal((c, s, 0, -s, c, 0)), [0, 0, 1], atol=1e-6)


def test_check_spacing_returns_uniform_spacing_within_tolerance() -> None:
    assert check_spacing(np.array([0.0, 1.0, 2.05, 3.0])) == pytest.approx(1.0)
    assert check_spacing(np.array([10.0, 12.5, 15.0])) == pytest.approx(2.5)


def test_duplicate_positions_are_refused() -> None:
    with pytest.raises(IngestError) as err:
        check_spacing(np.array([0.0, 1.0, 1.0, 2.0]))
    assert err.value.reason is Reason.DUPLICATE_POSITIONS


def test_non_uniform_spacing_names_the_gaps() -> None:
    with pytest.raises(IngestError) as err:
        check_spacing(np.array([0.0, 1.0, 2.0, 4.0, 5.0]))  # a missing slice
    assert err.value.reason is Reason.NON_UNIFORM_SPACING
    assert "1.000" in err.value.detail and "2.000" in err.value.detail
    assert check_spacing(np.array([0.0, 1.0, 2.0, 4.0]), rel_tolerance=1.5) == pytest.approx(4 / 3)


def test_single_slice_takes_the_default_spacing() -> None:
    assert check_spacing(np.array([3.0]), default=1.25) == 1.25
    with pytest.raises(IngestError) as err:
        check_spacing(np.array([3.0]))
    assert err.value.reason is Reason.INCONSISTENT_GEOMETRY


def test_gantry_tilt_is_detected() -> None:
    iop = (1, 0, 0, 0, 1, 0)
    straight = np.array([(0.0, 0.0, 2.0 * k) for k in range(10)])
    assert gantry_tilt_deg(straight, iop) == pytest.approx(0.0, abs=1e-9)
    tilt = math.tan(math.radians(15.0))
    tilted = np.array([(0.0, 2.0 * k * tilt, 2.0 * k) for k in range(10)])
    assert gantry_tilt_deg(tilted, iop) == pytest.approx(15.0)
    assert gantry_tilt_deg(straight[:1], iop) == 0.0
    vol = to_canonical(
        np.zeros((10, 4, 4)),
        iop=iop,
        first_position=(0, 0, 0),
        pixel_spacing=(1, 1),
        slice_spacing=2.0,
        gantry_tilt=15.0,
    )
    assert vol.gantry_tilt_deg == 15.0


def test_to_canonical_refuses_bad_spacing_and_shape() -> None:
    iop = (1, 0, 0, 0, 1, 0)
    with pytest.raises(IngestError) as err:
        to_canonical(
            np.zeros((2, 3, 3)),
            iop=iop,
            first_position=(0, 0, 0),
            pixel_spacing=(0.0, 1.0),
            slice_spacing=1.0,
        )
    assert err.value.reason is Reason.INCONSISTENT_GEOMETRY
    with pytest.raises(IngestError) as err:
        to_canonical(
            np.zeros((3, 3)), iop=iop, first_position=(0, 0, 0), pixel_spacing=(1.0, 1.0), slice_spacing=1.0
        )
    assert err.value.reason is Reason.INCONSISTENT_GEOMETRY


# --- NIfTI --------------------------------------------------------------------------------------------

NIFTI_AFFINES = {
    "RAS": np.array([[0.9, 0, 0, -40.0], [0, 1.1, 0, -50.0], [0, 0, 2.0, 10.0], [0, 0, 0, 1]]),
    "LPS": np.array([[-0.9, 0, 0, 40.0], [0, -1.1, 0, 50.0], [0, 0, 2.0, -10.0], [0, 0, 0, 1]]),
    "LAS (FSL radiological)": np.array(
        [[-1.0, 0, 0, 90.0], [0, 1.0, 0, -126.0], [0, 0, 1.5, -72.0], [0, 0, 0, 1]]
    ),
    "coronal PIR": np.array([[0, 0, -0.7, 30.0], [-0.8, 0, 0, 20.0], [0, -3.0, 0, 60.0], [0, 0, 0, 1]]),
    "oblique": np.array(
        [
            [0.9 * math.cos(0.2), -1.1 * math.sin(0.2), 0, 5.0],
            [0.9 * math.sin(0.2), 1.1 * math.cos(0.2), 0, 6.0],
            [0, 0, 2.0, 7.0],
            [0, 0, 0, 1],
        ]
    ),
}


@pytest.mark.parametrize("name", sorted(NIFTI_AFFINES))
def test_nifti_matches_simpleitk_lps(name: str, tmp_path: Path) -> None:
    affine = NIFTI_AFFINES[name]
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)  # nibabel (i, j, k)
    path = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    img = nib.load(path)
    vol = from_nifti(np.asanyarray(img.dataobj), img.affine)
    ref = sitk.DICOMOrient(sitk.ReadImage(str(path)), "LPS")  # ITK reads NIfTI into LPS itself
    np.testing.assert_array_equal(vol.array, sitk.GetArrayFromImage(ref))
    assert np.allclose(vol.origin, ref.GetOrigin(), atol=1e-4)
    assert vol.spacing == pytest.approx(ref.GetSpacing()[::-1], abs=1e-5)
    assert vol.oblique_deg == pytest.approx(math.degrees(0.2) if name == "oblique" else 0.0, abs=1e-4)


def test_nifti_ras_hand_computed() -> None:
    data = np.zeros((3, 4, 5), dtype=np.float32)  # RAS affine: i -> Right, j -> Anterior, k -> Superior
    data[2, 0, 4] = 1.0  # most right (i=2), most posterior (j=0), most superior (k=4)
    vol = from_nifti(data, np.diag([1.0, 2.0, 3.0, 1.0]))
    # canonical x runs toward Left (reverses i), y toward Posterior (reverses j), z toward Superior (= k)
    assert vol.array.shape == (5, 4, 3)
    z, y, x = np.argwhere(vol.array == 1.0)[0]
    assert (z, y, x) == (4, 3, 0)
    assert vol.spacing == (3.0, 2.0, 1.0)
    # voxel [0,0,0] is i=2 (RAS x=2 -> LPS x=-2), j=3 (RAS y=6 -> LPS y=-6), k=0
    np.testing.assert_allclose(vol.origin, (-2.0, -6.0, 0.0))


def test_nifti_trailing_singleton_and_2d_are_volumes() -> None:
    assert from_nifti(np.zeros((4, 5, 6, 1)), np.eye(4)).array.shape == (6, 5, 4)
    assert from_nifti(np.zeros((4, 5)), np.eye(4)).array.shape == (1, 5, 4)


def test_nifti_4d_nan_and_degenerate_affine_are_refused() -> None:
    with pytest.raises(IngestError) as err:
        from_nifti(np.zeros((4, 5, 6, 2)), np.eye(4))
    assert err.value.reason is Reason.INCONSISTENT_GEOMETRY
    bad = np.zeros((4, 5, 6), dtype=np.float32)
    bad[1, 2, 3] = np.nan
    with pytest.raises(IngestError) as err:
        from_nifti(bad, np.eye(4))
    assert err.value.reason is Reason.NON_FINITE_VALUES
    for affine in (
        np.diag([1.0, 0.0, 1.0, 1.0]),
        np.array([[1.0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]),
    ):
        with pytest.raises(IngestError) as err:
            from_nifti(np.zeros((4, 5, 6)), affine)
        assert err.value.reason is Reason.INCONSISTENT_GEOMETRY


# --- planes ---------------------------------------------------------------------------------------------


def marker_volume(dtype: type = np.int16) -> Volume:
    """(z, y, x) = (10, 30, 40) at 2.5 x 0.8 x 0.6 mm, a blob near left-posterior-superior."""
    arr = np.zeros((10, 30, 40), dtype=dtype)
    arr[7:9, 22:26, 30:36] = 1000  # superior, posterior, left
    return Volume(array=arr, spacing=SPACING, origin=(0.0, 0.0, 0.0))


def blob_centre(image: np.ndarray) -> tuple[float, float]:
    rows, cols = np.nonzero(image > 500)
    return float(rows.mean()), float(cols.mean())


def test_axial_slices_are_pl() -> None:
    vol = marker_volume()
    slices = list(plane_slices(vol, "axial"))
    assert len(slices) == 10 and all(s.n_slices == 10 for s in slices)
    s = slices[7]
    assert s.index == 7 and s.image.shape == (30, 40) and s.pixel_spacing == (0.8, 0.6)
    np.testing.assert_array_equal(s.image, vol.array[7])
    row, col = blob_centre(s.image)
    assert row > 15 and col > 20  # posterior in the bottom rows, patient left in the right-hand columns


def test_coronal_slices_are_il_with_square_pixels() -> None:
    vol = marker_volume()
    slices = list(plane_slices(vol, "coronal"))
    assert len(slices) == 30
    s = slices[23]
    n_rows = round(10 * 2.5 / 0.6)
    assert s.image.shape == (n_rows, 40) and s.pixel_spacing == (0.6, 0.6) and s.image.dtype == np.int16
    row, col = blob_centre(s.image)
    assert row < n_rows / 4 and col > 20  # superior in the top rows, left on the right
    assert not slices[5].image.any()


def test_sagittal_slices_are_ip_with_square_pixels() -> None:
    vol = marker_volume(np.float32)
    slices = list(plane_slices(vol, "sagittal"))
    assert len(slices) == 40
    s = slices[32]
    n_rows = round(10 * 2.5 / 0.8)
    assert s.image.shape == (n_rows, 30) and s.pixel_spacing == (0.8, 0.8) and s.image.dtype == np.float32
    row, col = blob_centre(s.image)
    assert row < n_rows / 4 and col > 15  # superior at the top, posterior on the right


def test_reformat_interpolates_linearly_along_z() -> None:
    z = np.arange(6, dtype=np.float64)
    arr = np.broadcast_to((100.0 * z)[:, None, None], (6, 3, 4)).astype(np.int16)
    vol = Volume(array=arr, spacing=(2.0, 1.0, 0.5), origin=(0.0, 0.0, 0.0))
    image = next(iter(plane_slices(vol, "coronal"))).image
    assert image.shape == (24, 4)  # 6 slices x 2 mm / 0.5 mm
    # output row r (top = superior) samples source z = (23 - r + 0.5) * 0.25 - 0.5, clipped to [0, 5]
    src = np.clip((np.arange(24)[::-1] + 0.5) * 0.25 - 0.5, 0, 5)
    np.testing.assert_array_equal(image[:, 0], np.rint(100.0 * src).astype(np.int16))
    assert np.all(np.diff(image[:, 0].astype(int)) <= 0)  # decreasing downward: inferior is lower


def test_reformat_without_resampling_is_a_flip() -> None:
    arr = canonical_volume((4, 5, 6))
    vol = Volume(array=arr, spacing=(0.7, 0.7, 0.7), origin=(0.0, 0.0, 0.0))
    cor = list(plane_slices(vol, "coronal"))
    sag = list(plane_slices(vol, "sagittal"))
    np.testing.assert_array_equal(cor[2].image, arr[::-1, 2, :])
    np.testing.assert_array_equal(sag[3].image, arr[::-1, :, 3])


def test_integer_reformat_clips_to_dtype() -> None:
    arr = np.zeros((3, 2, 2), dtype=np.uint8)
    arr[1] = 255
    vol = Volume(array=arr, spacing=(3.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    image = next(iter(plane_slices(vol, "sagittal"))).image
    assert image.dtype == np.uint8 and image.max() == 255 and image.min() == 0


def test_unknown_plane_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="axial, coronal, sagittal"):
        next(iter(plane_slices(marker_volume(), "transverse")))  # type: ignore[arg-type]
