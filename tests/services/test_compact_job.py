"""Compaction jobs end to end over HTTP: a real uvicorn server, real SQLite, the session's local Ray, a
real dataset of small shards (the sharder tests' writer); allowlist (403), fields (422), locks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from radforge.services.app.models import CompactJobCreate, IngestJobCreate
from radforge.services.jobs.kinds import KINDS
from radforge.sharder.commit_log import read_state
from radforge.sharder.verify import verify_dataset
from tests.services.support import metric_value, session_ray_server, wait_state
from tests.sharder.test_compact import TARGET, make_dataset, stock_samples

JOB_TIMEOUT = 120
TARGET_MB = TARGET / (1 << 20)


@pytest.fixture(scope="module")
def allowed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The only prefix compaction jobs may write (``allowed_datasets``)."""
    return tmp_path_factory.mktemp("compact-allowed")


@pytest.fixture(scope="module")
def api(ray_local: None, allowed: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    server = session_ray_server(tmp_path_factory.mktemp("compact-state"), allowed_datasets=[str(allowed)])
    with server as live, live.client() as client:
        yield client


def compact_spec(dataset: Path | str, **extra: Any) -> dict[str, Any]:
    return {"kind": "compact", "dataset_uri": str(dataset), "target_shard_mb": TARGET_MB, **extra}


def test_compact_job_rewrites_the_dataset_and_reports_it(api: httpx.Client, allowed: Path) -> None:
    root = make_dataset(allowed / "ds")
    expected, shards_before = stock_samples(root.path), read_state(root).total_shards

    r = api.post("/api/v1/jobs", json=compact_spec(root.path))
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["min_shard_mb"] is None  # defaults stored
    job = wait_state(api, r.json()["id"], {"succeeded", "failed", "cancelled"}, timeout=JOB_TIMEOUT)
    assert job["state"] == "succeeded", (job["error"], api.get(f"/api/v1/jobs/{job['id']}/logs").json())

    result, progress = job["result"], job["progress"]
    assert result["shards_before"] == shards_before and result["shards_after"] == 2
    assert [c["part"] for c in result["compactions"]] == list(read_state(root).parts)
    assert progress["phase"] == "done" and progress["shards_written"] == 2
    assert progress["samples_written"] == len(expected)
    assert stock_samples(root.path) == expected and verify_dataset(root.uri).ok
    text = httpx.get(f"{api.base_url}/metrics").text
    assert metric_value(text, "radforge_jobs_finished_total", {"kind": "compact", "state": "succeeded"}) == 1


def test_a_compact_job_of_no_dataset_fails_naming_it(api: httpx.Client, allowed: Path) -> None:
    r = api.post("/api/v1/jobs", json=compact_spec(allowed / "nothing-here"))
    assert r.status_code == 201, r.text
    job = wait_state(api, r.json()["id"], {"succeeded", "failed", "cancelled"}, timeout=JOB_TIMEOUT)
    assert job["state"] == "failed" and "has no commit log" in job["error"], job


def test_a_dataset_outside_the_allowlist_gets_403(api: httpx.Client) -> None:
    r = api.post("/api/v1/jobs", json=compact_spec("/elsewhere/ds"))
    assert r.status_code == 403, r.text
    assert r.json()["detail"].startswith("dataset_uri: ") and "outside the allowed datasets" in r.text


@pytest.mark.parametrize(
    "change, loc, words",
    [
        ({"target_shard_mb": 0}, ["body", "target_shard_mb"], "greater than 0"),
        ({"min_shard_mb": -1}, ["body", "min_shard_mb"], "greater than 0"),
        ({"compression": "lz4"}, ["body", "compression"], "valid codecs"),
        ({"dataset_uri": "s3://k:secret@bucket/ds"}, ["body", "dataset_uri"], "credentials"),
        ({"vacuum": True}, ["body", "vacuum"], "Extra inputs"),
    ],
)
def test_invalid_compact_specs_get_422_naming_the_field(
    api: httpx.Client, allowed: Path, change: dict[str, Any], loc: list[Any], words: str
) -> None:
    r = api.post("/api/v1/jobs", json={**compact_spec(allowed / "ds"), **change})
    assert r.status_code == 422, r.text
    errors = r.json()["detail"]
    assert any(e["loc"] == loc and words in e["msg"] for e in errors), errors
    assert "secret" not in r.text


def test_one_compaction_per_dataset_beside_its_ingests(tmp_path: Path) -> None:
    (tmp_path / "ds").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "ds")
    a = CompactJobCreate(kind="compact", dataset_uri=str(tmp_path / "ds"))
    b = CompactJobCreate(kind="compact", dataset_uri=str(tmp_path / "alias"))
    ingest = IngestJobCreate(
        kind="ingest", source_uri=str(tmp_path / "arch"), dataset_uri=str(tmp_path / "ds")
    )
    assert KINDS["compact"].locks(a) == KINDS["compact"].locks(b) == {f"compact:{tmp_path / 'ds'}"}
    assert not KINDS["compact"].locks(a) & KINDS["ingest"].locks(ingest)  # the log orders their commits
