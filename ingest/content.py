"""Where the anatomy is in a slice: body mask, per-patch foreground map, body box, foreground fraction.

The trainer places crops and iBOT masks on anatomy (Curia-2's content-aware cropping and anatomically
guided masking) and ingest drops slices that are mostly air, so every slice carries a coarse
foreground map (one uint8 per ``patch`` x ``patch`` pixels, 0 = air, 255 = all body) and the body box.

How the body mask is found (CT on HU, MR on raw intensities):

1. Threshold every pixel: CT ``HU > hu_threshold`` (-500 by default: between air and fat); MR at an
   Otsu threshold computed from a histogram of a strided sample of the slice.
2. Reduce to a grid of ``cell`` x ``cell`` pixel cells (8 px by default): a cell is body when at least
   half its pixels passed. Everything below happens on this grid (64 x 64 for 512 x 512), which is what
   makes the whole analysis cost ~0.2 ms per slice (bench/content.py); the mask is blocky at ``cell``
   pixels, finer than the 16-pixel patch map it feeds.
3. Fill holes: background regions not connected to the image border (4-connectivity) become body, so
   lungs, bowel gas and sinuses count as anatomy.
4. Drop components (8-connectivity) smaller than ``min_component_fraction`` of the largest (noise
   specks, cables) or thin, at most 2 cells thick (the patient table seen edge-on); the largest
   component always stays. A table touching the body, or thicker than 2 cells, stays.

The full-resolution mask (:func:`foreground_mask`) is this grid repeated back to pixels;
:func:`analyse` computes the same patch map and box straight from the grid, without the upsampling.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from radforge.config import ConfigError

# Largest grid cell (px). 8 keeps a 16-px patch map at quarter-patch resolution while the two
# connected-component passes run on 64 x 64 cells (4-px cells: 128 x 128, ~1.5x the total cost).
MAX_CELL = 8
MIN_COMPONENT_FRACTION = 0.05  # components below 5% of the largest are specks, not anatomy
_OTSU_BINS = 256
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
_FOUR_CONNECTED = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)  # scipy rebuilds it per call
_BYTE_LANES: dict[int, tuple[type[np.unsignedinteger], np.unsignedinteger]] = {
    2: (np.uint16, np.uint16(0x0101)),
    4: (np.uint32, np.uint32(0x01010101)),
    8: (np.uint64, np.uint64(0x0101010101010101)),
}
_MODALITIES = ("CT", "MR")


@dataclass(frozen=True)
class Content:
    """Content summary stored with a slice (see the module docstring)."""

    fg: np.ndarray  # uint8 (ceil(H/patch), ceil(W/patch)): body fraction per patch, 0..255
    box: tuple[int, int, int, int] | None  # (row0, col0, row1, col1) half-open pixel box, None if empty
    fraction: float  # mean of fg / 255: share of the slice that is body


def foreground_mask(
    image: np.ndarray,
    *,
    modality: str,
    hu_threshold: float = -500.0,
    cell: int = MAX_CELL,
    min_component_fraction: float = MIN_COMPONENT_FRACTION,
    mr_threshold: float | None = None,
) -> np.ndarray:
    """Bool body mask of a 2D CT (HU) or MR slice, computed on ``cell``-pixel cells (module docstring).

    Lungs and other air inside the body count as body; the table and specks outside it do not.
    """
    grid, _ = _body_grid(
        image,
        modality=modality,
        hu_threshold=hu_threshold,
        cell=cell,
        min_fraction=min_component_fraction,
        mr_threshold=mr_threshold,
    )
    height, width = image.shape
    return np.repeat(np.repeat(grid, cell, axis=0), cell, axis=1)[:height, :width]


def patch_foreground(mask: np.ndarray, *, patch: int = 16) -> np.ndarray:
    """Per-patch body fraction of a bool mask as uint8 ``(ceil(H/patch), ceil(W/patch))``, 0..255.

    Each value is ``round(255 * body_pixels / patch**2)`` (half up); pixels of edge patches that fall
    outside the image count as background.
    """
    _check_patch(patch)
    return _scale_counts(_count_blocks(np.asarray(mask, dtype=bool), patch), patch)


def body_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Return the half-open pixel box ``(row0, col0, row1, col1)`` holding the mask, None if it is empty."""
    (rows,) = np.logical_or.reduce(mask, axis=1).nonzero()  # ufuncs directly: called twice per slice
    if rows.size == 0:
        return None
    (cols,) = np.logical_or.reduce(mask, axis=0).nonzero()
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def foreground_fraction(fg: np.ndarray) -> float:
    """Share of the slice that is body: the mean of a patch map divided by 255 (0.0 for an empty map)."""
    return float(fg.mean()) / 255.0 if fg.size else 0.0


def analyse(
    image: np.ndarray,
    *,
    modality: str,
    patch: int = 16,
    hu_threshold: float = -500.0,
    mr_threshold: float | None = None,
) -> Content:
    """Patch map, body box and foreground fraction of a 2D slice in one pass (~0.2 ms at 512 x 512).

    MR: pass ``mr_threshold`` from :func:`mr_body_threshold` of the whole volume. A per-slice
    threshold (the fallback) cannot tell an air-only slice at the end of a scan from anatomy.

    Equal to ``patch_foreground(foreground_mask(image, cell=c), patch=patch)`` and ``body_box`` of the
    same mask, where ``c`` is the largest divisor of ``patch`` not above :data:`MAX_CELL` (8 for 16-px
    patches, 7 for 14-px ones), but computed on the cell grid without building the pixel mask.
    """
    _check_patch(patch)
    cell = max(c for c in range(1, MAX_CELL + 1) if patch % c == 0)
    grid, cells_box = _body_grid(
        image,
        modality=modality,
        hu_threshold=hu_threshold,
        cell=cell,
        min_fraction=MIN_COMPONENT_FRACTION,
        mr_threshold=mr_threshold,
    )
    height, width = image.shape
    if cells_box is None:  # air-only slice (scan ends): nothing to measure
        empty = np.zeros(_grid_shape((height, width), patch), dtype=np.uint8)
        return Content(fg=empty, box=None, fraction=0.0)
    r0, c0, r1, c1 = cells_box  # cut to the image, as the upsampled pixel mask is
    box = (r0 * cell, c0 * cell, min(r1 * cell, height), min(c1 * cell, width))
    k = patch // cell
    if height % cell == 0 and width % cell == 0 and k * k < 256:
        # Whole cells only: the patch value depends on its number of body cells alone, a table lookup.
        fg = _cell_count_lut(k=k, cell=cell)[_count_blocks(grid, k)]
    else:
        # Pixels of each cell inside the image (edge cells are cut), so counts match the pixel mask.
        cell_rows = np.minimum(cell, height - cell * np.arange(grid.shape[0]))
        cell_cols = np.minimum(cell, width - cell * np.arange(grid.shape[1]))
        weighted = grid * np.outer(cell_rows, cell_cols).astype(np.uint32)
        gh, gw = _grid_shape(grid.shape, k)
        weighted = np.pad(weighted, ((0, gh * k - grid.shape[0]), (0, gw * k - grid.shape[1])))
        fg = _scale_counts(_block_sum(weighted, k, dtype=np.uint32), patch)
    return Content(fg=fg, box=box, fraction=foreground_fraction(fg))


def mr_body_threshold(values: np.ndarray) -> float | None:
    """Body/background threshold of MR intensities: Otsu's threshold of log(1 + value).

    MR intensities span decades (noise ~10, tissue ~100s, fat ~1000s): on a linear histogram Otsu
    splits fat from everything else; in the log domain the widest gap is background vs tissue.
    Give it a strided sample of the whole volume so air-only slices get the volume's threshold.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None
    t = otsu_threshold(np.log1p(np.maximum(v, 0.0)))
    return None if t is None else float(np.expm1(t))


def otsu_threshold(values: np.ndarray, *, bins: int = _OTSU_BINS) -> float | None:
    """Otsu's threshold of ``values``: the bin edge maximising the between-class variance.

    Values ``>=`` the returned threshold are the bright class. None when all values are equal.
    Implemented on a ``bins``-bin histogram with numpy (Otsu 1979, IEEE SMC-9(1)).
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    lo, hi = float(v.min()), float(v.max())
    if not hi > lo:
        return None
    q = ((v - lo) * (bins / (hi - lo))).astype(np.intp)
    np.minimum(q, bins - 1, out=q)
    hist = np.bincount(q, minlength=bins).astype(np.float64)
    w0 = np.cumsum(hist)  # pixels in bins 0..t
    m0 = np.cumsum(hist * np.arange(bins))  # their first moment (in bin units)
    total, moment = w0[-1], m0[-1]
    w1 = total - w0
    valid = (w0 > 0) & (w1 > 0)
    between = np.zeros(bins)
    # sigma_b^2 * total^2 = (moment * w0 - total * m0)^2 / (w0 * w1): same argmax as the normalised form.
    between[valid] = (moment * w0[valid] - total * m0[valid]) ** 2 / (w0[valid] * w1[valid])
    t = int(np.argmax(between))
    return lo + (t + 1) * (hi - lo) / bins


def _body_grid(
    image: np.ndarray,
    *,
    modality: str,
    hu_threshold: float,
    cell: int,
    min_fraction: float,
    mr_threshold: float | None = None,
) -> tuple[np.ndarray, tuple[int, int, int, int] | None]:
    """Bool cell grid ``(ceil(H/cell), ceil(W/cell))`` of the cleaned body mask (steps 1-4), and its box."""
    img = np.asarray(image)
    if img.ndim != 2:
        raise ConfigError(f"content analysis needs a 2D slice, got {img.ndim}D")
    if cell < 1 or cell > 16:
        raise ConfigError(f"cell must be between 1 and 16 pixels, got {cell}")
    if modality == "CT":
        passed = _above(img, hu_threshold, inclusive=False)
    elif modality == "MR":
        threshold = mr_threshold if mr_threshold is not None else mr_body_threshold(img[::cell, ::cell])
        if threshold is None:
            return np.zeros(_grid_shape(img.shape, cell), dtype=bool), None
        passed = _above(img, threshold, inclusive=True)
    else:
        raise ConfigError(f"unknown modality {modality!r}; valid modalities: {', '.join(_MODALITIES)}")
    grid = _count_blocks(passed, cell) >= (cell * cell + 1) // 2
    box = body_box(grid)
    if box is None:
        return grid, None
    # Label only the box around the cells that passed: everything outside it is background connected
    # to the image border, so hole filling inside the box gives the same result (and costs less).
    r0, c0, r1, c1 = box
    cleaned = _keep_main_components(_fill_holes(grid[r0:r1, c0:c1]), min_fraction=min_fraction)
    grid[r0:r1, c0:c1] = cleaned
    inner = body_box(cleaned)  # never None: the largest component stays
    assert inner is not None
    return grid, (r0 + inner[0], c0 + inner[1], r0 + inner[2], c0 + inner[3])


def _above(img: np.ndarray, threshold: float, *, inclusive: bool) -> np.ndarray:
    """``img > threshold`` (or ``>=`` when ``inclusive``) compared in the image's own dtype.

    Comparing int16 with a Python float makes numpy convert the whole slice to float64 (~10x slower).
    For integers both tests are ``x >= bound`` with ``bound = ceil(t)`` (``>=``) or ``floor(t) + 1`` (``>``).
    """
    if not math.isfinite(threshold):
        raise ConfigError(f"foreground threshold must be a finite number, got {threshold}")
    if img.dtype.kind not in "iu":
        t = img.dtype.type(threshold)
        return img >= t if inclusive else img > t
    bound = math.ceil(threshold) if inclusive else math.floor(threshold) + 1
    lowest, highest = _integer_range(img.dtype)
    if bound <= lowest:
        return np.ones(img.shape, dtype=bool)
    if bound > highest:
        return np.zeros(img.shape, dtype=bool)
    return img >= img.dtype.type(bound)


@functools.cache
def _integer_range(dtype: np.dtype) -> tuple[int, int]:
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def _fill_holes(grid: np.ndarray) -> np.ndarray:
    """Background components (4-connected) that do not touch the border become foreground."""
    height, width = grid.shape
    background = np.ones((height + 2, width + 2), dtype=bool)  # a ring of background around the grid
    background[1:-1, 1:-1] = ~grid
    labels, _ = ndimage.label(background, structure=_FOUR_CONNECTED)
    # The ring joins every background region that touches the border into the first label (top-left).
    return labels[1:-1, 1:-1] != 1


def _keep_main_components(grid: np.ndarray, *, min_fraction: float) -> np.ndarray:
    """Keep the 8-connected components that are neither small nor thin; the largest always stays.

    Small: below ``min_fraction`` of the largest (specks). Thin: no cell survives one erosion by a
    3 x 3 cross, i.e. at most 2 cells thick everywhere, like the patient table seen edge-on, which can
    be as large as an arm but never as thick.
    """
    labels, n = ndimage.label(grid, structure=_EIGHT_CONNECTED)
    if n <= 1:
        return grid
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    largest = int(sizes.argmax())
    keep = sizes >= min_fraction * sizes[largest]
    if np.count_nonzero(keep) > 1:  # other large components: keep only those with a core (not thin)
        core = grid[1:-1, 1:-1] & grid[:-2, 1:-1] & grid[2:, 1:-1] & grid[1:-1, :-2] & grid[1:-1, 2:]
        thick = np.zeros(n + 1, dtype=bool)
        thick[labels[1:-1, 1:-1][core]] = True
        keep &= thick
        keep[largest] = True
        if np.count_nonzero(keep) > 1:
            return keep[labels]
    return labels == largest  # the usual case: one body, the rest specks or table


def _count_blocks(mask: np.ndarray, size: int) -> np.ndarray:
    """True pixels per ``size`` x ``size`` block of a bool mask (edges padded False), as uint8 or uint32."""
    height, width = mask.shape
    gh, gw = _grid_shape(mask.shape, size)
    if (gh * size, gw * size) != (height, width):
        mask = np.pad(mask, ((0, gh * size - height), (0, gw * size - width)))
    if size not in _BYTE_LANES:
        return _block_sum(mask.view(np.uint8), size, dtype=np.uint32)
    # SWAR: read the `size` bytes (0/1) of a block row as one unsigned word. Adding the words of the
    # block's rows counts each column in its own byte (<= 8, no carries); multiplying by 0x0101..01
    # then gathers the byte sum (<= 64) in the top byte. One pass over 1/size of the words, no temporaries.
    word, ones = _BYTE_LANES[size]
    words = np.ascontiguousarray(mask).view(word).reshape(gh, size, gw)
    columns = np.add.reduce(words, axis=1, dtype=word)
    return ((columns * ones) >> word(8 * (size - 1))).astype(np.uint8)


def _block_sum(a: np.ndarray, size: int, *, dtype: type[np.unsignedinteger]) -> np.ndarray:
    """Sum a 2D array whose shape is a multiple of ``size`` over ``size`` x ``size`` blocks."""
    gh, gw = a.shape[0] // size, a.shape[1] // size
    rows = np.add.reduce(a.reshape(gh, size, gw * size), axis=1, dtype=dtype)
    blocks = rows.reshape(gh, gw, size)
    # A loop of strided adds beats numpy's reduction over a short last axis (measured ~2x).
    out = blocks[:, :, 0].astype(dtype)
    for i in range(1, size):
        out += blocks[:, :, i]
    return out


def _scale_counts(counts: np.ndarray, patch: int) -> np.ndarray:
    """Body pixels per patch to uint8: ``round(255 * count / patch**2)``, half up, in integers."""
    area = patch * patch
    return ((counts.astype(np.uint32) * 510 + area) // (2 * area)).astype(np.uint8)


@functools.cache
def _cell_count_lut(*, k: int, cell: int) -> np.ndarray:
    """Patch value for 0..k*k body cells of ``cell`` x ``cell`` pixels in a ``k * cell`` pixel patch."""
    return _scale_counts(np.arange(k * k + 1, dtype=np.uint32) * np.uint32(cell * cell), k * cell)


def _grid_shape(shape: tuple[int, ...], size: int) -> tuple[int, int]:
    return -(-shape[0] // size), -(-shape[1] // size)


def _check_patch(patch: int) -> None:
    if patch < 1:
        raise ConfigError(f"patch must be a positive number of pixels, got {patch}")
