"""Trackers: a real tiny training run writes the same per-step fields to JSONL, TensorBoard, MLflow.

TensorBoard is read back with tensorboard's own EventAccumulator (what the TensorBoard UI reads),
MLflow with its client on a local file store (``file:`` URI). A resumed run continues both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from radforge.trainer.loop import read_metrics, run_training
from radforge.trainer.run_config import TrainConfigError, config_sha256, load_train_config
from radforge.trainer.trackers import scalars
from tests.trainer.support import TINY, ingest_tiny, tiny_run


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, ray_local: None) -> str:
    root = tmp_path_factory.mktemp("trackers-data")
    return ingest_tiny(root, str(root / "ds"))


def _tensorboard(folder: Path) -> dict[str, dict[int, tuple[float, float]]]:
    """tag -> step -> (value, wall time) from every event file under ``folder``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every point
    acc.Reload()
    return {tag: {e.step: (e.value, e.wall_time) for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def _mlflow(uri: str, run_id: str) -> tuple[Any, dict[str, dict[int, list[tuple[float, int]]]]]:
    """The MLflow run and key -> step -> [(value, timestamp ms)] of its metric histories."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    history: dict[str, dict[int, list[tuple[float, int]]]] = {}
    for key in run.data.metrics:
        for m in client.get_metric_history(run_id, key):
            history.setdefault(key, {}).setdefault(m.step, []).append((m.value, m.timestamp))
    return run, history


def test_scalars_are_the_numeric_fields_but_step_and_time() -> None:
    record = {
        "step": 3, "time": 1.5e9, "loss": 2.5, "world_size": 1, "mfu": None, "gpu_memory_gib": None,
        "keys": ["a", "b"], "flag": True, "grad_norm": float("nan"), "knn_mean": 0.25,
    }  # fmt: skip
    assert scalars(record) == {"loss": 2.5, "world_size": 1.0, "knn_mean": 0.25}


def test_tensorboard_and_mlflow_hold_the_jsonl_fields(
    dataset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps its file store behind this switch
    out, store = tmp_path / "run", f"file:{tmp_path / 'mlruns'}"
    overrides = [
        "metrics.trackers=[tensorboard, mlflow]",
        f"metrics.mlflow_tracking_uri={store}",
        "metrics.mlflow_experiment=tracked",
        "checkpoint.every=2",
    ]
    first = tiny_run(dataset, str(out), tmp_path, "steps=3", *overrides)
    run_training(first)
    # resumed from step 3: TensorBoard purges nothing (none later), MLflow continues the same run
    summary = run_training(tiny_run(dataset, str(out), tmp_path, "steps=5", *overrides))
    assert summary.resumed_from == 3 and summary.step == 5

    records = read_metrics(str(out))
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    expected = {r["step"]: scalars(r) for r in records}
    fields = set().union(*expected.values())
    assert {"loss", "dino", "ibot", "lr", "grad_norm", "images_per_s", "data_wait_fraction"} <= fields

    tb = _tensorboard(out / "tensorboard")
    assert set(tb) == fields
    for field in fields:
        for r in records:
            if field in expected[r["step"]]:
                value, wall = tb[field][r["step"]]
                assert value == pytest.approx(expected[r["step"]][field], rel=1e-6), (field, r["step"])
                assert wall == pytest.approx(r["time"])
        assert set(tb[field]) == {s for s in expected if field in expected[s]}

    run_id = json.loads((out / "metrics" / "mlflow.json").read_text())["run_id"]
    run, history = _mlflow(store, run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    # the params of the run's first attempt (the resumed one logs into the same MLflow run)
    assert run.data.params["config_sha256"] == config_sha256(first.to_yaml())
    assert run.data.params["steps"] == "3" and run.data.params["model"] == first.recipe.model.size
    assert set(history) == fields
    for field in fields:
        for step, value in ((s, v[field]) for s, v in expected.items() if field in v):
            points = history[field][step]
            assert len(points) == 1, (field, step)  # each step logged once across the two attempts
            assert points[0][0] == pytest.approx(value, rel=1e-12)
            assert points[0][1] == int(next(r["time"] for r in records if r["step"] == step) * 1000)


def test_tensorboard_needs_a_local_folder_for_an_object_store_output() -> None:
    overrides = ["output=s3://bucket/run", "metrics.trackers=[tensorboard]"]
    with pytest.raises(TrainConfigError, match=r"metrics.tensorboard_dir"):
        load_train_config(TINY, overrides=overrides)
    cfg = load_train_config(TINY, overrides=[*overrides, "metrics.tensorboard_dir=/tmp/tb"])
    assert cfg.metrics.trackers == ("tensorboard",)


def test_unknown_tracker_is_named() -> None:
    with pytest.raises(TrainConfigError, match=r"metrics.trackers"):
        load_train_config(TINY, overrides=["metrics.trackers=[wandb]"])


def test_a_failed_run_marks_its_mlflow_run_failed(
    dataset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    out, store = tmp_path / "run", f"file:{tmp_path / 'mlruns'}"
    overrides = ["steps=4", "metrics.trackers=[mlflow]", f"metrics.mlflow_tracking_uri={store}"]
    cfg = tiny_run(dataset, str(out), tmp_path, *overrides)

    def fail_at_step_2(record: dict[str, Any]) -> None:
        if record["step"] == 2:
            raise RuntimeError("injected failure")

    with pytest.raises(RuntimeError, match="injected failure"):
        run_training(cfg, on_step=fail_at_step_2)
    run_id = json.loads((out / "metrics" / "mlflow.json").read_text())["run_id"]
    run, history = _mlflow(store, run_id)
    # nothing was flushed (flush_every 10, no checkpoint yet): MLflow holds no point, like the JSONL
    assert run.info.status == "FAILED" and history == {} and read_metrics(str(out)) == []
