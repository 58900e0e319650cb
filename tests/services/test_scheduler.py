"""The scheduler over a real bucket (moto S3) with real ingest jobs on the session's local Ray:
a watched prefix receives a new archive -> exactly one job for it, none for one already ingested;
an ingested archive rescanned against its inventory gets a job only when its objects changed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from radforge.ingest.inventory import archive_unchanged
from radforge.services.schedule.scheduler import fingerprint, list_archives
from radforge.sharder.catalog import load_catalog
from radforge.storage import resolve
from tests.services.support import LiveServer, make_settings, metric_value, wait_state, wait_until
from tests.support import make_archive

JOB_TIMEOUT = 120


def upload(local: Path, uri: str) -> None:
    loc = resolve(uri)
    for path in sorted(local.rglob("*")):
        if path.is_file():
            loc.fs.put_file(str(path), loc.join(str(path.relative_to(local))).path)


def add_source(api: httpx.Client, incoming: str, dataset: str, **extra: Any) -> str:
    """Watch ``incoming/`` for archives going into ``dataset`` (polled hourly); returns the source id."""
    spec = {"name": "hospital-a", "uri": f"{incoming}/", "dataset_uri": dataset, "interval_seconds": 3600}
    r = api.post("/api/v1/sources", json={**spec, **extra})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def source_jobs(api: httpx.Client, sid: str) -> list[dict]:
    return api.get("/api/v1/jobs", params={"source_id": sid, "limit": 100}).json()["items"]  # type: ignore


@pytest.fixture
def server(ray_local: None, s3_bucket: str, tmp_path: Path) -> Iterator[LiveServer]:
    import ray

    settings = make_settings(
        tmp_path / "state",
        ray_address=ray.get_runtime_context().gcs_address,
        allowed_sources=[f"s3://{s3_bucket}/incoming/"],
        allowed_datasets=[f"s3://{s3_bucket}/datasets/"],
        scheduler_tick_seconds=0.2,
    )
    with LiveServer(settings) as live:
        yield live


def test_new_archive_gets_exactly_one_job(server: LiveServer, s3_bucket: str, tmp_path: Path) -> None:
    incoming = f"s3://{s3_bucket}/incoming"
    dataset = f"s3://{s3_bucket}/datasets/ct"
    upload(make_archive(tmp_path / "a1", n_ct=1, n_mr=0, seed=11), f"{incoming}/2026-11-01")
    upload(
        make_archive(tmp_path / "up", n_ct=1, n_mr=0, seed=12), f"{incoming}/_uploading"
    )  # not ready: skipped
    with server.client() as api:
        sid = add_source(api, incoming, dataset)

        def jobs() -> list[dict]:
            return source_jobs(api, sid)

        # the first poll is due at once: the scheduler's own loop submits the first archive
        (first,) = wait_until(jobs, timeout=30, what="the scheduler to submit a job")
        assert first["origin"] == "scheduler" and first["archive"] == "2026-11-01"
        assert first["spec"]["source_uri"] == f"{incoming}/2026-11-01"
        assert (
            wait_state(api, first["id"], {"succeeded", "failed"}, timeout=JOB_TIMEOUT)["state"] == "succeeded"
        )
        source = api.get(f"/api/v1/sources/{sid}").json()
        assert source["last_error"] is None and source["last_lag_seconds"] is not None
        assert source["last_lag_seconds"] < 5
        assert (
            3590 < (_ts(source["next_poll_at"]) - _ts(source["last_poll_at"])) < 3610
        )  # next poll one interval later

        # a new delivery arrives; "poll now" submits exactly one job, for it only
        upload(make_archive(tmp_path / "a2", n_ct=1, n_mr=0, seed=13), f"{incoming}/2026-11-02")
        poll = api.post(f"/api/v1/sources/{sid}/poll").json()
        decisions = {a["name"]: a for a in poll["archives"]}
        assert set(decisions) == {"2026-11-01", "2026-11-02"}
        assert not decisions["2026-11-01"]["submit"] and decisions["2026-11-01"]["reason"] == "ingested"
        assert decisions["2026-11-02"]["submit"] and decisions["2026-11-02"]["reason"] == "new archive"
        assert poll["submitted"] == [decisions["2026-11-02"]["job_id"]]
        again = api.post(f"/api/v1/sources/{sid}/poll").json()
        assert again["submitted"] == []  # queued/running, or already ingested: never a second job
        second = wait_state(api, poll["submitted"][0], {"succeeded", "failed"}, timeout=JOB_TIMEOUT)
        assert second["state"] == "succeeded" and second["result"]["archive_id"] == "2026-11-02"
        last = api.post(f"/api/v1/sources/{sid}/poll").json()
        assert last["submitted"] == [] and {a["reason"] for a in last["archives"]} == {"ingested"}
        assert sorted(j["archive"] for j in jobs()) == ["2026-11-01", "2026-11-02"]

        metrics = httpx.get(f"{server.url}/metrics").text
        assert (
            metric_value(metrics, "radforge_jobs_submitted_total", {"kind": "ingest", "origin": "scheduler"})
            == 2
        )
        assert (metric_value(metrics, "radforge_scheduler_polls_total", {"outcome": "ok"}) or 0) >= 4
        assert metric_value(metrics, "radforge_scheduler_lag_seconds") is not None
    parts = load_catalog(resolve(dataset)).parts
    assert sorted(p["archive_id"] for p in parts) == ["2026-11-01", "2026-11-02"]


def _ts(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text).timestamp()


def test_listing_ready_markers_and_fingerprints(tmp_path: Path) -> None:
    root = tmp_path / "incoming"
    for name in ("b-2026", "a-2026", ".hidden", "_staging"):
        (root / name / "s1").mkdir(parents=True)
        (root / name / "s1" / "1.dcm").write_bytes(b"x" * 10)
    (root / "loose-file.dcm").write_bytes(b"x")
    assert list_archives(str(root), ready_marker=None) == {
        "a-2026": str(root / "a-2026"),
        "b-2026": str(root / "b-2026"),
    }
    (root / "b-2026" / "_READY").write_bytes(b"")
    assert list(list_archives(str(root), ready_marker="_READY")) == ["b-2026"]
    assert list_archives(str(tmp_path / "missing"), ready_marker=None) == {}

    before = fingerprint(str(root / "a-2026"))
    assert fingerprint(str(root / "a-2026")) == before
    (root / "a-2026" / "s2").mkdir()
    (root / "a-2026" / "s2" / "1.dcm").write_bytes(b"late series")
    assert fingerprint(str(root / "a-2026")) != before


def test_unchanged_archive_gets_no_job_and_a_delivery_reads_only_its_headers(
    server: LiveServer, s3_bucket: str, tmp_path: Path
) -> None:
    """An unchanged archive gets no job (the poll says why); a delivery gets one reading only its headers."""
    incoming, dataset = f"s3://{s3_bucket}/incoming", f"s3://{s3_bucket}/datasets/ct"
    archive = f"{incoming}/2026-11-01"
    upload(make_archive(tmp_path / "a", n_ct=1, n_mr=0, seed=71), archive)
    with server.client() as api:
        sid = add_source(api, incoming, dataset, rescan_ingested=True)

        def jobs() -> list[dict]:
            return source_jobs(api, sid)

        (first,) = wait_until(jobs, timeout=30, what="the scheduler to submit a job")
        done = wait_state(api, first["id"], {"succeeded", "failed"}, timeout=JOB_TIMEOUT)
        assert done["state"] == "succeeded", done
        assert (done["result"]["headers_read"], done["result"]["headers_reused"]) == (6, 0)
        assert archive_unchanged(dataset, archive) is True

        poll = api.post(f"/api/v1/sources/{sid}/poll").json()
        (decision,) = poll["archives"]
        assert poll["submitted"] == [] and not decision["submit"]
        assert "no object added, changed or removed" in decision["reason"]

        upload(make_archive(tmp_path / "late", n_ct=1, n_mr=0, seed=72), f"{archive}/late")
        poll = api.post(f"/api/v1/sources/{sid}/poll").json()
        (decision,) = poll["archives"]
        assert decision["submit"] and "changed" in decision["reason"], decision
        second = wait_state(api, decision["job_id"], {"succeeded", "failed"}, timeout=JOB_TIMEOUT)
        assert second["state"] == "succeeded", second
        assert (second["result"]["headers_read"], second["result"]["headers_reused"]) == (6, 6)
        assert second["result"]["committed"]

        last = api.post(f"/api/v1/sources/{sid}/poll").json()
        assert last["submitted"] == [] and not last["archives"][0]["submit"]
        assert len(jobs()) == 2
