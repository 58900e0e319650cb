"""Probes on frozen features: a linear head and a k-nearest-neighbour vote.

Linear: features standardised on the training set, then multinomial logistic regression
(classification) or ridge regression (regression) from scikit-learn: the convex counterpart of
Curia's SGD-trained linear head. The regularisation strength is picked on the validation split
when there is one (the grid below), else the middle value is used.

kNN (DINO's): cosine similarity on L2-normalised features, the ``k`` nearest training samples vote
with weights exp(similarity / T); for regression the prediction is the weighted mean of their targets.
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import torch

Kind = Literal["classification", "regression"]
C_GRID = (0.01, 0.1, 1.0, 10.0)  # inverse L2 strength of the logistic regression
ALPHA_GRID = (0.1, 1.0, 10.0, 100.0)  # L2 strength of the ridge regression
KNN_K = 20  # DINO uses 20 neighbours
KNN_T = 0.07  # DINO's temperature


def _standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean = train.mean(0)
    std = train.std(0) + 1e-6
    return [(a - mean) / std for a in (train, *others)]


def _fit_predict(
    kind: Kind, strength: float, x: np.ndarray, y: np.ndarray, test: np.ndarray, seed: int, num_classes: int
) -> np.ndarray:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression, Ridge
    from threadpoolctl import threadpool_limits

    # one BLAS thread: these problems are tiny, and threads on a busy machine cost 10x the fit
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if kind == "regression":
            return np.asarray(Ridge(alpha=strength).fit(x, y).predict(test), dtype=np.float64)
        clf = LogisticRegression(C=strength, max_iter=500, random_state=seed).fit(x, y)
    proba = np.zeros((len(test), num_classes))
    proba[:, clf.classes_] = clf.predict_proba(test)
    return proba


def linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    *,
    kind: Kind,
    num_classes: int = 0,
    val: tuple[np.ndarray, np.ndarray] | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Class probabilities (n_test, C) or predictions (n_test,) of a linear head fitted on train."""
    grid = C_GRID if kind == "classification" else ALPHA_GRID
    strength = grid[len(grid) // 2]
    if val is not None and len(val[1]) and len(grid) > 1:
        xs, vs = _standardise(train_x, val[0])
        scores = []
        for s in grid:
            pred = _fit_predict(kind, s, xs, train_y, vs, seed, num_classes)
            if kind == "classification":
                scores.append(float((pred.argmax(1) == val[1]).mean()))
            else:
                scores.append(-float(np.abs(pred - val[1]).mean()))
        strength = grid[int(np.argmax(scores))]
    xs, ts = _standardise(train_x, test_x)
    return _fit_predict(kind, strength, xs, train_y, ts, seed, num_classes)


def knn_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    *,
    kind: Kind,
    num_classes: int = 0,
    k: int = KNN_K,
    temperature: float = KNN_T,
) -> np.ndarray:
    """Class probabilities (n_test, C) or predictions (n_test,) by a weighted kNN vote."""
    a = torch.nn.functional.normalize(torch.as_tensor(train_x, dtype=torch.float64), dim=1)
    b = torch.nn.functional.normalize(torch.as_tensor(test_x, dtype=torch.float64), dim=1)
    k = min(k, len(a))
    sim, idx = (b @ a.T).topk(k, dim=1)
    w = (sim / temperature).exp()
    if kind == "regression":
        y = torch.as_tensor(train_y, dtype=torch.float64)[idx]
        return ((w * y).sum(1) / w.sum(1)).numpy()
    onehot = torch.zeros(len(b), k, num_classes, dtype=torch.float64)
    onehot.scatter_(2, torch.as_tensor(train_y, dtype=torch.int64)[idx].unsqueeze(-1), 1.0)
    votes = (w.unsqueeze(-1) * onehot).sum(1)
    return (votes / votes.sum(1, keepdim=True)).numpy()
