"""Helpers for the control-plane tests: a real uvicorn server in a thread, polling with deadlines."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import uvicorn

from radforge.services.app.main import create_app
from radforge.services.app.settings import ServiceSettings, load_settings

T = TypeVar("T")
TOKEN = "test-token-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], T | None], *, timeout: float, what: str, every: float = 0.1) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def make_settings(state_dir: Path, **overrides: Any) -> ServiceSettings:
    return load_settings(
        overrides={"state_dir": str(state_dir), "api_token": TOKEN, "runner_tick_seconds": 0.2, **overrides},
        environ={},
    )


class LiveServer:
    """The app under a real uvicorn server on 127.0.0.1 (a free port), in a background thread."""

    def __init__(self, settings: ServiceSettings, *, end_jobs_on_exit: bool = False) -> None:
        self.end_jobs_on_exit = end_jobs_on_exit
        self.app = create_app(settings)
        self.server = uvicorn.Server(
            uvicorn.Config(self.app, host="127.0.0.1", port=free_port(), log_level="warning", lifespan="on")
        )
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.config.port}"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        wait_until(
            lambda: self.server.started or not self.thread.is_alive(), timeout=30, what="uvicorn start"
        )
        assert self.server.started, "uvicorn did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.end_jobs_on_exit:
                self.end_jobs()
        finally:
            self.server.should_exit = True
            self.thread.join(timeout=60)

    def end_jobs(self, *, timeout: float = 120) -> None:
        """Cancel every queued or running job and wait until each has ended.

        A service on the session's shared Ray must not leave work behind: a job a failed test left
        running keeps the session's Ray CPUs, and every later test that needs them waits until it
        times out (seen in a fresh-clone ``make test``).
        """
        with self.client() as api:
            live = api.get("/api/v1/jobs", params={"state": ["queued", "running"], "limit": 500}).json()
            for job in live["items"]:
                api.post(f"/api/v1/jobs/{job['id']}/cancel")  # 409 when it ended meanwhile: fine
            for job in live["items"]:
                wait_state(api, job["id"], {"succeeded", "failed", "cancelled"}, timeout=timeout)

    def client(self, *, token: str | None = TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


def wait_state(api: httpx.Client, job_id: str, states: set[str], *, timeout: float) -> dict[str, Any]:
    """The job once its state is one of ``states``."""

    def check() -> dict[str, Any] | None:
        job = api.get(f"/api/v1/jobs/{job_id}").json()
        return job if job["state"] in states else None

    return wait_until(check, timeout=timeout, what=f"job {job_id} to be {sorted(states)}", every=0.2)


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    """The value of one sample in Prometheus exposition text (None if absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                return float(sample.value)
    return None


def session_ray_server(state_dir: Path, **overrides: Any) -> LiveServer:
    """A service on the test session's local Ray (``ray_local``), its state in ``state_dir``."""
    import ray

    return LiveServer(
        make_settings(state_dir, ray_address=ray.get_runtime_context().gcs_address, **overrides),
        end_jobs_on_exit=True,
    )


def headless_chromium(
    url: str,
    *,
    profile: Path,
    screenshot: Path | None = None,
    budget_ms: int = 8000,
    window: tuple[int, int] = (1280, 900),
) -> str:
    """The DOM of ``url`` after ``budget_ms`` of the page's (virtual) time in Debian's headless Chromium.

    A fresh ``profile`` folder is a new browser: no session storage, nothing cached. ``screenshot``
    (a PNG of the ``window``, width by height) is written when given.
    """
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium package is required (apt-get install chromium)"
    run = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            f"--window-size={window[0]},{window[1]}",
            f"--virtual-time-budget={budget_ms}",
            *([f"--screenshot={screenshot}"] if screenshot is not None else []),
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout
