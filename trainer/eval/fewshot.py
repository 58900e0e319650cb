"""Few-shot training subsets: k examples per class (per target-quantile bin for regression), seeded.

Subsets are nested across seeds only by accident, never by construction: each (k, seed) draws from
its own generator seeded by (seed, k), so adding a k to the schedule does not change the others.
"""

from __future__ import annotations

import numpy as np

FULL = "full"
REGRESSION_BINS = 4  # regression targets are split into this many quantile bins to stratify


def strata(labels: np.ndarray, *, kind: str, bins: int = REGRESSION_BINS) -> np.ndarray:
    """The stratum of each training sample: its class, or its target's quantile bin."""
    if kind == "classification":
        return np.asarray(labels, dtype=np.int64)
    edges = np.quantile(labels, np.linspace(0, 1, bins + 1)[1:-1])
    return np.searchsorted(edges, labels, side="right")


def few_shot_indices(labels: np.ndarray, *, k: int, seed: int, kind: str = "classification") -> np.ndarray:
    """Sorted indices of ``k`` samples per stratum (all of a stratum that has fewer), seeded."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    groups = strata(labels, kind=kind)
    rng = np.random.default_rng([seed, k])
    picks = []
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        picks.append(rng.choice(members, size=min(k, len(members)), replace=False))
    return np.sort(np.concatenate(picks))


def shot_schedule(labels: np.ndarray, *, kind: str, max_k: int | None = None) -> list[int | str]:
    """1, 2, 4, ... while k is below the smallest stratum (and ``max_k``), then ``"full"``."""
    _, counts = np.unique(strata(labels, kind=kind), return_counts=True)
    shots: list[int | str] = []
    k = 1
    while k < counts.min() and (max_k is None or k <= max_k):
        shots.append(k)
        k *= 2
    return [*shots, FULL]
