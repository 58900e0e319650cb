"""Eval jobs end to end over HTTP: a real uvicorn server, real SQLite, the session's local Ray, a
tiny checkpoint trained by the fixture and a small built-in suite; allowlists (403) and fields (422).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import httpx
import pytest

from radforge.services.app.models import EVAL_BUILTIN_TASKS, EvalJobCreate, EvalProbe, TrainJobSpec
from radforge.services.jobs.kinds import KINDS
from radforge.trainer.eval.builtin import build_builtin_suite
from radforge.trainer.eval.run import BUILTIN, RANDOM_INIT
from radforge.trainer.eval.tracks import PROBES
from radforge.trainer.loop import run_training
from tests.services.support import LiveServer, make_settings, metric_value, wait_state
from tests.trainer.support import ingest_tiny, tiny_run

JOB_TIMEOUT = 120
SMALL_SUITE = {"n_volumes": 12, "size": 32, "slices": 12, "real": False}


@pytest.fixture(scope="module")
def allowed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The only prefix eval jobs may read and write (``allowed_datasets``)."""
    return tmp_path_factory.mktemp("eval-allowed")


@pytest.fixture(scope="module")
def checkpoint(ray_local: None, allowed: Path) -> Path:
    """A real tiny training run (2 steps, one checkpoint) under the allowlisted prefix."""
    dataset = ingest_tiny(allowed, str(allowed / "dataset"))
    run = allowed / "run"
    run_training(tiny_run(dataset, str(run), allowed, "steps=2", "checkpoint.every=2"))
    return run


@pytest.fixture(scope="module")
def plane_task(allowed: Path) -> Path:
    """One small built-in task (axial/coronal/sagittal), written as a task folder."""
    (task,) = [p for p in build_builtin_suite(allowed / "tasks", **SMALL_SUITE) if p.name == "plane_2d"]
    return task


@pytest.fixture(scope="module")
def api(ray_local: None, allowed: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    import ray

    settings = make_settings(
        tmp_path_factory.mktemp("eval-state"),
        ray_address=ray.get_runtime_context().gcs_address,
        allowed_datasets=[str(allowed)],
    )
    with LiveServer(settings) as live, live.client() as client:
        yield client


def eval_spec(backbone: Path, tasks: Path | str, output: Path) -> dict[str, Any]:
    """A fast eval: 1 and 2 shots, 2 seeds, 50 bootstrap resamples."""
    return {
        "kind": "eval",
        "backbone_uri": str(backbone),
        "tasks": str(tasks),
        "output_uri": str(output),
        "seeds": 2,
        "max_shots": 2,
        "bootstrap": 50,
    }


def test_eval_job_reports_both_backbones(
    api: httpx.Client, checkpoint: Path, plane_task: Path, allowed: Path
) -> None:
    output = allowed / "report"
    r = api.post("/api/v1/jobs", json=eval_spec(checkpoint, plane_task, output))
    assert r.status_code == 201, r.text
    stored = r.json()["spec"]
    assert stored["random_init"] is True and stored["probes"] == ["linear", "knn"]  # defaults stored
    job = wait_state(api, r.json()["id"], {"succeeded", "failed", "cancelled"}, timeout=JOB_TIMEOUT)
    assert job["state"] == "succeeded", (job["error"], api.get(f"/api/v1/jobs/{job['id']}/logs").json())

    progress, result = job["progress"], job["result"]
    assert progress["phase"] == "done" and progress["tasks_done"] == progress["tasks_total"] == 2
    assert result["backbones"] == sorted(["run", RANDOM_INIT])
    assert result["primary_metric"] == {"plane_2d": "accuracy"}
    for backbone in ("run", RANDOM_INIT):
        scores = result["scores"][backbone]["plane_2d"]
        assert set(scores) == {"linear", "knn"} and all(0.0 <= v <= 1.0 for v in scores.values())
    assert result["report"] == {
        "markdown": str(output / "report.md"),
        "html": str(output / "report.html"),
        "results": str(output / "results.json"),
    }
    assert "random_init" in (output / "report.md").read_text()
    assert (output / "plots" / "plane_2d.png").stat().st_size > 1000
    written = json.loads((output / "results.json").read_text())
    assert set(written["backbones"]) == {"run", RANDOM_INIT}
    assert written["settings"]["max_shots"] == 2 and written["settings"]["bootstrap"] == 50
    assert {(x["backbone"], x["shots"]) for x in written["results"]} == {
        (b, s) for b in ("run", RANDOM_INIT) for s in (1, 2, "full")
    }
    full = {(x["backbone"], x["probe"]): x for x in written["results"] if x["shots"] == "full"}
    assert result["scores"]["run"]["plane_2d"]["knn"] == full[("run", "knn")]["metrics"]["accuracy"]

    text = httpx.get(f"{api.base_url}/metrics").text
    assert metric_value(text, "radforge_jobs", {"kind": "eval", "state": "succeeded"}) == 1
    assert metric_value(text, "radforge_jobs_finished_total", {"kind": "eval", "state": "succeeded"}) == 1


def test_a_missing_checkpoint_fails_the_job_naming_it(
    api: httpx.Client, plane_task: Path, allowed: Path
) -> None:
    missing = allowed / "no-such-run"
    r = api.post("/api/v1/jobs", json=eval_spec(missing, plane_task, allowed / "report-missing"))
    assert r.status_code == 201, r.text
    job = wait_state(api, r.json()["id"], {"succeeded", "failed", "cancelled"}, timeout=JOB_TIMEOUT)
    assert job["state"] == "failed" and f"no checkpoint at {missing}" in job["error"], job


@pytest.mark.parametrize("field", ["backbone_uri", "tasks", "output_uri"])
def test_uris_outside_the_allowlist_get_403(api: httpx.Client, allowed: Path, field: str) -> None:
    spec = eval_spec(allowed / "run", allowed / "tasks", allowed / "out")
    r = api.post("/api/v1/jobs", json={**spec, field: "/elsewhere/x"})
    assert r.status_code == 403, r.text
    assert (
        r.json()["detail"].startswith(f"{field}: ") and "outside the allowed datasets" in r.json()["detail"]
    )


@pytest.mark.parametrize(
    "change, loc, words",
    [
        ({"seeds": 0}, ["body", "seeds"], "greater than or equal to 1"),
        ({"probes": ["svm"]}, ["body", "probes", 0], "'linear' or 'knn'"),
        ({"probes": ["knn", "knn"]}, ["body", "probes"], "each probe at most once"),
        ({"max_shots": 0}, ["body", "max_shots"], "greater than or equal to 1"),
        ({"random_init": "maybe"}, ["body", "random_init"], "boolean"),
        ({"output_uri": "s3://bucket/report"}, ["body", "output_uri"], "local paths"),
        ({"tasks": "s3://bucket/tasks"}, ["body", "tasks"], "local paths"),
        ({"backbone_uri": "s3://k:secret@bucket/run"}, ["body", "backbone_uri"], "credentials"),
        ({"bootstraps": 10}, ["body", "bootstraps"], "Extra inputs"),
    ],
)
def test_invalid_eval_specs_get_422_naming_the_field(
    api: httpx.Client, allowed: Path, change: dict[str, Any], loc: list[Any], words: str
) -> None:
    r = api.post("/api/v1/jobs", json={**eval_spec(allowed / "run", BUILTIN, allowed / "out"), **change})
    assert r.status_code == 422, r.text
    errors = r.json()["detail"]
    assert any(e["loc"] == loc and words in e["msg"] for e in errors), errors
    assert "secret" not in r.text  # inputs are never echoed back


def test_eval_spec_follows_the_eval_command_and_shares_trains_output_lock() -> None:
    assert EVAL_BUILTIN_TASKS == BUILTIN and set(get_args(EvalProbe)) == set(PROBES)
    evaluation = EvalJobCreate(kind="eval", backbone_uri="/r/run", tasks="builtin", output_uri="/r/out")
    train = TrainJobSpec(output_uri="/r/out", run={})
    assert KINDS["eval"].locks(evaluation) == KINDS["train"].locks(train) == {"output:/r/out"}
