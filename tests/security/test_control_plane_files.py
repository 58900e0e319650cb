"""File modes: the state folder is the service's alone (0700); the database and every job record
(spec, progress, result, log) are 0600, so another local user reads neither specs nor results.
"""

from __future__ import annotations

import stat
from pathlib import Path

import httpx

from tests.security.control_plane import control_plane, valid_train_job
from tests.services.support import wait_until


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_state_folder_database_and_job_records_are_private(tmp_path: Path) -> None:
    state = tmp_path / "state"
    # the job starts (no per-kind limit) and fails at once: nothing listens at the Ray address
    with control_plane(state, max_running_by_kind={}) as live, live.client() as api:
        r = api.post("/api/v1/jobs", json=valid_train_job())
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]

        def ended() -> bool:
            state_now = api.get(f"/api/v1/jobs/{job_id}").json()["state"]
            return state_now in ("failed", "succeeded")

        wait_until(ended, timeout=120, what="the job to end")
        checked = _check_modes(state, job_id)
    assert checked >= 4, "expected the database, a job folder and its records"


def _check_modes(state: Path, job_id: str) -> int:
    assert _mode(state) == 0o700, oct(_mode(state))
    checked = 1
    for path in state.rglob("*"):
        if path.is_symlink():
            continue
        want = 0o700 if path.is_dir() else 0o600
        if path.is_dir() or path.name.startswith(("radforge.db", "api-token")) or job_id in str(path):
            assert _mode(path) & 0o077 == 0, f"{path} is {oct(_mode(path))}, want {oct(want)}"
            checked += 1
    return checked


def test_an_unauthenticated_client_reads_no_job_record(tmp_path: Path) -> None:
    """The API side of the same promise: without the token, nothing about a job."""
    with control_plane(tmp_path / "state") as live, live.client() as api:
        job_id = api.post("/api/v1/jobs", json=valid_train_job()).json()["id"]
        with httpx.Client(base_url=live.url) as anonymous:
            assert anonymous.get(f"/api/v1/jobs/{job_id}").status_code == 401
