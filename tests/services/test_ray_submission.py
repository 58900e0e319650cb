"""Jobs through Ray's Job Submission API: a real Ray head serving its dashboard on 127.0.0.1 (its own
process group, torn down after), the service pointed at ``http://127.0.0.1:PORT``, job folders on a
moto S3 bucket (what the control plane and a remote cluster both reach). A job is submitted, the
service is stopped and started again and re-attaches to it by its submission id; a second job is
cancelled through ``stop_job``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from radforge.services.app.models import JobRecord
from radforge.services.app.settings import ServiceSettings
from radforge.services.jobs.ray_submission import submission_id
from radforge.services.jobs.raycluster import EmbeddedRay
from radforge.sharder.catalog import load_catalog
from radforge.storage import resolve
from tests.services.support import LiveServer, free_port, make_settings, wait_state, wait_until
from tests.support import make_archive

JOB_TIMEOUT = 180


@pytest.fixture(scope="module")
def ray_dashboard(ray_local: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Ray head with its dashboard (the Job Submission API) on 127.0.0.1; yields its URL.

    The session's local Ray runs beside it on purpose: its dashboard agent holds Ray's default agent
    port, as another Ray on a real host would, and this head must still get a working job agent.
    """
    # a remote cluster as the service meets it: no Ray token (the network protects it, deploy/)
    head = EmbeddedRay(
        tmp_path_factory.mktemp("ray-head"), num_cpus=2, dashboard_port=free_port(), token_auth=False
    )
    try:
        head.address()
        url = head.dashboard_url()
        assert url is not None, "the head did not report a dashboard"

        def answers() -> bool:
            try:
                return httpx.get(f"{url}/api/version", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(answers, timeout=60, what="Ray's dashboard to answer")
        yield url
    finally:
        head.close(jobs_running=False)


def test_jobs_through_the_job_submission_api(ray_dashboard: str, s3_bucket: str, tmp_path: Path) -> None:
    from ray.job_submission import JobSubmissionClient

    settings = make_settings(
        tmp_path / "state",
        ray_address=ray_dashboard,
        ray_job_python=sys.executable,
        jobs_uri=f"s3://{s3_bucket}/jobs",
        cancel_grace_seconds=10,
    )
    archive = make_archive(tmp_path / "arch-rj", n_ct=1, n_mr=0)
    dataset = tmp_path / "dataset"
    spec = {"kind": "ingest", "source_uri": str(archive), "dataset_uri": str(dataset)}
    ray_client = JobSubmissionClient(ray_dashboard)

    def ray_knows(sid: str) -> bool:
        return any(j.submission_id == sid for j in ray_client.list_jobs())

    with LiveServer(settings) as live, live.client() as api:
        job_id = api.post("/api/v1/jobs", json=spec).json()["id"]
        store = live.app.state.service.store  # type: ignore[attr-defined]
        # the id is recorded before the submission (so a restart can re-attach); wait for Ray's side
        wait_until(
            lambda: (
                store.get_job(job_id).ray_job_id == submission_id(job_id) and ray_knows(submission_id(job_id))
            ),
            timeout=90,  # the service retries a submission for up to 60 s while the head's agent registers
            what="the job to be submitted to Ray",
        )
    # the service is gone; the job is Ray's
    info = ray_client.get_job_info(submission_id(job_id))
    assert info.metadata == {"radforge_job_id": job_id} and "radforge.services.jobs.ingest" in info.entrypoint
    assert "RADFORGE_SALT" not in str(info.runtime_env)  # secrets stay in the cluster's own environment

    with LiveServer(settings) as live, live.client() as api:
        job = wait_state(api, job_id, {"succeeded", "failed", "cancelled"}, timeout=JOB_TIMEOUT)
        assert job["state"] == "succeeded", job
        assert job["progress"]["series_done"] == job["progress"]["series_total"] == 1
        assert job["result"]["committed"] and job["result"]["samples_written"] > 0
        assert [p["archive_id"] for p in load_catalog(resolve(str(dataset))).parts] == ["arch-rj"]
        logs = api.get(f"/api/v1/jobs/{job_id}/logs", params={"lines": 50}).json()["lines"]
        assert any('"samples_written"' in line for line in logs), logs
        assert not any(f"{archive}/" in line for line in logs)

        # a second job, cancelled while it decodes: Ray stops its driver
        big = make_archive(tmp_path / "arch-big", n_ct=6, n_mr=0, size=192, n_slices=40, seed=3)
        other = api.post(
            "/api/v1/jobs",
            json={"kind": "ingest", "source_uri": str(big), "dataset_uri": str(tmp_path / "d2")},
        ).json()["id"]
        wait_until(
            lambda: (api.get(f"/api/v1/jobs/{other}").json().get("progress") or {}).get("phase") == "running",
            timeout=JOB_TIMEOUT,
            what="the second job's driver to report progress",
        )
        r = api.post(f"/api/v1/jobs/{other}/cancel")
        assert r.status_code == 202, r.text
        cancelled = wait_state(api, other, {"succeeded", "failed", "cancelled"}, timeout=JOB_TIMEOUT)
        assert cancelled["state"] == "cancelled", cancelled
        assert str(ray_client.get_job_status(submission_id(other))) in ("STOPPED", "JobStatus.STOPPED")
        assert load_catalog(resolve(str(tmp_path / "d2"))).parts == []


class Stopped(BaseException):
    """The service process ending at the moment of submitting."""


def _leave_unsubmitted(
    tmp_path: Path, dashboard: str, bucket: str, name: str, **overrides: object
) -> tuple[ServiceSettings, JobRecord]:
    """What a service stopped at the moment of submitting an ingest of a 1-series archive leaves:
    a running job, its submission id recorded and its folder written, nothing on Ray's side."""
    from radforge.services.app.models import IngestJobCreate
    from radforge.services.app.service import build_service

    settings = make_settings(
        tmp_path / "state",
        ray_address=dashboard,
        ray_job_python=sys.executable,
        jobs_uri=f"s3://{bucket}/{name}",
        **overrides,
    )
    archive = make_archive(tmp_path / name, n_ct=1, n_mr=0)
    service = build_service(settings)
    runner = service.runner
    assert runner.ray_launcher is not None

    def stop_here(**_: object) -> str:
        raise Stopped

    runner.ray_launcher.ray_jobs.submit = stop_here  # type: ignore[method-assign]
    dataset = tmp_path / "dataset"
    job = runner.submit(
        IngestJobCreate(kind="ingest", source_uri=str(archive), dataset_uri=str(dataset)), priority=0
    )
    with pytest.raises(Stopped):
        runner.tick()
    recorded = service.store.get_job(job.id)
    service.store.close()
    assert recorded is not None and recorded.state.value == "running" and recorded.job_dir is not None
    assert recorded.ray_job_id == submission_id(job.id)
    return settings, recorded


def test_a_job_recorded_but_never_submitted_is_submitted_after_a_restart(
    ray_dashboard: str, s3_bucket: str, tmp_path: Path
) -> None:
    # The service records a job's submission id before submitting it, so that a restart finds the
    # job. If it stops in between, Ray has no record of the job and nothing ever ran: the next
    # service submits it.
    import time

    from ray.job_submission import JobSubmissionClient

    from radforge.services.jobs.progress import SUBMITTED, job_file, read_json

    settings, recorded = _leave_unsubmitted(tmp_path, ray_dashboard, s3_bucket, "arch-un")
    dataset = tmp_path / "dataset"
    assert recorded.job_dir is not None and read_json(job_file(recorded.job_dir, SUBMITTED)) is None
    ray_client = JobSubmissionClient(ray_dashboard)
    assert not any(j.submission_id == submission_id(recorded.id) for j in ray_client.list_jobs())

    started = time.time()
    with LiveServer(settings) as live, live.client() as api:
        done = wait_state(api, recorded.id, {"succeeded", "failed", "cancelled"}, timeout=JOB_TIMEOUT)
        assert done["state"] == "succeeded", done
        assert done["result"]["committed"] and done["result"]["samples_written"] > 0
    info = ray_client.get_job_info(submission_id(recorded.id))
    assert info.metadata == {"radforge_job_id": recorded.id} and (info.start_time or 0) / 1000 >= started - 1
    marker = {"submission_id": submission_id(recorded.id), "submissions": 1}
    assert read_json(job_file(recorded.job_dir, SUBMITTED)) == marker
    assert [p["archive_id"] for p in load_catalog(resolve(str(dataset))).parts] == ["arch-un"]


@pytest.mark.parametrize(("resubmits", "ends"), [(1, "succeeded"), (0, "failed")])
def test_a_job_the_cluster_lost_is_submitted_again_up_to_the_limit(
    ray_dashboard: str, s3_bucket: str, tmp_path: Path, resubmits: int, ends: str
) -> None:
    # Ray accepted the job once (the marker says so), then lost it: a head restart takes the job
    # table and the driver with it. The service submits it again while under ray_job_resubmits.
    from radforge.services.jobs.progress import SUBMITTED, job_file, read_json, write_json_atomic

    settings, recorded = _leave_unsubmitted(
        tmp_path, ray_dashboard, s3_bucket, f"arch-lost-{resubmits}", ray_job_resubmits=resubmits
    )
    dataset = tmp_path / "dataset"
    assert recorded.job_dir is not None
    write_json_atomic(
        job_file(recorded.job_dir, SUBMITTED), {"submission_id": submission_id(recorded.id), "submissions": 1}
    )
    with LiveServer(settings) as live, live.client() as api:
        done = wait_state(api, recorded.id, {"succeeded", "failed", "cancelled"}, timeout=JOB_TIMEOUT)
    assert done["state"] == ends, done
    marker = read_json(job_file(recorded.job_dir, SUBMITTED))
    assert isinstance(marker, dict)
    if ends == "succeeded":
        assert marker["submissions"] == 2 and done["result"]["committed"]
    else:
        assert marker["submissions"] == 1 and "lost the job" in done["error"]
        assert load_catalog(resolve(str(dataset))).parts == []


@pytest.mark.parametrize(
    ("submissions", "resubmits", "cancelled", "submit"),
    [
        (0, 0, False, True),  # never submitted: always submitted, whatever the limit
        (1, 2, False, True),
        (2, 2, False, True),
        (3, 2, False, False),
        (1, 0, False, False),
        (0, 2, True, False),  # cancelled: not brought back
        (1, 2, True, False),
    ],
)
def test_missing_job_decision(submissions: int, resubmits: int, cancelled: bool, submit: bool) -> None:
    from radforge.services.jobs.runner import missing_job_note

    note = missing_job_note(submissions=submissions, resubmits=resubmits, cancelled=cancelled)
    assert (note is None) == submit
