"""Probes, metrics, few-shot subsets and the 3D average on features whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from radforge.trainer.eval.features import SliceFeatures
from radforge.trainer.eval.fewshot import FULL, few_shot_indices, shot_schedule, strata
from radforge.trainer.eval.metrics import auc_binary, bootstrap_ci, classification_metrics, regression_metrics
from radforge.trainer.eval.probes import knn_probe, linear_probe
from radforge.trainer.eval.tasks import TaskData, TaskSpec
from radforge.trainer.eval.tracks import evaluate_task, samples, volume_mean


def blobs(n: int, *, classes: int = 3, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated Gaussian clusters in random directions, plus a nuisance offset shared by all."""
    centres = np.random.default_rng(123).standard_normal((classes, dim)) * 4.0  # the same for every draw
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    return centres[y] + rng.standard_normal((n, dim)) + 10.0, y


@pytest.mark.parametrize("probe", [linear_probe, knn_probe])
def test_probes_recover_separable_classes(probe) -> None:  # type: ignore[no-untyped-def]
    x, y = blobs(300)
    xt, yt = blobs(150, seed=1)
    pred = probe(x, y, xt, kind="classification", num_classes=3)
    assert pred.shape == (150, 3) and np.allclose(pred.sum(1), 1.0)
    assert classification_metrics(yt, pred)["accuracy"] >= 0.97
    # labels unrelated to the features: no probe can do better than chance (a test of the test)
    shuffled = np.random.default_rng(2).permutation(y)
    assert (
        classification_metrics(yt, probe(x, shuffled, xt, kind="classification", num_classes=3))["accuracy"]
        < 0.6
    )


def test_probes_recover_a_linear_target() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal(8)
    x, xt = rng.standard_normal((400, 8)), rng.standard_normal((200, 8))
    y, yt = x @ w, xt @ w
    assert regression_metrics(yt, linear_probe(x, y, xt, kind="regression"))["r2"] > 0.99
    assert regression_metrics(yt, knn_probe(x, y, xt, kind="regression"))["r2"] > 0.5
    # the validation split picks the regularisation: a strong ridge would shrink predictions
    picked = linear_probe(x, y, xt, kind="regression", val=(xt[:50], yt[:50]))
    assert regression_metrics(yt, picked)["mae"] < 0.1


def test_knn_votes_by_weighted_neighbours() -> None:
    train = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    pred = knn_probe(
        train,
        np.array([0, 0, 1]),
        np.array([[1.0, 0.05], [0.05, 1.0]]),
        kind="classification",
        num_classes=2,
        k=1,
    )
    assert pred.argmax(1).tolist() == [0, 1]


def test_metrics_match_references_and_intervals_are_seeded() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    score = y * 0.6 + rng.random(200)
    proba = np.stack([1 - score / 2, score / 2], axis=1)
    assert auc_binary(y == 1, score) == pytest.approx(roc_auc_score(y, score))
    y3 = rng.integers(0, 3, 200)
    p3 = rng.dirichlet([1, 1, 1], 200)
    got = classification_metrics(y3, p3)["auc"]
    assert got == pytest.approx(roc_auc_score(y3, p3, multi_class="ovr", average="macro"))
    m = classification_metrics(y, proba)
    ci = bootstrap_ci("classification", y, proba, n_boot=300, seed=1)
    assert ci == bootstrap_ci("classification", y, proba, n_boot=300, seed=1)
    for name in ("accuracy", "auc"):
        lo, hi = ci[name]
        assert lo < m[name] < hi and hi - lo < 0.3
    assert math.isnan(regression_metrics(np.ones(4), np.zeros(4))["r2"])


def test_few_shot_subsets_are_stratified_and_seeded() -> None:
    y = np.array([0] * 10 + [1] * 5 + [2] * 3)
    for k in (1, 2, 4):
        idx = few_shot_indices(y, k=k, seed=0)
        counts = np.bincount(y[idx], minlength=3)
        assert counts.tolist() == [min(k, 10), min(k, 5), min(k, 3)]
        assert np.array_equal(idx, few_shot_indices(y, k=k, seed=0))
    draws = {tuple(few_shot_indices(y, k=2, seed=s)) for s in range(8)}
    assert len(draws) > 1  # seeds give different subsets
    assert shot_schedule(y, kind="classification") == [1, 2, FULL]
    assert shot_schedule(np.repeat([0, 1], 40), kind="classification", max_k=8) == [1, 2, 4, 8, FULL]
    # regression: stratified over quantile bins of the target
    t = np.linspace(0.0, 1.0, 40)
    assert np.bincount(strata(t, kind="regression")).tolist() == [10, 10, 10, 10]
    assert (
        np.bincount(strata(t[few_shot_indices(t, k=2, seed=0, kind="regression")], kind="regression")).sum()
        == 8
    )


def _volume_task(slices_per_volume: list[int], labels: list[float], splits: list[str]) -> TaskData:
    vols = np.repeat([f"v{i}" for i in range(len(slices_per_volume))], slices_per_volume)
    n = len(vols)
    per = dict(zip([f"v{i}" for i in range(len(labels))], zip(labels, splits, strict=True), strict=True))
    return TaskData(
        spec=TaskSpec("vol", "3d", "regression"),
        images=[np.zeros((8, 8), np.int16)] * n,
        modality=["CT"] * n,
        window=["raw"] * n,
        labels=np.array([per[v][0] for v in vols]),
        splits=np.array([per[v][1] for v in vols]),
        volumes=vols,
    )


def test_3d_track_averages_slice_features_per_volume() -> None:
    rng = np.random.default_rng(0)
    task = _volume_task([3, 1, 4, 2], [1.0, 2.0, 3.0, 4.0], ["train", "train", "test", "test"])
    cls = rng.standard_normal((10, 5)).astype(np.float32)
    x, y, split = samples(task, SliceFeatures(cls, cls * 2, None))
    manual = np.stack([cls[0:3].mean(0), cls[3:4].mean(0), cls[4:8].mean(0), cls[8:10].mean(0)])
    assert np.allclose(x, manual, atol=1e-6)
    assert y.tolist() == [1.0, 2.0, 3.0, 4.0] and split.tolist() == ["train", "train", "test", "test"]
    ids, means = volume_mean(cls, task.volumes)  # type: ignore[arg-type]
    assert ids.tolist() == ["v0", "v1", "v2", "v3"] and np.allclose(means, manual, atol=1e-6)


def test_evaluate_task_runs_every_shot_seed_and_probe() -> None:
    x, y = blobs(120, classes=2)
    n = len(y)
    task = TaskData(
        spec=TaskSpec("blobs", "2d", "classification", ("a", "b")),
        images=[np.zeros((8, 8), np.int16)] * n,
        modality=["CT"] * n,
        window=["raw"] * n,
        labels=y,
        splits=np.array(["train"] * 80 + ["val"] * 10 + ["test"] * 30),
    )
    feats = SliceFeatures(x.astype(np.float32), x.astype(np.float32), None)
    results = evaluate_task(task, feats, backbone="b", seeds=2, max_shots=4, n_boot=100)
    keys = [(r.probe, r.shots, r.seed) for r in results]
    assert keys == [(p, k, s) for k in (1, 2, 4) for s in (0, 1) for p in ("linear", "knn")] + [
        ("linear", FULL, 0),
        ("knn", FULL, 0),
    ]
    assert all(r.n_train == 2 * r.shots for r in results if r.shots != FULL)
    full = [r for r in results if r.shots == FULL]
    assert all(r.metrics["accuracy"] == 1.0 and r.ci is not None and r.n_train == 80 for r in full)
