"""Metrics of a probe's predictions, with seeded bootstrap confidence intervals over test samples.

Classification: accuracy, balanced accuracy, AUC (binary: ROC AUC of the positive class;
multi-class: macro one-vs-rest; NaN when the test set lacks a class). Regression: MAE, RMSE, R2.
A bootstrap resample that draws a single class gets no AUC; the interval uses the others.
:func:`paired_bootstrap` gives the difference of two backbones' primary metric on the same test
samples with a paired interval (both metrics on each resample).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

PRIMARY = {"classification": "accuracy", "regression": "r2"}
N_BOOT = 1000
ALPHA = 0.05  # 95% intervals


def auc_binary(positive: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC by the rank statistic (Mann-Whitney U, ties averaged): equals sklearn's roc_auc_score."""
    from scipy.stats import rankdata

    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def classification_metrics(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Metrics of class probabilities ``proba`` (n, C) against labels ``y`` (n,)."""
    pred = proba.argmax(1)
    present = np.unique(y)
    c = proba.shape[1]
    recalls = [float((pred[y == k] == k).mean()) for k in present]
    out = {"accuracy": float((pred == y).mean()), "balanced_accuracy": float(np.mean(recalls))}
    if len(present) < 2 or (c > 2 and len(present) < c):
        out["auc"] = math.nan
    elif c == 2:
        out["auc"] = auc_binary(y == 1, proba[:, 1])
    else:  # macro one-vs-rest, as sklearn's multi_class="ovr"
        out["auc"] = float(np.mean([auc_binary(y == k, proba[:, k]) for k in range(c)]))
    return out


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """MAE, RMSE and R2 (1 - SSE/SST; -inf-safe: NaN when the targets are constant)."""
    err = pred - y
    sst = float(((y - y.mean()) ** 2).sum())
    return {
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "r2": 1.0 - float((err**2).sum()) / sst if sst > 0 else math.nan,
    }


def compute_metrics(kind: str, y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Metrics for a task kind."""
    return classification_metrics(y, pred) if kind == "classification" else regression_metrics(y, pred)


def bootstrap_ci(
    kind: str, y: np.ndarray, pred: np.ndarray, *, n_boot: int = N_BOOT, seed: int = 0, alpha: float = ALPHA
) -> dict[str, tuple[float, float]]:
    """Percentile intervals of every metric over ``n_boot`` resamples of the test samples (seeded)."""
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        for name, value in compute_metrics(kind, y[idx], pred[idx]).items():
            if not math.isnan(value):
                draws.setdefault(name, []).append(value)
    return {
        name: (float(np.quantile(v, alpha / 2)), float(np.quantile(v, 1 - alpha / 2)))
        for name, v in draws.items()
    }


@dataclass(frozen=True)
class PairedDifference:
    """Metric of backbone A minus backbone B on the same test samples, with a paired bootstrap interval."""

    metric: str
    diff: float
    ci: tuple[float, float]
    n_test: int

    @property
    def verdict(self) -> str:
        """``win`` (interval above zero), ``loss`` (below zero) or ``tie`` (interval contains zero)."""
        lo, hi = self.ci
        return "win" if lo > 0 else "loss" if hi < 0 else "tie"


def _primary_on_resamples(kind: str, y: np.ndarray, pred: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The primary metric on each row of resampled indices ``idx`` (R, n): accuracy or R2 (NaN: constant)."""
    if kind == "classification":
        return (pred.argmax(1) == y).astype(np.float64)[idx].mean(1)
    ys, ps = y[idx].astype(np.float64), pred[idx].astype(np.float64)
    sse = ((ps - ys) ** 2).sum(1)
    sst = ((ys - ys.mean(1, keepdims=True)) ** 2).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sst > 0, 1.0 - sse / sst, math.nan)


def paired_bootstrap(
    kind: str,
    y: np.ndarray,
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
    alpha: float = ALPHA,
) -> PairedDifference:
    """Primary metric of ``pred_a`` minus that of ``pred_b`` on the test labels ``y``, paired.

    The test indices are resampled once per bootstrap draw and both metrics are computed on that same
    resample, so what the two predictions share (hard samples, class mix) cancels out of the interval:
    it is the interval of the difference, far narrower than two separate intervals suggest. Draws
    whose metric is undefined (R2 of a constant resample) are left out.
    """
    if len(pred_a) != len(y) or len(pred_b) != len(y):
        raise ValueError(
            f"paired predictions must cover the same test samples: {len(y)} labels, "
            f"{len(pred_a)} and {len(pred_b)} predictions"
        )
    everything = np.arange(len(y))[None, :]
    point = _primary_on_resamples(kind, y, pred_a, everything) - _primary_on_resamples(
        kind, y, pred_b, everything
    )
    idx = np.random.default_rng(seed).integers(0, len(y), (n_boot, len(y)))
    draws = _primary_on_resamples(kind, y, pred_a, idx) - _primary_on_resamples(kind, y, pred_b, idx)
    draws = draws[np.isfinite(draws)]
    lo, hi = (
        (float(np.quantile(draws, alpha / 2)), float(np.quantile(draws, 1 - alpha / 2)))
        if len(draws)
        else (math.nan, math.nan)
    )
    return PairedDifference(metric=PRIMARY[kind], diff=float(point[0]), ci=(lo, hi), n_test=len(y))
