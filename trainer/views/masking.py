"""Which patches iBOT hides: DINOv2's block masks with Curia-2's anatomically-guided placement.

DINOv2 builds each mask from rectangles of area U(4, remaining budget) and log-uniform aspect in
[0.3, 1/0.3] whose top-left corner is uniform on the patch grid, until the mask holds its target
number of patches; half of the global crops of a batch get a mask, with ratios spread over
linspace(0.1, 0.5) (RECIPE.md, "iBOT masking"). Curia-2 replaces the uniform spatial prior with one
that follows anatomy, so masks land on the body rather than on air (RECIPE.md, "Curia-2 changes").
Here a rectangle's position is drawn with probability proportional to its mean foreground share
(from the crop's per-patch foreground prior) plus a small floor (inferred details).

Pure numpy, driven by an explicit ``numpy.random.Generator``.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

MAX_ATTEMPTS = 10


def _box_sums(integral: np.ndarray, bh: int, bw: int) -> np.ndarray:
    """Sum of a map over every bh x bw window, from its (h+1, w+1) summed-area table."""
    return integral[bh:, bw:] - integral[:-bh, bw:] - integral[bh:, :-bw] + integral[:-bh, :-bw]


def block_mask(
    num_patches: int,
    *,
    grid: tuple[int, int],
    rng: np.random.Generator,
    prior: np.ndarray | None = None,
    prior_floor: float = 0.02,
    min_block: int = 4,
    min_aspect: float = 0.3,
) -> np.ndarray:
    """A (h, w) bool mask of about ``num_patches`` patches made of rectangles (DINOv2's MaskingGenerator).

    ``prior`` (h, w) in [0, 1], the foreground share of each patch, weights where rectangles go:
    P(top-left = (i, j)) is proportional to mean(prior over the rectangle) + ``prior_floor``.
    ``prior=None`` is DINOv2's uniform placement. May stop short of ``num_patches`` when no
    rectangle adds patches within ``MAX_ATTEMPTS`` tries, as DINOv2's does.
    """
    h, w = grid
    mask = np.zeros(grid, dtype=bool)
    integral = None
    if prior is not None:
        integral = np.zeros((h + 1, w + 1))
        integral[1:, 1:] = np.asarray(prior, dtype=np.float64).cumsum(0).cumsum(1)
    log_aspect = (math.log(min_aspect), -math.log(min_aspect))
    count = 0
    while count < num_patches:
        budget = num_patches - count
        added = 0
        for _ in range(MAX_ATTEMPTS):
            area = rng.uniform(min(min_block, budget), max(min_block, budget))
            aspect = math.exp(rng.uniform(*log_aspect))
            bh = int(round(math.sqrt(area * aspect)))
            bw = int(round(math.sqrt(area / aspect)))
            if not (0 < bh < h and 0 < bw < w):
                continue
            if integral is None:
                top, left = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
            else:
                weight = _box_sums(integral, bh, bw) / (bh * bw) + prior_floor
                cum = np.cumsum(weight.ravel())
                idx = min(int(np.searchsorted(cum, rng.uniform(0.0, cum[-1]), side="right")), cum.size - 1)
                top, left = divmod(idx, w - bw + 1)
            block = mask[top : top + bh, left : left + bw]
            new = bh * bw - int(block.sum())
            if 0 < new <= budget:
                block[...] = True
                added = new
                break
        if added == 0:
            break
        count += added
    return mask


def sample_masks(
    n: int,
    *,
    grid: tuple[int, int],
    rng: np.random.Generator,
    priors: np.ndarray | None = None,
    probability: float = 0.5,
    ratio: tuple[float, float] = (0.1, 0.5),
    prior: Literal["anatomy", "uniform"] = "anatomy",
    prior_floor: float = 0.02,
    min_block: int = 4,
    min_aspect: float = 0.3,
) -> np.ndarray:
    """Masks for the ``n`` global crops of a batch: (n, h * w) bool, row-major over the patch grid.

    int(n * probability) crops get a mask; the i-th of them a ratio drawn in the i-th interval of
    linspace(ratio[0], ratio[1], n_masked + 1); masks are then shuffled over the crops (DINOv2's
    collate). ``priors`` (n, h, w) are the crops' foreground shares, used when ``prior`` is "anatomy".
    """
    if prior not in ("anatomy", "uniform"):
        raise ValueError(f"unknown mask prior {prior!r}; valid: anatomy, uniform")
    h, w = grid
    total = h * w
    n_masked = int(n * probability)
    edges = np.linspace(ratio[0], ratio[1], n_masked + 1)
    order = rng.permutation(n)
    masks = np.zeros((n, total), dtype=bool)
    for i in range(n_masked):
        target = int(total * rng.uniform(edges[i], edges[i + 1]))
        crop = order[i]
        crop_prior = priors[crop] if (prior == "anatomy" and priors is not None) else None
        masks[crop] = block_mask(
            target,
            grid=grid,
            rng=rng,
            prior=crop_prior,
            prior_floor=prior_floor,
            min_block=min_block,
            min_aspect=min_aspect,
        ).ravel()
    return masks
