"""The 2D and 3D tracks: from slice features to probe results over few-shot subsets and seeds.

2D track: one sample per slice, its pooled feature (CLS, mean patch token, both, or the mean patch
token inside a mask). 3D track: one sample per volume, the mean of its slices' pooled features.
Each (shots, seed) trains a probe on that subset of the training split and scores the whole test
split; the full training set is scored once, with bootstrap confidence intervals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from radforge.trainer.eval.features import SliceFeatures
from radforge.trainer.eval.fewshot import FULL, few_shot_indices, shot_schedule
from radforge.trainer.eval.metrics import bootstrap_ci, compute_metrics
from radforge.trainer.eval.probes import knn_probe, linear_probe
from radforge.trainer.eval.tasks import TaskData

PROBES = ("linear", "knn")


@dataclass(frozen=True)
class ProbeResult:
    """One probe fitted on one training subset of one task, scored on the test split."""

    task: str
    track: str
    kind: str
    backbone: str
    probe: str
    shots: int | str  # k per class (per target bin for regression), or "full"
    seed: int
    n_train: int
    n_test: int
    metrics: dict[str, float]
    ci: dict[str, tuple[float, float]] | None = None  # full training set only
    # full training set only, not serialised: the test labels and this probe's predictions on them,
    # kept so two backbones can be compared on the same samples (metrics.paired_bootstrap)
    targets: np.ndarray | None = field(default=None, compare=False, repr=False)
    predictions: np.ndarray | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (without the per-sample arrays)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.repr}


def volume_mean(features: np.ndarray, volumes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted volume ids, (V, D) mean feature of each volume's slices)."""
    ids, inverse = np.unique(volumes, return_inverse=True)
    sums = np.zeros((len(ids), features.shape[1]), dtype=np.float64)
    np.add.at(sums, inverse, features)
    return ids, sums / np.bincount(inverse)[:, None]


def samples(task: TaskData, feats: SliceFeatures) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The track's samples: (features, labels, splits) per slice (2D) or per volume (3D)."""
    x = feats.pooled(task.spec.pooling).astype(np.float64)
    if task.spec.track == "2d":
        return x, task.labels, task.splits
    assert task.volumes is not None
    ids, xv = volume_mean(x, task.volumes)
    first = np.array([np.flatnonzero(task.volumes == v)[0] for v in ids])
    return xv, task.labels[first], task.splits[first]


def evaluate_task(
    task: TaskData,
    feats: SliceFeatures,
    *,
    backbone: str,
    probes: Sequence[str] = PROBES,
    seeds: int = 3,
    max_shots: int | None = None,
    n_boot: int = 1000,
) -> list[ProbeResult]:
    """Every probe x shots x seed for one task and one backbone's features."""
    bad = [p for p in probes if p not in PROBES]
    if bad:
        raise ValueError(f"unknown probe(s) {bad}; valid: {', '.join(PROBES)}")
    spec = task.spec
    x, y, split = samples(task, feats)
    train, val, test = (np.flatnonzero(split == s) for s in ("train", "val", "test"))
    num_classes = len(spec.classes)
    results = []
    for shots in shot_schedule(y[train], kind=spec.kind, max_k=max_shots):
        for seed in [0] if shots == FULL else range(seeds):
            subset = (
                train
                if shots == FULL
                else train[few_shot_indices(y[train], k=int(shots), seed=seed, kind=spec.kind)]
            )
            for probe in probes:
                if probe == "linear":
                    pred = linear_probe(
                        x[subset],
                        y[subset],
                        x[test],
                        kind=spec.kind,
                        num_classes=num_classes,
                        val=(x[val], y[val]) if len(val) else None,
                        seed=seed,
                    )
                else:
                    pred = knn_probe(x[subset], y[subset], x[test], kind=spec.kind, num_classes=num_classes)
                results.append(
                    ProbeResult(
                        task=spec.name,
                        track=spec.track,
                        kind=spec.kind,
                        backbone=backbone,
                        probe=probe,
                        shots=shots,
                        seed=seed,
                        n_train=len(subset),
                        n_test=len(test),
                        metrics=compute_metrics(spec.kind, y[test], pred),
                        ci=bootstrap_ci(spec.kind, y[test], pred, n_boot=n_boot, seed=seed)
                        if shots == FULL
                        else None,
                        targets=y[test] if shots == FULL else None,
                        predictions=pred if shots == FULL else None,
                    )
                )
    return results
