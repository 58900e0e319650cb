"""Ingest jobs end to end over HTTP: a real uvicorn server, real SQLite, the session's local Ray
running real ingest jobs; then a real Prometheus scraping /metrics and the dashboard in headless
Chromium.
"""

from __future__ import annotations

import json
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from radforge.services.jobs.process_identity import is_running
from radforge.services.jobs.progress import COMMIT, COMMITTED, job_file, read_json
from radforge.sharder.catalog import load_catalog
from radforge.storage import resolve
from tests.services.support import (
    TOKEN,
    LiveServer,
    free_port,
    headless_chromium,
    metric_value,
    session_ray_server,
    wait_state,
    wait_until,
)
from tests.support import make_archive, read_all

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "build" / "test-artifacts" / "services"
GRAFANA = REPO / "deploy" / "monitoring" / "grafana" / "radforge-control-plane.json"
JOB_TIMEOUT = 120


@pytest.fixture(scope="module")
def server(ray_local: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    state = tmp_path_factory.mktemp("jobs-state")
    with session_ray_server(state, max_running_jobs=2, cancel_grace_seconds=10) as live:
        yield live


@pytest.fixture(scope="module")
def ingested(api: httpx.Client, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two jobs for the same archive and dataset, submitted back to back; watched until both end."""
    root = tmp_path_factory.mktemp("e2e")
    archive = make_archive(root / "arch-e2e", n_ct=1, n_mr=0)
    dataset = root / "dataset"
    spec = {"kind": "ingest", "source_uri": str(archive), "dataset_uri": str(dataset)}
    first = api.post("/api/v1/jobs", json=spec)
    second = api.post("/api/v1/jobs", json={**spec, "priority": -1})
    assert first.status_code == 201 and second.status_code == 201, first.text
    ids = [first.json()["id"], second.json()["id"]]
    seen: list[tuple[str, str]] = []

    def both_ended() -> bool:
        states = tuple(api.get(f"/api/v1/jobs/{i}").json()["state"] for i in ids)
        seen.append(states)  # type: ignore[arg-type]
        return all(s not in ("queued", "running") for s in states)

    wait_until(both_ended, timeout=2 * JOB_TIMEOUT, what="both ingest jobs to end", every=0.2)
    return {
        "archive": archive,
        "dataset": dataset,
        "jobs": [api.get(f"/api/v1/jobs/{i}").json() for i in ids],
        "seen": seen,
    }


def test_ingest_job_succeeds_with_progress_result_and_metrics(
    server: LiveServer, api: httpx.Client, ingested: dict[str, Any]
) -> None:
    first, second = ingested["jobs"]
    assert first["state"] == "succeeded", first
    assert second["state"] == "succeeded", second
    # one archive is never worked on by two jobs at once: the second waited for the first
    assert ("running", "running") not in ingested["seen"]
    assert ("running", "queued") in ingested["seen"]

    result, progress = first["result"], first["progress"]
    assert (
        result["committed"] and result["archive_id"] == "arch-e2e" and result["by_status"] == {"ingested": 1}
    )
    assert progress["phase"] == "done"
    assert progress["samples_written"] == result["samples_written"] > 0
    assert progress["series_done"] == progress["series_total"] == 1
    assert progress["bytes_written"] == result["bytes_written"] > 0 and progress["shards_written"] >= 1
    assert first["duration_seconds"] > 0 and first["exit_code"] == 0
    assert second["result"]["committed"] is False  # nothing new: the series was already in the dataset
    assert second["result"]["by_reason"] == {"already_ingested": 1}

    catalog = load_catalog(resolve(str(ingested["dataset"])))
    assert [p["archive_id"] for p in catalog.parts] == ["arch-e2e"]
    assert len(read_all(ingested["dataset"])) == result["samples_written"]

    text = httpx.get(f"{api.base_url}/metrics").text
    assert metric_value(text, "radforge_ingest_samples_written_total") == result["samples_written"]
    assert metric_value(text, "radforge_ingest_bytes_written_total") == result["bytes_written"]
    assert metric_value(text, "radforge_jobs_finished_total", {"kind": "ingest", "state": "succeeded"}) == 2
    assert metric_value(text, "radforge_jobs", {"kind": "ingest", "state": "succeeded"}) == 2
    assert metric_value(text, "radforge_jobs_submitted_total", {"kind": "ingest", "origin": "api"}) == 2
    assert metric_value(text, "radforge_ingest_series_total", {"status": "ingested", "reason": "none"}) == 1
    assert (
        metric_value(
            text, "radforge_ingest_series_total", {"status": "skipped", "reason": "already_ingested"}
        )
        == 1
    )
    assert (
        metric_value(text, "radforge_job_duration_seconds_count", {"kind": "ingest", "state": "succeeded"})
        == 2
    )

    # the job recorded its point of no return (services/progress.py: commit.json)
    record = server.app.state.service.store.get_job(first["id"])  # type: ignore[attr-defined]
    assert read_json(job_file(record.job_dir, COMMIT))["state"] == COMMITTED

    logs = api.get(f"/api/v1/jobs/{first['id']}/logs", params={"lines": 50}).json()["lines"]
    assert any('"samples_written"' in line for line in logs), logs  # the summary line the job printed
    assert not any(f"{ingested['archive']}/" in line for line in logs)


def test_cancel_a_running_job(server: LiveServer, api: httpx.Client, tmp_path: Path) -> None:
    # Big enough that decoding outlasts the cancel (a tiny archive can commit before the cancel lands).
    archive = make_archive(tmp_path / "arch-cancel", n_ct=6, n_mr=0, size=192, n_slices=40, seed=3)
    dataset = tmp_path / "dataset"
    r = api.post(
        "/api/v1/jobs", json={"kind": "ingest", "source_uri": str(archive), "dataset_uri": str(dataset)}
    )
    job_id = r.json()["id"]
    # running, and its driver is up (it reported a phase): cancel while it works on Ray
    wait_until(
        lambda: (j := api.get(f"/api/v1/jobs/{job_id}").json())["state"] == "running" and j["progress"],
        timeout=JOB_TIMEOUT,
        what="the job's driver to report progress",
    )
    r = api.post(f"/api/v1/jobs/{job_id}/cancel")
    assert r.status_code == 202 and r.json()["cancel_requested"], r.text
    job = wait_state(api, job_id, {"cancelled", "succeeded", "failed"}, timeout=JOB_TIMEOUT)
    assert job["state"] == "cancelled" and job["error"] == "cancelled on request", job
    record = server.app.state.service.store.get_job(job_id)  # type: ignore[attr-defined]
    # the job's process group is gone (the supervisor writes exit.json just before it exits)
    wait_until(lambda: not is_running(record.pid, record.proc_start), timeout=30, what="the job to end")
    assert load_catalog(resolve(str(dataset))).parts == []  # nothing committed
    text = httpx.get(f"{api.base_url}/metrics").text
    assert metric_value(text, "radforge_jobs_finished_total", {"kind": "ingest", "state": "cancelled"}) == 1


def _grafana_queries() -> list[str]:
    board = json.loads(GRAFANA.read_text())
    return [t["expr"].replace("$__rate_interval", "1m") for p in board["panels"] for t in p["targets"]]


def test_prometheus_accepts_and_scrapes_metrics(
    server: LiveServer, api: httpx.Client, ingested: dict[str, Any], tmp_path: Path
) -> None:
    text = httpx.get(f"{server.url}/metrics").text
    lint = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr

    port = free_port()
    config = tmp_path / "prometheus.yml"
    target = server.url.removeprefix("http://")
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs:\n  - job_name: radforge\n    static_configs: [{{targets: ['{target}']}}]\n"
    )
    prom = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}/api/v1/query?query="

        def query(expr: str) -> dict[str, Any] | None:
            assert prom.poll() is None, prom.stderr.read().decode() if prom.stderr else "prometheus exited"
            try:
                r = httpx.get(base + urllib.parse.quote(expr), timeout=5)
            except httpx.TransportError:
                return None
            return r.json() if r.status_code == 200 else None  # 503 while it starts

        def scraped_samples() -> float | None:
            answer = query("radforge_ingest_samples_written_total")
            result = (answer or {}).get("data", {}).get("result", [])
            return float(result[0]["value"][1]) if result else None

        samples = wait_until(scraped_samples, timeout=60, what="Prometheus to scrape the service")
        assert samples == ingested["jobs"][0]["result"]["samples_written"]
        up = query('up{job="radforge"}')
        assert up is not None and up["data"]["result"][0]["value"][1] == "1"
        # every panel of the Grafana dashboard is a valid query over these metrics
        for expr in _grafana_queries():
            answer = query(expr)
            assert answer is not None and answer["status"] == "success", (expr, answer)
        states = query("sum by (state) (radforge_jobs)")
        assert states is not None
        assert {r["metric"]["state"]: float(r["value"][1]) for r in states["data"]["result"]}[
            "succeeded"
        ] >= 2
    finally:
        prom.terminate()
        prom.wait(timeout=30)


def test_dashboard_renders_in_headless_chromium(
    server: LiveServer, ingested: dict[str, Any], tmp_path: Path
) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    shot.unlink(missing_ok=True)
    # the token in a fragment: never sent to the server
    dom = headless_chromium(
        f"{server.url}/dashboard#token={TOKEN}", profile=tmp_path / "profile", screenshot=shot
    )
    for job in ingested["jobs"]:
        assert f'data-job-id="{job["id"]}"' in dom, dom[-3000:]
    assert "succeeded" in dom and "arch-e2e" in dom
    assert shot.exists() and shot.stat().st_size > 10_000
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
