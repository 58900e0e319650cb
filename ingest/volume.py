"""Slice geometry: order DICOM slices, check spacing and tilt, reorient to one canonical volume, cut planes.

Canonical orientation (the contract every later stage relies on)
-----------------------------------------------------------------
A :class:`Volume` array is indexed ``(z, y, x)`` in DICOM patient coordinates (LPS, as ITK's "LPS"):

* ``x`` (axis 2) increases toward the patient's **Left**,
* ``y`` (axis 1) increases toward **Posterior**,
* ``z`` (axis 0) increases toward **Superior**.

``Volume.spacing`` is ``(z, y, x)`` in mm and ``Volume.origin`` is the LPS position (mm, ``(x, y, z)``
world order as in DICOM) of voxel ``[0, 0, 0]``. Acquisitions are brought to this orientation by
permuting and flipping array axes only (no resampling); an oblique acquisition goes to the nearest
canonical axes and reports the residual angle in ``Volume.oblique_deg``.

2D slices follow the released Curia-2 processor's naming (direction of increasing row, then column):

* axial "PL": ``array[k]`` -- rows run toward Posterior, columns toward patient Left, so a radiologist's
  view (patient's left on the image right, anterior at the top);
* coronal "IL": ``array[::-1, j, :]`` -- rows toward Inferior (superior at the top), columns toward Left;
* sagittal "IP": ``array[::-1, :, i]`` -- rows toward Inferior, columns toward Posterior.

Coronal and sagittal slices are resampled along ``z`` so their pixels are square.

DICOM geometry reminders used below (PS3.3 C.7.6.2): ImageOrientationPatient[0:3] is the LPS direction
of increasing column index (along a row), [3:6] the direction of increasing row index; PixelSpacing is
(row spacing, column spacing), i.e. (distance between rows, distance between columns).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from radforge.config import ConfigError
from radforge.ingest.errors import IngestError, Reason

Plane = Literal["axial", "coronal", "sagittal"]
PLANES: tuple[Plane, Plane, Plane] = ("axial", "coronal", "sagittal")  # by canonical normal axis 0, 1, 2

# |row . col| above this means ImageOrientationPatient is not orthogonal. DICOM writers store IOP with
# limited decimals (often 6, sometimes 4), so exact orthogonality cannot be demanded.
_ORTHOGONALITY_TOLERANCE = 1e-2
# Two slices closer than this along the normal are the same position (mm).
_DUPLICATE_DISTANCE_MM = 1e-3
# Three axis directions whose determinant is below this do not span 3D space.
_MIN_DIRECTION_DETERMINANT = 1e-3
# Patient axes (LPS world index) that canonical array axes 0, 1, 2 follow: z=S (2), y=P (1), x=L (0).
_WORLD_OF_CANONICAL_AXIS = (2, 1, 0)


@dataclass(frozen=True)
class Volume:
    """A 3D image in the canonical (z, y, x) = (Superior, Posterior, Left) orientation.

    ``array`` may be a view (possibly with negative strides) of the decoded stack: reorientation never
    copies voxels, so the common axial case costs nothing.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]  # (z, y, x) mm
    origin: tuple[float, float, float]  # LPS mm of voxel [0, 0, 0]
    gantry_tilt_deg: float = 0.0
    oblique_deg: float = 0.0  # largest angle between an acquisition axis and its canonical axis
    acquired_plane: Plane = "axial"  # the canonical plane the stored slices lie in (native plane)
    uniform_spacing: bool = True  # False: gaps or uneven increments; ``spacing`` then holds the median gap


@dataclass(frozen=True)
class PlaneSlice:
    """One 2D slice of a volume in a named plane (see the module docstring for the conventions)."""

    index: int  # position along the plane's normal axis in the canonical array
    image: np.ndarray  # 2D, the volume's dtype
    pixel_spacing: tuple[float, float]  # (row, column) mm
    n_slices: int  # number of slices of this plane in the volume


def slice_normal(iop: Sequence[float]) -> np.ndarray:
    """Return the unit normal ``row_dir x col_dir`` of an ImageOrientationPatient (6 floats).

    Slices are ordered along this normal, so a degenerate orientation (wrong length, zero-length or
    non-orthogonal direction cosines, non-finite values) is refused with ``INCONSISTENT_GEOMETRY``.
    """
    row, col = _direction_cosines(iop)
    normal = np.cross(row, col)
    return normal / np.linalg.norm(normal)


def order_slices(positions: Sequence[Sequence[float]], iop: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Sort slices by ImagePositionPatient projected on the slice normal.

    Returns ``(order, distances)``: indices that sort the input slices (stable for ties) and the
    sorted projected distances in mm. File names and InstanceNumber are never used: both are often
    wrong or reversed in real archives, the position is what the scanner measured.
    """
    normal = slice_normal(iop)
    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 3 or pos.shape[0] == 0:
        raise IngestError(Reason.INCONSISTENT_GEOMETRY, f"expected N x 3 slice positions, got {pos.shape}")
    if not np.isfinite(pos).all():
        raise IngestError(Reason.INCONSISTENT_GEOMETRY, "slice positions contain non-finite values")
    distances = pos @ normal
    order = np.argsort(distances, kind="stable")
    return order, distances[order]


def check_spacing(
    distances: np.ndarray, *, rel_tolerance: float = 0.1, default: float | None = None
) -> float:
    """Return the uniform slice spacing (mm) of sorted projected slice distances.

    A volume is only valid if its slices are evenly spaced: refuses coinciding slices
    (``DUPLICATE_POSITIONS``, e.g. two series merged or a file copied under another UID) and gaps that
    differ by more than ``rel_tolerance`` of the median gap (``NON_UNIFORM_SPACING``, e.g. missing
    slices). A single slice has no gap: ``default`` (the caller's SliceThickness) is returned, and
    ``INCONSISTENT_GEOMETRY`` is raised when there is none.
    """
    d = np.sort(np.asarray(distances, dtype=np.float64).ravel())
    if d.size == 0:
        raise IngestError(Reason.INCONSISTENT_GEOMETRY, "no slices")
    if d.size == 1:
        if default is None or not math.isfinite(default) or default <= 0:
            raise IngestError(Reason.INCONSISTENT_GEOMETRY, "single slice without a usable slice thickness")
        return float(default)
    gaps = np.diff(d)
    n_dup = int(np.count_nonzero(gaps < _DUPLICATE_DISTANCE_MM))
    if n_dup:
        raise IngestError(Reason.DUPLICATE_POSITIONS, f"{n_dup} of {d.size} slices share a position")
    lo, hi, mid = float(gaps.min()), float(gaps.max()), float(np.median(gaps))
    if hi - lo > rel_tolerance * mid:
        raise IngestError(
            Reason.NON_UNIFORM_SPACING,
            f"slice gaps range from {lo:.3f} to {hi:.3f} mm (tolerance {rel_tolerance:.0%} of {mid:.3f} mm)",
        )
    return float((d[-1] - d[0]) / (d.size - 1))


def slice_spacing(
    distances: np.ndarray, *, rel_tolerance: float = 0.1, default: float | None = None
) -> tuple[float, bool]:
    """``(spacing, uniform)`` of sorted projected slice distances: uneven gaps do not refuse the series.

    As :func:`check_spacing`, but a missing slice or a variable increment only marks the spacing as
    not uniform (``spacing`` is then the median gap): every native-plane slice is still a perfect
    image, only reformats need uniform spacing. Coinciding slices still raise ``DUPLICATE_POSITIONS``.
    """
    try:
        return check_spacing(distances, rel_tolerance=rel_tolerance, default=default), True
    except IngestError as e:
        if e.reason is not Reason.NON_UNIFORM_SPACING:
            raise
    return float(np.median(np.diff(np.sort(np.asarray(distances, dtype=np.float64).ravel())))), False


def gantry_tilt_deg(positions_sorted: np.ndarray, iop: Sequence[float]) -> float:
    """Angle (degrees) between the slice-stacking direction and the slice normal.

    Zero for an ordinary series; a CT acquired with a tilted gantry stacks its slices along a direction
    that is not the normal, so its voxels are sheared. The stacking direction is first-to-last slice.
    """
    pos = np.asarray(positions_sorted, dtype=np.float64).reshape(-1, 3)
    if pos.shape[0] < 2:
        return 0.0
    stack = pos[-1] - pos[0]
    length = float(np.linalg.norm(stack))
    if length < _DUPLICATE_DISTANCE_MM:
        return 0.0
    cos = abs(float(stack @ slice_normal(iop))) / length
    return math.degrees(math.acos(min(1.0, cos)))


def to_canonical(
    stack: np.ndarray,
    *,
    iop: Sequence[float],
    first_position: Sequence[float],
    pixel_spacing: tuple[float, float],
    slice_spacing: float,
    gantry_tilt: float = 0.0,
) -> Volume:
    """Reorient a sorted DICOM stack ``(k, rows, cols)`` to the canonical volume.

    ``stack[0]`` is the slice at the smallest distance along :func:`slice_normal`, at
    ``first_position`` (its ImagePositionPatient). Axes are permuted and flipped to the nearest
    canonical axes (no resampling, so no interpolation blur and no cost for the usual axial series);
    spacing and origin follow the flips. ``gantry_tilt`` (degrees, from :func:`gantry_tilt_deg`) is
    recorded on the volume.
    """
    arr = np.asarray(stack)
    if arr.ndim != 3:
        raise IngestError(Reason.INCONSISTENT_GEOMETRY, f"expected a 3D slice stack, got {arr.ndim}D")
    row, col = _direction_cosines(iop)
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    spacings = (float(slice_spacing), float(pixel_spacing[0]), float(pixel_spacing[1]))
    if not all(math.isfinite(s) and s > 0 for s in spacings):
        raise IngestError(Reason.INCONSISTENT_GEOMETRY, "pixel or slice spacing is not a positive number")
    # Array axis 0 steps along the normal, axis 1 (row index) along IOP[3:6], axis 2 (column) along IOP[0:3].
    directions = np.stack([normal, col, row], axis=1)
    return _reorient(
        arr,
        directions=directions,
        spacing=spacings,
        first_position=_position(first_position),
        gantry_tilt=gantry_tilt,
        stack_axis=0,
    )


def from_nifti(data: np.ndarray, affine: np.ndarray) -> Volume:
    """Canonical volume from NIfTI data (nibabel ``i, j, k`` indexing) and its RAS+ affine.

    NIfTI world coordinates are RAS+ (x toward patient Right, y Anterior, z Superior), so the affine is
    converted to LPS by negating its first two rows, then handled like a DICOM stack. Trailing length-1
    dimensions are dropped and a 2D image is one slice; a real 4D series is refused
    (``INCONSISTENT_GEOMETRY``), as are non-finite voxels (``NON_FINITE_VALUES``) and affines whose
    axes are zero-length, non-finite or do not span 3D space.
    """
    arr = np.asanyarray(data)
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = arr[..., np.newaxis]
    if arr.ndim != 3:
        raise IngestError(Reason.INCONSISTENT_GEOMETRY, f"NIfTI image is {arr.ndim}D with shape {arr.shape}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise IngestError(Reason.NON_FINITE_VALUES, "NIfTI image contains NaN or infinite voxels")
    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape not in ((4, 4), (3, 4)) or not np.isfinite(aff).all():
        raise IngestError(Reason.INCONSISTENT_GEOMETRY, "NIfTI affine is not a finite 4x4 matrix")
    ras_to_lps = np.diag([-1.0, -1.0, 1.0])
    axes = ras_to_lps @ aff[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    if not (spacing > 1e-6).all():
        raise IngestError(Reason.INCONSISTENT_GEOMETRY, "NIfTI affine has a zero-length axis")
    return _reorient(
        arr,
        directions=axes / spacing,
        spacing=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
        first_position=ras_to_lps @ aff[:3, 3],
        gantry_tilt=0.0,
        stack_axis=2,  # NIfTI's k: the slice axis of the acquisition it was converted from
    )


def plane_slices(vol: Volume, plane: Plane) -> Iterator[PlaneSlice]:
    """Yield every 2D slice of ``vol`` in ``plane``, in the Curia-2 conventions of the module docstring.

    Axial slices are the stored ones. Coronal and sagittal slices are linearly resampled along ``z``
    to the plane's column spacing, so pixels are square (the row count changes by
    ``spacing_z / spacing_column``); integer images are rounded and clipped back to their dtype.
    """
    arr = vol.array
    sz, sy, sx = vol.spacing
    if plane == "axial":
        n = arr.shape[0]
        for k in range(n):
            yield PlaneSlice(index=k, image=np.ascontiguousarray(arr[k]), pixel_spacing=(sy, sx), n_slices=n)
        return
    if plane == "coronal":
        axis, col_spacing = 1, sx
    elif plane == "sagittal":
        axis, col_spacing = 2, sy
    else:
        raise ConfigError(f"unknown plane {plane!r}; valid planes: axial, coronal, sagittal")
    resample = _z_resampler(arr.shape[0], z_spacing=sz, target=col_spacing)
    n = arr.shape[axis]
    for j in range(n):
        sub = arr[:, j, :] if axis == 1 else arr[:, :, j]  # (z, columns), z ascending = inferior first
        yield PlaneSlice(index=j, image=resample(sub), pixel_spacing=(col_spacing, col_spacing), n_slices=n)


def _direction_cosines(iop: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Return the validated, normalised (row direction, column direction) of an orientation."""
    v = np.asarray(iop, dtype=np.float64).ravel()
    if v.size != 6 or not np.isfinite(v).all():
        raise IngestError(Reason.INCONSISTENT_GEOMETRY, "orientation must be 6 finite direction cosines")
    row, col = v[:3], v[3:]
    n_row, n_col = float(np.linalg.norm(row)), float(np.linalg.norm(col))
    if n_row < 0.5 or n_col < 0.5 or abs(n_row - 1) > 0.1 or abs(n_col - 1) > 0.1:
        raise IngestError(Reason.INCONSISTENT_GEOMETRY, "orientation direction cosines are not unit vectors")
    row, col = row / n_row, col / n_col
    if abs(float(row @ col)) > _ORTHOGONALITY_TOLERANCE:
        raise IngestError(Reason.INCONSISTENT_GEOMETRY, "orientation row and column are not orthogonal")
    return row, col


def _position(first_position: Sequence[float]) -> np.ndarray:
    p = np.asarray(first_position, dtype=np.float64).ravel()
    if p.size != 3 or not np.isfinite(p).all():
        raise IngestError(Reason.INCONSISTENT_GEOMETRY, "slice position must be 3 finite numbers")
    return p


def _reorient(
    arr: np.ndarray,
    *,
    directions: np.ndarray,
    spacing: tuple[float, float, float],
    first_position: np.ndarray,
    gantry_tilt: float,
    stack_axis: int,
) -> Volume:
    """Permute/flip ``arr`` so its axes follow (S, P, L); ``directions[:, a]`` is axis a's LPS unit vector.

    ``stack_axis`` is the array axis slices were acquired along: its canonical axis names the
    acquired plane (canonical axis 0 axial, 1 coronal, 2 sagittal).
    """
    if abs(float(np.linalg.det(directions))) < _MIN_DIRECTION_DETERMINANT:
        raise IngestError(Reason.INCONSISTENT_GEOMETRY, "volume axes do not span 3D space")
    cosines = np.abs(directions)
    # world_of[a]: the patient axis (0=L, 1=P, 2=S) array axis a is assigned to; best total alignment.
    world_of = max(itertools.permutations(range(3)), key=lambda p: sum(cosines[p[a], a] for a in range(3)))
    oblique = max(math.degrees(math.acos(min(1.0, float(cosines[world_of[a], a])))) for a in range(3))
    source_of = [world_of.index(w) for w in _WORLD_OF_CANONICAL_AXIS]  # array axis for canonical z, y, x
    out = np.transpose(arr, source_of)
    corner = np.zeros(3)  # index, in source axes, of the voxel that becomes canonical [0, 0, 0]
    flips: list[slice] = []
    for a, w in zip(source_of, _WORLD_OF_CANONICAL_AXIS, strict=True):
        if directions[w, a] < 0:
            corner[a] = arr.shape[a] - 1
            flips.append(slice(None, None, -1))
        else:
            flips.append(slice(None))
    out = out[tuple(flips)]
    origin = first_position + directions @ (corner * np.asarray(spacing))
    return Volume(
        array=out,
        spacing=(spacing[source_of[0]], spacing[source_of[1]], spacing[source_of[2]]),
        origin=(float(origin[0]), float(origin[1]), float(origin[2])),
        gantry_tilt_deg=float(gantry_tilt),
        oblique_deg=oblique,
        acquired_plane=PLANES[source_of.index(stack_axis)],
    )


def _z_resampler(n_z: int, *, z_spacing: float, target: float) -> Callable[[np.ndarray], np.ndarray]:
    """Build a function mapping a ``(z, columns)`` slab to superior-first rows at ``target`` mm spacing.

    Output row centres sit at ``target`` mm steps over the same extent (voxel-centre alignment), so the
    reported spacing is exact; the source positions and weights are computed once per volume.
    """
    if math.isclose(z_spacing, target, rel_tol=1e-6):

        def flip_only(sub: np.ndarray) -> np.ndarray:
            return np.ascontiguousarray(sub[::-1])

        return flip_only
    n_out = max(1, round(n_z * z_spacing / target))
    centres = (np.arange(n_out)[::-1] + 0.5) * (target / z_spacing) - 0.5  # superior row first
    centres = np.clip(centres, 0.0, n_z - 1)
    lo = np.floor(centres).astype(np.intp)
    hi = np.minimum(lo + 1, n_z - 1)
    w_hi = (centres - lo).astype(np.float32)[:, np.newaxis]
    w_lo = np.float32(1.0) - w_hi

    def resample(sub: np.ndarray) -> np.ndarray:
        # float32 is exact for 16-bit data; wider types keep float64 precision.
        work = np.float32 if sub.dtype.itemsize <= 2 or sub.dtype == np.float32 else np.float64
        src = sub.astype(work, copy=False)
        out = src[lo] * w_lo.astype(work) + src[hi] * w_hi.astype(work)
        if sub.dtype.kind in "iu":
            info = np.iinfo(sub.dtype)
            np.rint(out, out=out)
            np.clip(out, info.min, info.max, out=out)
        return out.astype(sub.dtype, copy=False)

    return resample
