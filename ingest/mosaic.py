"""Siemens MOSAIC images: one image that tiles the slices of a volume, turned back into its slices.

fMRI and diffusion series from Siemens scanners store each volume as one image: ``n`` slices of
``tile_rows x tile_cols`` laid out row by row on a square grid of ``ceil(sqrt(n))`` tiles a side
(unused tiles are zero). Written as-is, such an image is a grid of slices: corrupt training data.

* Detection: ImageType contains ``MOSAIC``.
* Slice count: the CSA Image Header's ``NumberOfImagesInMosaic``; without a CSA header, the tile
  size from the Acquisition Matrix (frequency rows or phase rows x frequency columns or phase
  columns), every tile of the grid counted and trailing all-zero tiles (padding) dropped. When
  neither establishes a layout that tiles the image, the series is skipped: ``mosaic_undecodable``.
* Positions: the mosaic's ImagePositionPatient is the top-left of the whole tiled image placed so
  that its centre is the slice's centre; the first slice's top-left is
  ``IPP + row_dir * col_spacing * (C - c) / 2 + col_dir * row_spacing * (R - r) / 2`` (``R x C`` the
  mosaic, ``r x c`` a tile; as dcm2niix and nibabel), and slice ``k`` lies ``k * spacing`` along the
  CSA ``SliceNormalVector`` (else the orientation's normal), ``spacing`` SpacingBetweenSlices (else
  SliceThickness).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from radforge.ingest.errors import IngestError, Reason

MOSAIC_TYPE = "MOSAIC"


@dataclass(frozen=True)
class MosaicLayout:
    """How one series' mosaic images tile their slices (crosses Ray inside a plan, as a dict)."""

    n_slices: int  # slices per mosaic (an upper bound when trim_padding)
    tile_rows: int
    tile_cols: int
    grid: int  # tiles per side of the square grid
    spacing: float  # mm between slices
    normal: tuple[float, float, float] | None  # CSA SliceNormalVector, None: the orientation's normal
    trim_padding: bool = False  # counted from the acquisition matrix: trailing all-zero tiles are padding

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MosaicLayout:
        normal = data.get("normal")
        return cls(**{**data, "normal": tuple(normal) if normal is not None else None})


def is_mosaic(image_type: Sequence[str]) -> bool:
    """Whether ImageType marks a Siemens MOSAIC image."""
    return MOSAIC_TYPE in image_type


def mosaic_layout(
    *,
    rows: int | None,
    cols: int | None,
    csa_count: int | None,
    acquisition_matrix: Sequence[int] | None,
    spacing: float | None,
    normal: Sequence[float] | None,
) -> MosaicLayout:
    """Establish the layout of a mosaic series, or raise ``IngestError(MOSAIC_UNDECODABLE)`` saying why."""
    if not rows or not cols:
        raise IngestError(Reason.MOSAIC_UNDECODABLE, "mosaic without Rows/Columns")
    if spacing is None or not spacing > 0:
        raise IngestError(
            Reason.MOSAIC_UNDECODABLE, "mosaic without SpacingBetweenSlices or SliceThickness: no positions"
        )
    unit = _unit(normal)
    if csa_count is not None:
        grid = math.ceil(math.sqrt(csa_count))
        if rows % grid or cols % grid:
            raise IngestError(
                Reason.MOSAIC_UNDECODABLE,
                f"NumberOfImagesInMosaic {csa_count} does not tile a {rows}x{cols} image",
            )
        return MosaicLayout(csa_count, rows // grid, cols // grid, grid, spacing, unit)
    if acquisition_matrix is None or len(acquisition_matrix) != 4:
        raise IngestError(
            Reason.MOSAIC_UNDECODABLE, "mosaic without a CSA header or an Acquisition Matrix (0018,1310)"
        )
    freq_rows, freq_cols, phase_rows, phase_cols = (int(v) for v in acquisition_matrix)
    tile_rows, tile_cols = freq_rows or phase_rows, freq_cols or phase_cols
    if (
        tile_rows < 1
        or tile_cols < 1
        or rows % tile_rows
        or cols % tile_cols
        or rows // tile_rows != cols // tile_cols
        or rows // tile_rows < 2
    ):
        raise IngestError(
            Reason.MOSAIC_UNDECODABLE,
            f"no CSA header, and the acquisition matrix {tile_rows}x{tile_cols} does not tile "
            f"a {rows}x{cols} mosaic on a square grid",
        )
    grid = rows // tile_rows
    return MosaicLayout(grid * grid, tile_rows, tile_cols, grid, spacing, unit, trim_padding=True)


def _unit(normal: Sequence[float] | None) -> tuple[float, float, float] | None:
    if normal is None:
        return None
    v = np.asarray(normal, dtype=np.float64)
    length = float(np.linalg.norm(v))
    if v.shape != (3,) or not np.isfinite(v).all() or length < 0.5:
        return None
    v /= length
    return (float(v[0]), float(v[1]), float(v[2]))


def demosaic(image: np.ndarray, layout: MosaicLayout) -> np.ndarray:
    """Cut one mosaic image ``(R, C)`` into its slices ``(n, tile_rows, tile_cols)``, in tile order.

    Trailing all-zero tiles are dropped when the count came from the acquisition matrix (padding).
    """
    g, tr, tc = layout.grid, layout.tile_rows, layout.tile_cols
    if image.shape != (g * tr, g * tc):
        raise IngestError(
            Reason.INCONSISTENT_GEOMETRY,
            f"mosaic image is {image.shape[0]}x{image.shape[1]}, its layout says {g * tr}x{g * tc}",
        )
    tiles = image.reshape(g, tr, g, tc).swapaxes(1, 2).reshape(g * g, tr, tc)[: layout.n_slices]
    if layout.trim_padding:
        used = np.flatnonzero(tiles.reshape(len(tiles), -1).any(axis=1))
        tiles = tiles[: int(used[-1]) + 1 if used.size else 1]
    return np.ascontiguousarray(tiles)


def slice_positions(
    *,
    ipp: Sequence[float],
    iop: Sequence[float],
    pixel_spacing: Sequence[float],
    mosaic_shape: tuple[int, int],
    layout: MosaicLayout,
    n_slices: int,
) -> np.ndarray:
    """ImagePositionPatient ``(n_slices, 3)`` of each slice of a mosaic (see the module docstring)."""
    row_dir, col_dir = np.asarray(iop[:3], dtype=np.float64), np.asarray(iop[3:6], dtype=np.float64)
    row_spacing, col_spacing = float(pixel_spacing[0]), float(pixel_spacing[1])
    first = (
        np.asarray(ipp, dtype=np.float64)
        + row_dir * col_spacing * (mosaic_shape[1] - layout.tile_cols) / 2
        + col_dir * row_spacing * (mosaic_shape[0] - layout.tile_rows) / 2
    )
    normal = np.asarray(layout.normal) if layout.normal is not None else np.cross(row_dir, col_dir)
    normal = normal / np.linalg.norm(normal)
    return first + np.arange(n_slices)[:, np.newaxis] * layout.spacing * normal
