"""Restart: `radforge serve` (embedded Ray) is killed while a job runs and started again; the job
record is there, the new service re-attaches to the still-running job, and it ends succeeded.

The job is frozen (SIGSTOP) across the restart so that it is certainly still running when the new
service starts; the service itself is killed with SIGKILL (a crash, no shutdown code runs).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from radforge.services.jobs.process_identity import is_running
from radforge.sharder.catalog import load_catalog
from radforge.storage import resolve
from tests.services.support import TOKEN, free_port, wait_state, wait_until
from tests.support import make_archive

JOB_TIMEOUT = 180


class Serve:
    """``radforge serve`` as a real process."""

    def __init__(self, state: Path, port: int) -> None:
        self.state, self.port = state, port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "RADFORGE_API_TOKEN": TOKEN}
        with open(self.state.parent / "serve.log", "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "radforge.cli",
                    "serve",
                    "--port",
                    str(self.port),
                    "--state-dir",
                    str(self.state),
                    "--set",
                    "runner_tick_seconds=0.2",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )

        def healthy() -> bool:
            assert self.proc is not None and self.proc.poll() is None, (
                self.state.parent / "serve.log"
            ).read_text()
            try:
                return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, timeout=60, what="radforge serve to answer /healthz", every=0.2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    state = tmp_path / "state"
    yield state
    # whatever the test left: job process groups and the embedded Ray head (by PID, never by name)
    db = state / "radforge.db"
    if db.exists():
        with sqlite3.connect(db) as c:
            for (pid,) in c.execute("SELECT pid FROM jobs WHERE pid IS NOT NULL"):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except OSError:
                    pass
    info = state / "ray.json"
    if info.exists():
        try:
            os.killpg(json.loads(info.read_text())["pid"], signal.SIGKILL)
        except OSError:
            pass


def test_restart_reattaches_to_a_running_job(state: Path, tmp_path: Path) -> None:
    archive = make_archive(tmp_path / "arch-restart", n_ct=1, n_mr=0, seed=7)
    dataset = tmp_path / "dataset"
    port = free_port()
    first, second = Serve(state, port), Serve(state, port)
    try:
        first.start()
        with first.api() as api:
            r = api.post(
                "/api/v1/jobs",
                json={"kind": "ingest", "source_uri": str(archive), "dataset_uri": str(dataset)},
            )
            assert r.status_code == 201, r.text
            job_id = r.json()["id"]
            wait_until(
                lambda: (
                    (j := api.get(f"/api/v1/jobs/{job_id}").json())["state"] == "running" and j["progress"]
                ),
                timeout=JOB_TIMEOUT,
                what="the job's driver to start",
                every=0.2,
            )
        with sqlite3.connect(state / "radforge.db") as c:
            pid, proc_start = c.execute("SELECT pid, proc_start FROM jobs WHERE id = ?", (job_id,)).fetchone()
        os.killpg(pid, signal.SIGSTOP)  # freeze the job across the restart
        assert first.proc is not None
        first.proc.kill()  # the service crashes
        first.proc.wait(timeout=30)
        assert is_running(pid, proc_start)  # the job outlived the service

        second.start()
        with second.api() as api:
            listed = api.get("/api/v1/jobs").json()
            assert listed["total"] == 1 and listed["items"][0]["id"] == job_id  # no record lost
            job = api.get(f"/api/v1/jobs/{job_id}").json()
            assert job["state"] == "running", job  # re-attached, not failed
            os.killpg(pid, signal.SIGCONT)
            job = wait_state(api, job_id, {"succeeded", "failed", "cancelled"}, timeout=JOB_TIMEOUT)
            assert job["state"] == "succeeded", (job, (tmp_path / "serve.log").read_text()[-3000:])
            assert (
                job["result"]["committed"]
                and job["progress"]["samples_written"] == job["result"]["samples_written"]
            )
            metrics = httpx.get(f"{second.url}/metrics").text
            assert 'radforge_jobs_finished_total{kind="ingest",state="succeeded"} 1.0' in metrics
        assert [p["archive_id"] for p in load_catalog(resolve(str(dataset))).parts] == ["arch-restart"]

        # a clean stop with no job running also stops the embedded Ray it started
        head = json.loads((state / "ray.json").read_text())
        assert second.proc is not None
        second.proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught (exit status -15)
        assert second.proc.wait(timeout=60) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in (tmp_path / "serve.log").read_text()
        assert not (state / "ray.json").exists()
        wait_until(
            lambda: not is_running(head["pid"], head["proc_start"]), timeout=30, what="the Ray head to stop"
        )
    finally:
        for serve in (first, second):
            if serve.proc is not None and serve.proc.poll() is None:
                serve.proc.kill()
                serve.proc.wait(timeout=30)
