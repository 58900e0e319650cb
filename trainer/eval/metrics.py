"""Metrics of a probe's predictions, with seeded bootstrap confidence intervals over test samples.

Classification: accuracy, balanced accuracy, AUC (binary: ROC AUC of the positive class;
multi-class: macro one-vs-rest; NaN when the test set lacks a class). Regression: MAE, RMSE, R2.
A bootstrap resample that draws a single class gets no AUC; the interval uses the others.
"""

from __future__ import annotations

import math

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
