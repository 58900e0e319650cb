"""Training jobs end to end over HTTP: a real uvicorn server, real SQLite, the session's local Ray
running ``radforge train``'s machinery (Ray Train) on a tiny dataset ingested by the fixture.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from radforge.services.jobs.process_identity import is_running
from radforge.trainer.checkpoint import latest
from radforge.trainer.shm import remove_stale_shared_memory
from tests.services.support import (
    LiveServer,
    metric_value,
    session_ray_server,
    wait_state,
    wait_until,
)
from tests.trainer.support import TINY, ingest_tiny

JOB_TIMEOUT = 300


@pytest.fixture(scope="module")
def server(ray_local: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    state = tmp_path_factory.mktemp("train-state")
    with session_ray_server(state, max_running_jobs=2, cancel_grace_seconds=15) as live:
        yield live


@pytest.fixture(scope="module")
def dataset(ray_local: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("train-data")
    yield ingest_tiny(root, str(root / "dataset"))
    # a cancelled run's loader is killed: its streaming segments stay in /dev/shm and would derail
    # the prefix choice of later datasets on this machine (segments a live process maps are spared)
    remove_stale_shared_memory()


def train_spec(dataset: str, output: Path, *overrides: str) -> dict[str, Any]:
    """The tiny CPU run (configs/tiny-cpu.yaml) on ``dataset``, batch 4, one Ray Train worker."""
    return {
        "kind": "train",
        "config_uri": str(TINY),
        "output_uri": str(output),
        "overrides": [
            f"data.mix.sources=[{{uri: '{dataset}'}}]",
            f"data.cache_dir={output.parent / 'cache'}",
            "batch.global_size=4",
            *overrides,
        ],
    }


def test_train_job_succeeds_with_progress_result_and_metrics(
    api: httpx.Client, dataset: str, tmp_path: Path
) -> None:
    output = tmp_path / "run"
    spec = train_spec(dataset, output, "steps=4", "checkpoint.every=2")
    first = api.post("/api/v1/jobs", json=spec)
    second = api.post("/api/v1/jobs", json={**spec, "priority": -1})  # same output: waits, then resumes
    assert first.status_code == 201 and second.status_code == 201, first.text
    ids = [first.json()["id"], second.json()["id"]]
    stored = first.json()["spec"]
    assert stored["run"]["steps"] == 4 and stored["run"]["output"] == str(output)
    assert stored["run"]["recipe_file"].endswith("recipe-tiny-cpu.yaml")  # resolved once, stored whole
    seen: list[tuple[str, ...]] = []

    def both_ended() -> bool:
        states = tuple(api.get(f"/api/v1/jobs/{i}").json()["state"] for i in ids)
        seen.append(states)
        return all(s not in ("queued", "running") for s in states)

    wait_until(both_ended, timeout=2 * JOB_TIMEOUT, what="both train jobs to end", every=0.3)
    job, again = (api.get(f"/api/v1/jobs/{i}").json() for i in ids)
    assert job["state"] == "succeeded" and again["state"] == "succeeded", (job, again)
    assert ("running", "running") not in seen and ("running", "queued") in seen  # one writer per output

    progress, result = job["progress"], job["result"]
    assert progress["phase"] == "done" and progress["step"] == progress["total_steps"] == 4
    assert progress["images_seen"] == 16 and progress["images_per_second"] > 0
    assert isinstance(progress["loss"], float) and 0 <= progress["data_wait_fraction"] <= 1
    assert progress["data_wait_seconds"] > 0
    ref = latest(str(output))
    assert ref is not None and ref.step == 4 and result["checkpoint"] == ref.location.uri
    # the second resumed from the latest checkpoint: nothing left to train, nothing counted twice
    assert again["result"]["step"] == again["result"]["resumed_from"] == 4
    assert again["progress"]["images_seen"] == 0

    text = httpx.get(f"{api.base_url}/metrics").text
    assert metric_value(text, "radforge_train_images_total") == 16
    assert metric_value(text, "radforge_train_step") == 4
    assert metric_value(text, "radforge_train_loss") == pytest.approx(progress["loss"])
    assert metric_value(text, "radforge_train_data_wait_seconds_total") == pytest.approx(
        progress["data_wait_seconds"]
    )
    assert metric_value(text, "radforge_jobs_finished_total", {"kind": "train", "state": "succeeded"}) == 2
    assert (
        metric_value(text, "radforge_job_duration_seconds_count", {"kind": "train", "state": "succeeded"})
        == 2
    )
    logs = api.get(f"/api/v1/jobs/{job['id']}/logs", params={"lines": 200}).json()["lines"]
    assert any('"checkpoint"' in line for line in logs), logs[-20:]


def test_cancel_a_running_train_job(
    server: LiveServer, api: httpx.Client, dataset: str, tmp_path: Path
) -> None:
    import ray

    spec = train_spec(dataset, tmp_path / "run", "steps=100000", "checkpoint.every=1")
    job_id = api.post("/api/v1/jobs", json=spec).json()["id"]
    wait_until(
        lambda: ((api.get(f"/api/v1/jobs/{job_id}").json().get("progress") or {}).get("step") or 0) >= 1,
        timeout=JOB_TIMEOUT,
        what="the run to report a step",
    )
    r = api.post(f"/api/v1/jobs/{job_id}/cancel")
    assert r.status_code == 202 and r.json()["cancel_requested"], r.text
    job = wait_state(api, job_id, {"cancelled", "succeeded", "failed"}, timeout=JOB_TIMEOUT)
    assert job["state"] == "cancelled" and job["error"] == "cancelled on request", job
    assert 1 <= job["progress"]["step"] < 100000
    record = server.app.state.service.store.get_job(job_id)  # type: ignore[attr-defined]
    wait_until(
        lambda: not is_running(record.pid, record.proc_start), timeout=30, what="the job process to end"
    )
    # the run's Ray Train workers are gone with their driver: every CPU is free again
    wait_until(
        lambda: ray.available_resources().get("CPU") == ray.cluster_resources().get("CPU"),
        timeout=60,
        what="Ray to release the run's CPUs",
    )
    text = httpx.get(f"{api.base_url}/metrics").text
    assert metric_value(text, "radforge_jobs_finished_total", {"kind": "train", "state": "cancelled"}) == 1
