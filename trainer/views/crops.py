"""Where crops go: Curia-2's content-aware ("Gaussian-weighted anatomical") crop sampling.

DINOv2's RandomResizedCrop draws an area fraction and an aspect ratio, then a position uniformly
over the image. In a CT or MR slice much of the image is air, so Curia-2 places crops on anatomy
and filters out crops that are mostly background (RECIPE.md, "Curia-2 changes"). Here (inferred
details): centres are drawn from a Gaussian centred on the body box with a standard deviation of
``center_sigma`` body-box sizes, each crop is shifted inside the image, and a crop whose
foreground share (from the stored per-cell foreground map) is below ``min_foreground`` is redrawn;
after ``max_tries`` draws it falls back to a crop of the same size centred on the body, and if that
is still too empty, to the body box itself.

Everything here is pure numpy on a handful of numbers per crop: vectorised over crops and tries.
Boxes are integer pixel boxes (row0, col0, row1, col1), half-open.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def body_region(
    fg: np.ndarray, body_box: Sequence[int] | None, *, image_shape: tuple[int, int], cell: int
) -> tuple[int, int, int, int]:
    """The box crops are centred on: the stored body box, else the box of non-empty cells, else the image."""
    h, w = image_shape
    if body_box is not None:
        r0, c0, r1, c1 = (int(v) for v in body_box)
        r0, c0, r1, c1 = max(r0, 0), max(c0, 0), min(r1, h), min(c1, w)
        if r1 > r0 and c1 > c0:
            return r0, c0, r1, c1
    rows, cols = np.nonzero(fg)
    if rows.size == 0:
        return 0, 0, h, w
    return (
        int(rows.min()) * cell,
        int(cols.min()) * cell,
        min((int(rows.max()) + 1) * cell, h),
        min((int(cols.max()) + 1) * cell, w),
    )


def _overlap(starts: np.ndarray, stops: np.ndarray, *, cell: int, size: int) -> np.ndarray:
    """Pixel overlap (..., n_cells) of intervals [starts, stops) (...) with the cells of an axis."""
    edges = np.arange(0, size + cell, cell, dtype=np.float64)
    lo, hi = edges[:-1], np.minimum(edges[1:], size)
    a = np.maximum(starts[..., None], lo)
    b = np.minimum(stops[..., None], hi)
    return np.clip(b - a, 0.0, None)


def box_foreground(
    fg: np.ndarray, boxes: np.ndarray, *, image_shape: tuple[int, int], cell: int, grid: int = 1
) -> np.ndarray:
    """Foreground share of each box, or of each cell of a ``grid`` x ``grid`` split of each box.

    fg (Hc, Wc) uint8 is the stored map (body pixels per ``cell`` x ``cell`` cell, 255 = a full cell).
    boxes (n, 4) pixel boxes. Returns (n, grid, grid) in [0, 1], assuming body pixels are spread
    evenly inside each cell (edge cells cut by the image border hold their pixels in the part
    inside). ``grid`` = the crop's patch grid gives the per-patch prior of anatomy-guided masking.
    """
    h, w = image_shape
    hc, wc = fg.shape
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    cell_h = np.minimum(cell, h - cell * np.arange(hc)).clip(min=1)
    cell_w = np.minimum(cell, w - cell * np.arange(wc)).clip(min=1)
    density = fg.astype(np.float64) * (cell * cell / 255.0) / np.outer(cell_h, cell_w)  # body share per pixel
    t = np.linspace(0.0, 1.0, grid + 1)
    ys = boxes[:, 0:1] + (boxes[:, 2:3] - boxes[:, 0:1]) * t  # (n, grid + 1)
    xs = boxes[:, 1:2] + (boxes[:, 3:4] - boxes[:, 1:2]) * t
    oy = _overlap(ys[:, :-1], ys[:, 1:], cell=cell, size=h)[:, :, :hc]  # (n, grid, Hc)
    ox = _overlap(xs[:, :-1], xs[:, 1:], cell=cell, size=w)[:, :, :wc]
    body = (oy @ density) @ ox.transpose(0, 2, 1)  # (n, grid, grid)
    area = np.diff(ys, axis=1)[:, :, None] * np.diff(xs, axis=1)[:, None, :]
    return np.clip(body / np.maximum(area, 1e-9), 0.0, 1.0)


def _sizes(
    n: int,
    *,
    image_shape: tuple[int, int],
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """RandomResizedCrop sizes: area U(scale) x image area, log-uniform aspect in ``ratio``, clipped."""
    h, w = image_shape
    area = rng.uniform(scale[0], scale[1], n) * h * w
    aspect = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), n))  # width / height
    ch = np.clip(np.rint(np.sqrt(area / aspect)), 1, h)
    cw = np.clip(np.rint(np.sqrt(area * aspect)), 1, w)
    return ch, cw


def _place(centre: np.ndarray, size: np.ndarray, limit: int) -> np.ndarray:
    """First pixel of a crop of ``size`` centred near ``centre``, shifted to lie inside [0, limit)."""
    return np.clip(np.rint(centre - size / 2.0), 0, limit - size)


def sample_crop_boxes(
    count: int,
    *,
    image_shape: tuple[int, int],
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    rng: np.random.Generator,
    fg: np.ndarray | None = None,
    body: tuple[int, int, int, int] | None = None,
    cell: int = 16,
    center_sigma: float = 0.25,
    min_foreground: float = 0.0,
    max_tries: int = 10,
) -> np.ndarray:
    """``count`` crop boxes (count, 4) int64 for a slice of ``image_shape``.

    Without ``body`` this is DINOv2's uniform placement. With ``body`` (a box from
    :func:`body_region`) centres are drawn from N(body centre, (center_sigma * body size)^2) per
    axis; with ``fg`` and ``min_foreground`` > 0, crops whose foreground share is below it are
    redrawn (``max_tries`` draws per crop, all drawn at once), then fall back as the module says.
    """
    h, w = image_shape
    n = count * max_tries
    ch, cw = _sizes(n, image_shape=image_shape, scale=scale, ratio=ratio, rng=rng)
    if body is None:
        y0 = np.floor(rng.uniform(0.0, 1.0, n) * (h - ch + 1))
        x0 = np.floor(rng.uniform(0.0, 1.0, n) * (w - cw + 1))
    else:
        by, bx = (body[0] + body[2]) / 2.0, (body[1] + body[3]) / 2.0
        sy, sx = center_sigma * (body[2] - body[0]), center_sigma * (body[3] - body[1])
        y0 = _place(rng.normal(by, sy, n), ch, h)
        x0 = _place(rng.normal(bx, sx, n), cw, w)
    boxes = np.stack([y0, x0, y0 + ch, x0 + cw], axis=1).reshape(count, max_tries, 4)
    if fg is None or min_foreground <= 0.0:
        return boxes[:, 0].astype(np.int64)

    share = box_foreground(fg, boxes.reshape(-1, 4), image_shape=image_shape, cell=cell)
    ok = share.reshape(count, max_tries) >= min_foreground
    first = ok.argmax(axis=1)
    chosen = boxes[np.arange(count), first]
    failed = ~ok.any(axis=1)
    if failed.any():
        region = body if body is not None else body_region(fg, None, image_shape=image_shape, cell=cell)
        chosen[failed] = _fallback(
            chosen[failed], region, fg=fg, image_shape=image_shape, cell=cell, min_foreground=min_foreground
        )
    return chosen.astype(np.int64)


def _fallback(
    boxes: np.ndarray,
    body: tuple[int, int, int, int],
    *,
    fg: np.ndarray,
    image_shape: tuple[int, int],
    cell: int,
    min_foreground: float,
) -> np.ndarray:
    """Same-size crops centred on the body; the body box itself where those are still too empty."""
    h, w = image_shape
    ch, cw = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    y0 = _place(np.full(len(boxes), (body[0] + body[2]) / 2.0), ch, h)
    x0 = _place(np.full(len(boxes), (body[1] + body[3]) / 2.0), cw, w)
    centred = np.stack([y0, x0, y0 + ch, x0 + cw], axis=1)
    share = box_foreground(fg, centred, image_shape=image_shape, cell=cell)[:, 0, 0]
    centred[share < min_foreground] = np.asarray(body, dtype=np.float64)
    return centred
