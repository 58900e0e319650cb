"""Bounded reads: a file named in a request is read only if it is a regular file, and never past a cap.

Attacks: a 100 MB sparse file, a named pipe without a writer and ``/dev/zero`` as a train job's
``config_uri`` (and as its ``recipe_file``). Each is answered 422 at once, the service keeps
answering, and reading them costs no memory.
"""

from __future__ import annotations

import os
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.security.control_plane import control_plane, train_job, valid_train_job
from tests.services.support import LiveServer

QUICK_S = 5.0  # far more than a refusal takes; a hung read never answers


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with control_plane(tmp_path_factory.mktemp("state")) as live:
        with live.client() as client:  # warm: the first train job imports the trainer (seconds)
            assert client.post("/api/v1/jobs", json=valid_train_job(), timeout=120).status_code == 201
        yield live


@pytest.fixture
def api(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client() as client:
        client.timeout = httpx.Timeout(QUICK_S)
        yield client


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    """A named pipe nobody writes to; released at the end so that a reader blocked on it returns."""
    path = tmp_path / "config.yaml"
    os.mkfifo(path)
    yield path
    try:  # a reader blocked in open() gets a writer, then EOF
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass  # no reader waiting (ENXIO): nothing to release


def _submit(api: httpx.Client, body: dict[str, object]) -> httpx.Response:
    started = time.monotonic()
    r = api.post("/api/v1/jobs", json=body)
    assert time.monotonic() - started < QUICK_S
    return r


def _refused(r: httpx.Response, field: str) -> str:
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert any(field in d["loc"] for d in detail), detail
    return " ".join(d["msg"] for d in detail)


def _healthy(api: httpx.Client) -> None:
    assert api.get("/healthz").json()["status"] == "ok"


def test_a_sparse_100_mb_config_is_refused_without_reading_it(api: httpx.Client, tmp_path: Path) -> None:
    big = tmp_path / "run.yaml"
    with open(big, "wb") as f:
        f.truncate(100 << 20)  # sparse: no disk used
    tracemalloc.start()
    try:
        r = _submit(api, train_job(config_uri=str(big)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "larger than" in _refused(r, "config_uri")
    assert peak < 16 << 20, f"refusing a 100 MB config allocated {peak / 1e6:.0f} MB"
    _healthy(api)


def test_a_named_pipe_config_is_refused_at_once(api: httpx.Client, fifo: Path) -> None:
    try:
        r = _submit(api, train_job(config_uri=str(fifo)))
    except httpx.TimeoutException:
        pytest.fail(f"a request naming a FIFO hung for more than {QUICK_S} s")
    assert "not a regular file" in _refused(r, "config_uri")
    _healthy(api)


def test_a_named_pipe_recipe_is_refused_at_once(api: httpx.Client, fifo: Path) -> None:
    run = fifo.parent / "run.yaml"
    run.write_text(f"recipe_file: {fifo.name}\n")
    try:
        r = _submit(api, train_job(config_uri=str(run)))
    except httpx.TimeoutException:
        pytest.fail(f"a request naming a FIFO recipe hung for more than {QUICK_S} s")
    assert "not a regular file" in _refused(r, "recipe_file")
    _healthy(api)


def test_dev_zero_is_refused(api: httpx.Client) -> None:
    """Not run against the code before the fix: it read /dev/zero until the kernel killed the machine."""
    r = _submit(api, train_job(config_uri="/dev/zero"))
    assert "not a regular file" in _refused(r, "config_uri")
    _healthy(api)
