"""Probes, metrics, few-shot subsets and the 3D average on features whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from radforge.trainer.eval.features import SliceFeatures
from radforge.trainer.eval.fewshot import FULL, few_shot_indices, shot_schedule, strata
from radforge.trainer.eval.metrics import (
    _metrics_on_resamples,
    auc_binary,
    bootstrap_ci,
    classification_metrics,
    compute_metrics,
    paired_bootstrap,
    regression_metrics,
    resample_weights,
)
from radforge.trainer.eval.probes import knn_probe, linear_probe
from radforge.trainer.eval.report import paired_differences, verdict_lines
from radforge.trainer.eval.tasks import TaskData, TaskSpec
from radforge.trainer.eval.tracks import PROBES, evaluate_task, samples, volume_mean


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


def test_paired_interval_is_the_interval_of_the_difference() -> None:
    """B is A with 20 of its 320 correct answers made wrong: a 0.05 gap on the same samples.

    Separate intervals overlap (each is about +-0.04 wide); the paired one only varies with the
    resampled count of the 20 disagreements, so it excludes zero. Identical predictions: exactly 0.
    """
    y = np.arange(400) % 2
    right = np.eye(2)[y]
    a = right.copy()
    a[:80] = 1 - a[:80]  # 80% accuracy
    b = a.copy()
    b[80:100] = 1 - b[80:100]  # 75%
    pair = paired_bootstrap("classification", y, a, b, n_boot=500, seed=0)
    assert pair.diff == pytest.approx(0.05) and pair.n_test == 400 and pair.metric == "accuracy"
    assert 0.0 < pair.ci[0] < 0.05 < pair.ci[1] < 0.1 and pair.verdict == "win"
    assert bootstrap_ci("classification", y, a, n_boot=500)["accuracy"][0] < (
        bootstrap_ci("classification", y, b, n_boot=500)["accuracy"][1]
    )  # the two separate intervals overlap
    assert paired_bootstrap("classification", y, b, a, n_boot=500, seed=0).verdict == "loss"
    same = paired_bootstrap("classification", y, a, a.copy(), n_boot=500, seed=0)
    assert same.diff == 0.0 and same.ci == (0.0, 0.0) and same.verdict == "tie"
    assert paired_bootstrap("classification", y, a, b, n_boot=500, seed=0) == pair  # seeded
    t = np.linspace(0.0, 1.0, 200)
    noisy = paired_bootstrap("regression", t, t + 0.01 * np.cos(40 * t), np.full(200, 0.5), n_boot=300)
    assert noisy.metric == "r2" and noisy.diff == pytest.approx(1.0, abs=0.01) and noisy.ci[0] > 0.9
    with pytest.raises(ValueError, match="same test samples: 400 labels, 400 and 3 predictions"):
        paired_bootstrap("classification", y, a, b[:3])


def _labelled_task(n: int, classes: int) -> TaskData:
    y = np.arange(n) % classes
    return TaskData(
        spec=TaskSpec("known", "2d", "classification", tuple("abcd"[:classes])),
        images=[np.zeros((8, 8), np.int16)] * n,
        modality=["CT"] * n,
        window=["raw"] * n,
        labels=y,
        splits=np.array(["train", "train", "val", "test", "test"] * (n // 5)),
    )


def test_paired_differences_pick_the_backbone_whose_features_hold_the_labels() -> None:
    """Features = one-hot labels + noise vs pure noise: every probe wins, interval above zero."""
    task = _labelled_task(600, classes=3)
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((600, 16)).astype(np.float32)
    informative = noise.copy()
    informative[:, :3] += 1.5 * np.eye(3, dtype=np.float32)[task.labels]
    results = []
    for name, x in (("pretrained", informative), ("twin", noise.copy()), ("random_init", noise)):
        feats = SliceFeatures(x, x, None)
        results += evaluate_task(task, feats, backbone=name, seeds=1, max_shots=1, n_boot=50)
    paired = paired_differences(results, baseline="random_init", n_boot=300)
    assert {(p.backbone, p.probe) for p in paired} == {(b, p) for b in ("pretrained", "twin") for p in PROBES}
    for p in paired:
        d = p.difference
        assert d.n_test == 240 and p.task == "known" and p.baseline == "random_init"
        if p.backbone == "pretrained":
            assert d.diff > 0.3 and d.ci[0] > 0.2 and d.verdict == "win"
        else:  # the same features as the baseline: the same predictions, a difference of exactly 0
            assert d.diff == 0.0 and d.ci == (0.0, 0.0) and d.verdict == "tie"
    assert verdict_lines(paired) == [
        "Verdict: pretrained beats random_init on 2 of 2 probes (task x probe) with the paired 95% "
        "interval above zero; loses on 0; the other 0 are inside the noise.",
        "Verdict: twin beats random_init on 0 of 2 probes (task x probe) with the paired 95% "
        "interval above zero; loses on 0; the other 2 are inside the noise.",
    ]
    assert paired_differences(results, baseline="absent") == []


@pytest.mark.parametrize("kind", ["binary", "multiclass", "regression"])
def test_vectorised_resamples_equal_the_metrics_of_each_resample(kind: str) -> None:
    """Each row of multiplicities scores as compute_metrics on the resample it describes (ties included)."""
    rng = np.random.default_rng(3)
    n = 60
    if kind == "regression":
        y, pred, name = rng.standard_normal(n), rng.standard_normal(n), "regression"
    else:
        c = 2 if kind == "binary" else 3
        y = np.arange(n) % c
        pred = np.round(rng.dirichlet(np.ones(c), n), 1)  # rounded: tied scores
        y[:4] = 0  # a rare class in some resamples is missing: AUC undefined there
        name = "classification"
    weights = resample_weights(n, n_boot=200, seed=0)
    assert weights.sum(1).tolist() == [n] * 200
    got = _metrics_on_resamples(name, y, pred, weights)
    for r in range(200):
        idx = np.repeat(np.arange(n), weights[r].astype(int))
        want = compute_metrics(name, y[idx], pred[idx])
        for metric, value in want.items():
            assert got[metric][r] == pytest.approx(value, nan_ok=True, abs=1e-12), (metric, r)
    ci = bootstrap_ci(name, y, pred, n_boot=200, seed=0)
    for metric, values in got.items():
        finite = values[np.isfinite(values)]
        assert ci[metric] == (float(np.quantile(finite, 0.025)), float(np.quantile(finite, 0.975)))
