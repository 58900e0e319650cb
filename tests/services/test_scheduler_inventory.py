"""The scheduler rescans ingested archives against their inventories (moto S3, real jobs on the session Ray).

An unchanged archive gets no job (the poll says why); a delivery into it gets one, which reads
only the new objects' headers (the job's result counts them).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from radforge.ingest.inventory import archive_unchanged
from tests.services.support import LiveServer, make_settings, wait_state, wait_until
from tests.services.test_scheduler import JOB_TIMEOUT, upload
from tests.support import make_archive


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


def test_unchanged_archive_gets_no_job_and_a_delivery_reads_only_its_headers(
    server: LiveServer, s3_bucket: str, tmp_path: Path
) -> None:
    incoming, dataset = f"s3://{s3_bucket}/incoming", f"s3://{s3_bucket}/datasets/ct"
    archive = f"{incoming}/2026-11-01"
    upload(make_archive(tmp_path / "a", n_ct=1, n_mr=0, seed=71), archive)
    with server.client() as api:
        r = api.post(
            "/api/v1/sources",
            json={
                "name": "hospital-a",
                "uri": f"{incoming}/",
                "dataset_uri": dataset,
                "interval_seconds": 3600,
                "rescan_ingested": True,
            },
        )
        assert r.status_code == 201, r.text
        sid = r.json()["id"]

        def jobs() -> list[dict]:
            return api.get("/api/v1/jobs", params={"source_id": sid, "limit": 100}).json()["items"]  # type: ignore

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
