"""The HTTP API without Ray, over a real uvicorn server and a real SQLite file or PostgreSQL server:
authentication, validation (422 naming the field), allowlists (403), train specs resolved at
submission, listing and paging, sources, cancel of a queued job, a vanished job process, no cancel
past a job's commit point.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from radforge.services.app.models import JobRecord, JobState
from tests.services.support import TOKEN, LiveServer, make_settings, wait_until

AUTH = {"Authorization": f"Bearer {TOKEN}"}
ALLOWED_SOURCES = ["s3://hospital-a/incoming/"]
ALLOWED_DATASETS = ["s3://radforge-datasets/"]
KIND_NAMES = "compact, eval, ingest, train"  # every job kind of this build, as the 422 lists them
JOB = {
    "kind": "ingest",
    "source_uri": "s3://hospital-a/incoming/2026-11-27",
    "dataset_uri": "s3://radforge-datasets/ct",
}
SOURCE = {
    "name": "hospital-a",
    "uri": "s3://hospital-a/incoming/",
    "dataset_uri": "s3://radforge-datasets/ct",
    "interval_seconds": 3600,
}


@pytest.fixture(scope="module")
def server(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The API over each database backend (SQLite, PostgreSQL): every test here runs on both."""
    state = tmp_path_factory.mktemp("api-state")
    settings = make_settings(
        state,
        database_url=database,
        # nothing listens there: these tests never let a job start (see test_cancel_a_queued_job)
        ray_address="127.0.0.1:9",
        allowed_sources=ALLOWED_SOURCES,
        allowed_datasets=ALLOWED_DATASETS,
        scheduler_tick_seconds=600,  # no background polls during these tests
    )
    with LiveServer(settings) as live:
        yield live


@pytest.fixture
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client(token=None) as c:
        yield c


@pytest.fixture
def service(server: LiveServer) -> Any:
    return server.app.state.service


def test_openapi_describes_the_api(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    paths = set(spec["paths"])
    assert {
        "/api/v1/jobs",
        "/api/v1/jobs/{job_id}",
        "/api/v1/jobs/{job_id}/logs",
        "/api/v1/jobs/{job_id}/cancel",
        "/api/v1/sources",
        "/api/v1/sources/{source_id}",
        "/api/v1/sources/{source_id}/poll",
        "/api/v1/overview",
        "/api/v1/history",
        "/healthz",
        "/metrics",
    } <= paths
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert "ingest" in str(spec["components"]["schemas"]["IngestJobCreate"])


def test_probes_metrics_and_dashboard_need_no_token(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "ray": "external"}
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    page = client.get("/dashboard")
    assert page.status_code == 200 and "radforge control plane" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/dashboard/app.js").status_code == 200
    assert client.get("/dashboard/..%2Fmain.py").status_code == 404


PROTECTED = [
    ("POST", "/api/v1/jobs", JOB),
    ("GET", "/api/v1/jobs", None),
    ("GET", "/api/v1/jobs/abc", None),
    ("GET", "/api/v1/jobs/abc/logs", None),
    ("POST", "/api/v1/jobs/abc/cancel", None),
    ("POST", "/api/v1/sources", SOURCE),
    ("GET", "/api/v1/sources", None),
    ("PATCH", "/api/v1/sources/abc", {"enabled": False}),
    ("DELETE", "/api/v1/sources/abc", None),
    ("POST", "/api/v1/sources/abc/poll", None),
    ("GET", "/api/v1/overview", None),
    ("GET", "/api/v1/history", None),
]


@pytest.mark.parametrize("method, path, body", PROTECTED, ids=[f"{m} {p}" for m, p, _ in PROTECTED])
def test_token_required(client: httpx.Client, method: str, path: str, body: dict | None) -> None:
    r = client.request(method, path, json=body)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = client.request(method, path, json=body, headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert r.status_code == 401
    r = client.request(method, path, json=body, headers={"Authorization": f"Bearer {TOKEN}x"})
    assert r.status_code == 403 and r.json() == {"detail": "the bearer token is not valid"}


@pytest.mark.parametrize(
    "change, loc, words",
    [
        ({"source_uri": None}, ["body", "source_uri"], "Field required"),
        ({"kind": "resize"}, ["body", "kind"], f"unknown or missing job kind; available: {KIND_NAMES}"),
        ({"kind": None}, ["body", "kind"], f"unknown or missing job kind; available: {KIND_NAMES}"),
        ({"priority": 5000}, ["body", "priority"], "less than or equal to 1000"),
        ({"colour": "blue"}, ["body", "colour"], "Extra inputs are not permitted"),
        (
            {"config": {"planes": ["oblique"]}},
            ["body", "config", "planes", 0],
            "'axial', 'coronal' or 'sagittal'",
        ),
        (
            {"config": {"windows": {"ct": ["disco"]}}},
            ["body", "config", "windows", "ct"],
            "unknown CT window",
        ),
        ({"config": {"ray": {"address": "10.0.0.1:6379"}}}, ["body"], "config.ray is set by the service"),
        ({"config": {"deid": {"salt": "my-secret-salt"}}}, ["body"], "config.deid.salt is not accepted"),
        ({"source_uri": "s3://key:secret@hospital-a/x"}, ["body", "source_uri"], "credentials in URIs"),
        ({"dataset_uri": "s3://radforge-datasets/../other"}, ["body", "dataset_uri"], "'..' path segments"),
    ],
)
def test_invalid_specs_get_422_naming_the_field(
    client: httpx.Client, change: dict, loc: list, words: str
) -> None:
    body = {k: v for k, v in {**JOB, **change}.items() if v is not None}
    r = client.post("/api/v1/jobs", json=body, headers=AUTH)
    assert r.status_code == 422
    errors = r.json()["detail"]
    assert any(e["loc"] == loc and words in e["msg"] for e in errors), errors
    assert "secret" not in r.text.replace("config.deid.salt", "")  # inputs are never echoed back


@pytest.mark.parametrize(
    "change, field",
    [
        ({"source_uri": "s3://hospital-b/incoming/x"}, "source_uri"),
        ({"source_uri": "s3://hospital-a/incoming-old/x"}, "source_uri"),
        ({"source_uri": "/local/path/archive"}, "source_uri"),
        ({"dataset_uri": "s3://hospital-a/incoming/dataset"}, "dataset_uri"),
    ],
)
def test_uris_outside_the_allowlist_get_403(client: httpx.Client, change: dict, field: str) -> None:
    r = client.post("/api/v1/jobs", json={**JOB, **change}, headers=AUTH)
    assert r.status_code == 403
    assert r.json()["detail"].startswith(f"{field}: ")
    r = client.post(
        "/api/v1/sources",
        json={
            **SOURCE,
            "uri": change.get("source_uri", SOURCE["uri"]),
            "dataset_uri": change.get("dataset_uri", SOURCE["dataset_uri"]),
        },
        headers=AUTH,
    )
    assert r.status_code == 403


TINY = str(Path(__file__).resolve().parents[2] / "configs" / "tiny-cpu.yaml")
TRAIN = {
    "kind": "train",
    "config_uri": TINY,
    "output_uri": "s3://radforge-datasets/runs/r1",
    "overrides": ["data.mix.sources=[{uri: 's3://radforge-datasets/ct'}]", "steps=5"],
}


@pytest.mark.parametrize(
    "change, status, loc_or_field, words",
    [
        ({"output_uri": "s3://elsewhere/run"}, 403, "output_uri", "outside the allowed datasets"),
        ({"config_uri": "s3://configs/run.yaml"}, 403, "config_uri", "outside the allowed configs"),
        (
            {"overrides": ["data.mix.sources=[{uri: 's3://hospital-a/incoming/x'}]"]},
            403,
            "config_uri.data.mix.sources[0].uri",
            "outside the allowed datasets",
        ),
        (
            {"overrides": ["batch.global_size=0"]},
            422,
            ["body", "config_uri", "batch", "global_size"],
            "greater",
        ),
        (
            {"overrides": ["ray_address=10.0.0.1:6379"]},
            422,
            ["body", "overrides", "ray_address"],
            "by the service",
        ),
        ({"overrides": ["output=/tmp/x"]}, 422, ["body", "overrides", "output"], "output_uri"),
        ({"overrides": ["not an override"]}, 422, ["body", "overrides", 0], "pattern"),
        ({"config": {"steps": 3}}, 422, ["body"], "exactly one of config and config_uri"),
        ({"config_uri": "/nonexistent/run.yaml"}, 422, ["body", "config_uri"], "cannot read"),
    ],
)
def test_train_specs_are_checked_at_submission(
    client: httpx.Client, change: dict, status: int, loc_or_field: Any, words: str
) -> None:
    r = client.post("/api/v1/jobs", json={**TRAIN, **change}, headers=AUTH)
    assert r.status_code == status, r.text
    if status == 403:
        assert r.json()["detail"].startswith(f"{loc_or_field}: ") and words in r.json()["detail"]
    else:
        errors = r.json()["detail"]
        assert any(e["loc"] == loc_or_field and words in e["msg"] for e in errors), errors


def test_a_train_spec_is_resolved_once_and_stored_whole(client: httpx.Client) -> None:
    inline = {"data": {"mix": {"sources": [{"uri": "s3://radforge-datasets/ct"}]}}, "steps": 7}
    r = client.post(
        "/api/v1/jobs",
        json={"kind": "train", "config": inline, "output_uri": "s3://radforge-datasets/runs/inline"},
        headers=AUTH,
    )
    assert r.status_code == 201, r.text
    run = r.json()["spec"]["run"]
    assert run["steps"] == 7 and run["output"] == "s3://radforge-datasets/runs/inline"
    assert run["ray_address"] is None and run["recipe"]["model"]  # defaults filled in, once
    r = client.post("/api/v1/jobs", json=TRAIN, headers=AUTH)
    assert r.status_code == 201, r.text
    spec = r.json()["spec"]
    assert spec["config_uri"] == TINY and spec["overrides"] == TRAIN["overrides"]
    assert spec["run"]["steps"] == 5 and spec["run"]["recipe_file"].endswith("recipe-tiny-cpu.yaml")
    assert spec["run"]["output"] == TRAIN["output_uri"]  # the file's output gives way to output_uri


def _record(i: int, *, state: JobState, kind: str = "ingest") -> JobRecord:
    t = 1_700_000_000.0 + i
    return JobRecord(
        id=f"job-{i:03d}",
        kind=kind,
        state=state,
        spec={
            "kind": kind,
            "source_uri": f"s3://hospital-a/incoming/{i}",
            "dataset_uri": "s3://radforge-datasets/ct",
        },
        locks=[],
        created_at=t,
        updated_at=t,
        started_at=t,
        finished_at=t + 10 if state != JobState.RUNNING else None,
        pid=4242,
        job_dir="/srv/jobs/secret-layout",
        ray_address="10.0.0.1:6379",
        result={"samples_written": i} if state == JobState.SUCCEEDED else None,
    )


def test_list_filter_and_page(client: httpx.Client, service: Any) -> None:
    store = service.store
    store.insert_jobs([_record(i, state=JobState.SUCCEEDED if i % 5 else JobState.FAILED) for i in range(25)])
    page = client.get(
        "/api/v1/jobs", params={"limit": 10, "offset": 20, "kind": "ingest"}, headers=AUTH
    ).json()
    assert page["total"] >= 25 and page["limit"] == 10 and page["offset"] == 20
    everything = client.get("/api/v1/jobs", params={"limit": 500}, headers=AUTH).json()["items"]
    created = [j["created_at"] for j in everything]
    assert created == sorted(created, reverse=True)  # newest first
    failed = client.get("/api/v1/jobs", params={"state": "failed"}, headers=AUTH).json()
    assert failed["total"] == 5 and {j["id"] for j in failed["items"]} == {
        f"job-{i:03d}" for i in range(0, 25, 5)
    }
    both = client.get(
        "/api/v1/jobs", params=[("state", "failed"), ("state", "succeeded")], headers=AUTH
    ).json()
    assert both["total"] == 25
    assert client.get("/api/v1/jobs", params={"limit": 0}, headers=AUTH).status_code == 422
    assert client.get("/api/v1/jobs", params={"state": "sleeping"}, headers=AUTH).status_code == 422
    job = client.get("/api/v1/jobs/job-007", headers=AUTH).json()
    assert job["result"] == {"samples_written": 7} and job["duration_seconds"] == 10.0
    # process details and paths of the service never leave it
    for key in ("pid", "job_dir", "ray_address", "locks", "proc_start"):
        assert key not in job
    assert "secret-layout" not in str(everything)
    assert client.get("/api/v1/jobs/nope", headers=AUTH).status_code == 404
    r = client.post("/api/v1/jobs/job-007/cancel", headers=AUTH)
    assert r.status_code == 409 and "already succeeded" in r.json()["detail"]


def test_cancel_a_queued_job_and_close_a_vanished_one(
    client: httpx.Client, service: Any, tmp_path: Path
) -> None:
    """A job holding the archive keeps a new job for it queued; cancelling that one is immediate.

    The holder is recorded as running with a real process (as if started by an earlier service);
    once that process ends without an exit record, the runner closes it as failed.
    """
    store = service.store
    holder = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    from radforge.services.jobs.process_identity import process_start_ticks

    archive = JOB["source_uri"]
    now = time.time()
    store.insert_job(
        JobRecord(
            id="holder",
            kind="ingest",
            state=JobState.RUNNING,
            spec=JOB,
            locks=[f"archive:{archive}", "dataset:s3://radforge-datasets/other"],
            created_at=now,
            updated_at=now,
            started_at=now,
            pid=holder.pid,
            proc_start=process_start_ticks(holder.pid),
            job_dir=str(tmp_path),
        )
    )
    try:
        r = client.post("/api/v1/jobs", json=JOB, headers=AUTH)
        assert r.status_code == 201 and r.headers["location"] == f"/api/v1/jobs/{r.json()['id']}"
        job_id = r.json()["id"]
        service.runner.tick()  # a dispatch pass, now: the job must stay queued
        assert client.get(f"/api/v1/jobs/{job_id}", headers=AUTH).json()["state"] == "queued"
        r = client.post(f"/api/v1/jobs/{job_id}/cancel", headers=AUTH)
        assert r.status_code == 200 and r.json()["state"] == "cancelled" and r.json()["cancel_requested"]
        assert client.post(f"/api/v1/jobs/{job_id}/cancel", headers=AUTH).status_code == 409
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=20)
    gone = wait_until(
        lambda: (j := client.get("/api/v1/jobs/holder", headers=AUTH).json())["state"] != "running" and j,
        timeout=20,
        what="the runner to notice the vanished process",
    )
    assert gone["state"] == "failed" and "ended without an exit status" in gone["error"]
    metrics = client.get("/metrics").text
    assert 'radforge_jobs_finished_total{kind="ingest",state="cancelled"} 1.0' in metrics
    assert 'radforge_jobs_finished_total{kind="ingest",state="failed"} 1.0' in metrics


def test_sources_crud(client: httpx.Client) -> None:
    r = client.post("/api/v1/sources", json=SOURCE, headers=AUTH)
    assert r.status_code == 201, r.text
    source = r.json()
    assert (
        source["interval_seconds"] == 3600
        and source["enabled"]
        and source["uri"] == "s3://hospital-a/incoming"
    )
    assert client.post("/api/v1/sources", json=SOURCE, headers=AUTH).status_code == 409
    for change, words in [
        ({"cron": "*/5 * * * *"}, "exactly one of interval_seconds and cron"),
        ({"interval_seconds": None}, "exactly one of interval_seconds and cron"),
        ({"interval_seconds": None, "cron": "61 * * * *"}, "minute: 61 is outside 0-59"),
        ({"name": "Hospital A"}, "String should match pattern"),
        ({"config": {"archive_id": "fixed"}}, "config.archive_id is set per archive"),
    ]:
        r = client.post("/api/v1/sources", json={**SOURCE, "name": "other", **change}, headers=AUTH)
        assert r.status_code == 422 and words in str(r.json()["detail"]), (change, r.text)
    sid = source["id"]
    r = client.patch(f"/api/v1/sources/{sid}", json={"cron": "0 3 * * *", "enabled": False}, headers=AUTH)
    assert r.status_code == 200
    assert (r.json()["cron"], r.json()["interval_seconds"], r.json()["enabled"]) == ("0 3 * * *", None, False)
    assert r.json()["next_poll_at"].endswith("03:00:00Z")
    assert client.patch(f"/api/v1/sources/{sid}", json={"cron": "x"}, headers=AUTH).status_code == 422
    assert [s["name"] for s in client.get("/api/v1/sources", headers=AUTH).json()] == ["hospital-a"]
    assert client.delete(f"/api/v1/sources/{sid}", headers=AUTH).status_code == 204
    assert client.get(f"/api/v1/sources/{sid}", headers=AUTH).status_code == 404
    assert client.delete(f"/api/v1/sources/{sid}", headers=AUTH).status_code == 404


@pytest.mark.parametrize("commit", ["committing", "committed"])
def test_a_job_past_its_commit_point_is_not_cancelled(
    client: httpx.Client, service: Any, tmp_path: Path, commit: str
) -> None:
    """Once a job has begun its dataset commit, a cancel gets 409; a signal that lands anyway (sent
    just before) cannot turn a committed job into a cancelled one: it is recorded as succeeded.

    The job is a real supervised process (radforge.services.jobs.supervisor) whose folder says where the
    commit is.
    """
    from radforge.services.jobs.process_identity import process_start_ticks, signal_group
    from radforge.services.jobs.progress import COMMIT, write_json_atomic

    write_json_atomic(tmp_path / COMMIT, {"state": commit, "committed": True})
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "radforge.services.jobs.supervisor",
            "--job-dir",
            str(tmp_path),
            "--",
            sys.executable,
            "-c",
            "import signal; signal.pause()",
        ],
        start_new_session=True,
    )
    job_id = f"past-commit-{commit}"
    now = time.time()
    store = service.store
    store.insert_job(
        JobRecord(
            id=job_id,
            kind="ingest",
            state=JobState.RUNNING,
            spec=JOB,
            locks=[],
            created_at=now,
            updated_at=now,
            started_at=now,
            pid=proc.pid,
            proc_start=process_start_ticks(proc.pid),
            job_dir=str(tmp_path),
        )
    )
    r = client.post(f"/api/v1/jobs/{job_id}/cancel", headers=AUTH)
    assert r.status_code == 409 and "committing its dataset" in r.json()["detail"], r.text
    assert not store.get_job(job_id).cancel_requested
    wait_until(lambda: (tmp_path / "log.txt").exists(), timeout=20, what="the supervisor to start")
    signal_group(proc.pid, signal.SIGTERM)  # a cancel signal already in flight when the commit began
    proc.wait(timeout=20)
    job = wait_until(
        lambda: (j := client.get(f"/api/v1/jobs/{job_id}", headers=AUTH).json())["state"] != "running" and j,
        timeout=20,
        what="the runner to close the job",
    )
    if commit == "committed":
        assert job["state"] == "succeeded" and job["error"] is None and job["result"] == {"committed": True}
    else:  # killed in the middle of its commit: the catalog decides, and the error says so
        assert job["state"] == "failed" and "ended during its dataset commit" in job["error"], job
