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


def resample_weights(n: int, *, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) multiplicity of each test sample in each bootstrap resample (seeded draws)."""
    idx = np.random.default_rng(seed).integers(0, n, (n_boot, n))
    offsets = (np.arange(n_boot) * n)[:, None]
    return np.bincount((idx + offsets).ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)


def _weighted_auc(weights: np.ndarray, positive: np.ndarray, score: np.ndarray) -> np.ndarray:
    """ROC AUC per row of sample ``weights`` (R, n): P(pos > neg) + P(tie) / 2, NaN without both classes.

    The weighted Mann-Whitney statistic: equal to :func:`auc_binary` on the resample a row describes.
    """
    values, inverse = np.unique(score, return_inverse=True)
    neg_at = np.zeros((weights.shape[0], len(values)))
    np.add.at(neg_at.T, inverse[~positive], weights[:, ~positive].T)  # negatives' weight per score value
    below = np.cumsum(neg_at, axis=1) - neg_at
    per_pos = below[:, inverse[positive]] + 0.5 * neg_at[:, inverse[positive]]
    w_pos, w_neg = weights[:, positive].sum(1), weights[:, ~positive].sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (weights[:, positive] * per_pos).sum(1) / (w_pos * w_neg)
    return np.where((w_pos > 0) & (w_neg > 0), auc, math.nan)


def _metrics_on_resamples(
    kind: str, y: np.ndarray, pred: np.ndarray, weights: np.ndarray
) -> dict[str, np.ndarray]:
    """Every metric of :func:`compute_metrics` on each resample (row of ``weights``), vectorised."""
    n = weights.shape[1]
    if kind == "regression":
        err = pred.astype(np.float64) - y
        mean_y = weights @ y / n
        sst = (weights * (y[None, :] - mean_y[:, None]) ** 2).sum(1)
        sse = weights @ (err**2)
        with np.errstate(divide="ignore", invalid="ignore"):
            r2 = np.where(sst > 0, 1.0 - sse / sst, math.nan)
        return {"mae": weights @ np.abs(err) / n, "rmse": np.sqrt(sse / n), "r2": r2}
    c = pred.shape[1]
    correct = (pred.argmax(1) == y).astype(np.float64)
    onehot = (y[:, None] == np.arange(c)[None, :]).astype(np.float64)  # (n, C)
    counts = weights @ onehot  # (R, C) samples of each class in each resample
    present = counts > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        recalls = np.where(present, (weights @ (onehot * correct[:, None])) / counts, 0.0)
    out = {"accuracy": weights @ correct / n, "balanced_accuracy": recalls.sum(1) / present.sum(1)}
    if c == 2:
        out["auc"] = _weighted_auc(weights, y == 1, pred[:, 1])
    else:  # macro one-vs-rest, undefined when a class is missing from the resample
        per_class = np.stack([_weighted_auc(weights, y == k, pred[:, k]) for k in range(c)], axis=1)
        out["auc"] = np.where(present.all(1), per_class.mean(1), math.nan)
    return out


def bootstrap_ci(
    kind: str, y: np.ndarray, pred: np.ndarray, *, n_boot: int = N_BOOT, seed: int = 0, alpha: float = ALPHA
) -> dict[str, tuple[float, float]]:
    """Percentile intervals of every metric over ``n_boot`` resamples of the test samples (seeded).

    Vectorised over resamples (each a row of multiplicities, :func:`resample_weights`); a resample
    where a metric is undefined (AUC without both classes, R2 of constant targets) is left out.
    """
    draws = _metrics_on_resamples(kind, y, pred, resample_weights(len(y), n_boot=n_boot, seed=seed))
    out = {}
    for name, values in draws.items():
        finite = values[np.isfinite(values)]
        if len(finite):
            out[name] = (float(np.quantile(finite, alpha / 2)), float(np.quantile(finite, 1 - alpha / 2)))
    return out


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
    metric = PRIMARY[kind]

    def primary(pred: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return _metrics_on_resamples(kind, y, pred, weights)[metric]

    everything = np.ones((1, len(y)))
    point = primary(pred_a, everything) - primary(pred_b, everything)
    weights = resample_weights(len(y), n_boot=n_boot, seed=seed)  # one resample, both metrics on it
    draws = primary(pred_a, weights) - primary(pred_b, weights)
    draws = draws[np.isfinite(draws)]
    lo, hi = (
        (float(np.quantile(draws, alpha / 2)), float(np.quantile(draws, 1 - alpha / 2)))
        if len(draws)
        else (math.nan, math.nan)
    )
    return PairedDifference(metric=metric, diff=float(point[0]), ci=(lo, hi), n_test=len(y))
