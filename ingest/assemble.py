"""Assembly: a planned series' objects -> one canonical :class:`~radforge.ingest.volume.Volume`.

Slices are ordered by their position projected on the slice normal (never by file name or
InstanceNumber), spacing uniformity and duplicate positions are checked, and the stack is
reoriented to the canonical LPS orientation. Size limits are enforced from the headers before
any pixel buffer is allocated.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from radforge.ingest.config import GeometryConfig
from radforge.ingest.dicom import Frames, decode_instance
from radforge.ingest.errors import IngestError, Reason
from radforge.ingest.mosaic import MosaicLayout, demosaic, slice_positions
from radforge.ingest.series import SeriesPlan
from radforge.ingest.volume import (
    Volume,
    from_nifti,
    gantry_tilt_deg,
    order_slices,
    slice_spacing,
    to_canonical,
)
from radforge.windowing import hu_to_int16

Reader = Callable[[str], bytes]
_AXIAL_IOP = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
# Raw CT storage range: below air folds into air (scanner padding -2000/-3024), as Curia-2 clips.
HU_MIN, HU_MAX = -1024, 32767
_IOP_TOLERANCE = 1e-3
# A NIfTI volume is taken as CT (HU) when at least this share of voxels is air (<= -900 HU).
_CT_AIR_HU = -900.0
_CT_AIR_SHARE = 0.1


def _check_size(rows: int | None, cols: int | None, n_slices: int, geometry: GeometryConfig) -> None:
    if rows is not None and cols is not None and rows * cols > geometry.max_pixels_per_slice:
        raise IngestError(
            Reason.ABSURD_DIMENSIONS,
            f"header claims {rows}x{cols} pixels per slice (limit {geometry.max_pixels_per_slice})",
        )
    if n_slices > geometry.max_slices:
        raise IngestError(
            Reason.ABSURD_DIMENSIONS, f"{n_slices} slices in one series (limit {geometry.max_slices})"
        )


def _demosaic(
    pixels: np.ndarray, ipp: list[float] | None, iop: list[float] | None, frames: Frames, plan: SeriesPlan
) -> tuple[np.ndarray, np.ndarray]:
    """The slices of one MOSAIC image and their positions (see :mod:`radforge.ingest.mosaic`)."""
    layout = MosaicLayout.from_dict(plan.mosaic or {})
    if pixels.shape[0] != 1:
        raise IngestError(Reason.MOSAIC_UNDECODABLE, f"mosaic instance with {pixels.shape[0]} frames")
    position = ipp if ipp is not None else (frames.positions[0] if frames.positions is not None else None)
    orientation = iop if iop is not None else frames.orientation
    spacing = plan.pixel_spacing or (list(frames.pixel_spacing) if frames.pixel_spacing else None)
    if position is None or orientation is None or spacing is None:
        raise IngestError(
            Reason.MOSAIC_UNDECODABLE,
            "mosaic without ImagePositionPatient/ImageOrientationPatient/PixelSpacing: no slice positions",
        )
    tiles = demosaic(pixels[0], layout)
    tile_positions = slice_positions(
        ipp=position,
        iop=orientation,
        pixel_spacing=spacing,
        mosaic_shape=(pixels.shape[1], pixels.shape[2]),
        layout=layout,
        n_slices=len(tiles),
    )
    return tiles, tile_positions


def load_dicom_volume(plan: SeriesPlan, read: Reader, *, geometry: GeometryConfig) -> Volume:
    """Decode, order, check and reorient the instances of ``plan`` into a canonical volume."""
    n_frames = sum(max(i.frames, 1) for i in plan.instances)
    _check_size(plan.rows, plan.cols, n_frames, geometry)
    is_ct = plan.modality == "CT"
    images: list[np.ndarray] = []
    positions: list[list[float] | None] = []
    orientations: list[tuple[float, ...] | None] = []
    spacing = plan.pixel_spacing
    thickness = plan.slice_thickness
    for inst in plan.instances:
        frames = decode_instance(
            read(inst.path),
            max_pixels=geometry.max_pixels_per_slice,
            integer_ok=is_ct,
            int16_range=(HU_MIN, HU_MAX) if is_ct else None,
        )
        pix = frames.pixels
        _check_size(None, None, len(images) + pix.shape[0], geometry)
        if plan.mosaic is not None:  # one image tiling a whole volume: cut it into its slices
            tiles, tile_positions = _demosaic(pix, inst.ipp, inst.iop, frames, plan)
            images.extend(tiles)
            positions.extend(p.tolist() for p in tile_positions)
            orientations.extend([tuple(inst.iop) if inst.iop else frames.orientation] * len(tiles))
        elif pix.shape[0] == 1:
            images.append(pix[0])
            first = (
                inst.ipp
                if inst.ipp is not None
                else (list(frames.positions[0]) if frames.positions is not None else None)
            )
            positions.append(first)
            orientations.append(tuple(inst.iop) if inst.iop else frames.orientation)
        else:
            for k in inst.frame_indices if inst.frame_indices is not None else range(pix.shape[0]):
                images.append(pix[k])
                positions.append(list(frames.positions[k]) if frames.positions is not None else None)
                orientations.append(frames.orientation or (tuple(inst.iop) if inst.iop else None))
        spacing = spacing or (list(frames.pixel_spacing) if frames.pixel_spacing else None)
        thickness = thickness or frames.slice_thickness
    if len({im.shape for im in images}) != 1:
        raise IngestError(Reason.INCONSISTENT_GEOMETRY, "slices of one series differ in size")
    if len(images) == 1 and (positions[0] is None or orientations[0] is None):
        # A lone slice without geometry (common in secondary exports) is still a valid axial image.
        positions, orientations = [[0.0, 0.0, 0.0]], [_AXIAL_IOP]
    if any(p is None for p in positions) or any(o is None for o in orientations):
        raise IngestError(
            Reason.INCONSISTENT_GEOMETRY,
            "ImagePositionPatient/ImageOrientationPatient missing on some slices",
        )
    iop_arr = np.asarray(orientations[0], dtype=float)
    if any(np.abs(np.asarray(o, dtype=float) - iop_arr).max() > _IOP_TOLERANCE for o in orientations):
        raise IngestError(Reason.INCONSISTENT_GEOMETRY, "slices of one series differ in orientation")
    iop = [float(v) for v in iop_arr]
    pos = np.asarray(positions, dtype=float)
    order, distances = order_slices(pos.tolist(), iop)
    spacing_z, uniform = slice_spacing(
        distances, rel_tolerance=geometry.spacing_tolerance, default=thickness or 1.0
    )
    tilt = gantry_tilt_deg(pos[order], iop)
    if is_ct:  # straight into int16 HU, one slice at a time (no float or int32 copy of the volume)
        stack = np.empty((len(order), *images[0].shape), dtype=np.int16)
        for k, i in enumerate(order):
            if images[i].dtype == np.int16:  # already inside (HU_MIN, HU_MAX): see int16_range
                stack[k] = images[i]
            elif images[i].dtype.kind in "iu":  # exact integer HU: clip and narrow in one pass
                np.clip(images[i], HU_MIN, HU_MAX, out=stack[k], casting="unsafe")
            else:
                stack[k] = hu_to_int16(images[i], clip_min=HU_MIN, clip_max=HU_MAX)
    else:
        stack = np.stack([images[i] for i in order]).astype(np.float32, copy=False)
    row_col = (float(spacing[0]), float(spacing[1])) if spacing else (1.0, 1.0)
    vol = to_canonical(
        stack,
        iop=iop,
        first_position=pos[order[0]].tolist(),
        pixel_spacing=row_col,
        slice_spacing=spacing_z,
    )
    return replace(vol, gantry_tilt_deg=tilt, uniform_spacing=uniform)


def load_nifti_volume(path: str, read: Reader, *, geometry: GeometryConfig) -> tuple[Volume, str]:
    """Load a NIfTI object into a canonical volume; returns it with the modality guessed from values."""
    import nibabel as nib

    data = read(path)
    try:
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        img = nib.Nifti1Image.from_stream(io.BytesIO(data))
    except Exception as e:
        raise IngestError(Reason.UNREADABLE, f"not a readable NIfTI-1 object ({type(e).__name__})") from None
    shape = img.header.get_data_shape()
    if len(shape) >= 2:
        _check_size(int(shape[0]), int(shape[1]), int(shape[2]) if len(shape) > 2 else 1, geometry)
    arr = np.asanyarray(img.dataobj)
    vol = from_nifti(arr, img.affine)
    modality = "CT" if float(np.mean(vol.array <= _CT_AIR_HU)) >= _CT_AIR_SHARE else "MR"
    if modality == "CT":
        vol = replace(vol, array=hu_to_int16(vol.array))
    else:
        vol = replace(vol, array=vol.array.astype(np.float32, copy=False))
    return vol, modality
