"""Session-wide real components: a local Ray bound to loopback and a moto S3 server on 127.0.0.1.

The environment is set at import time, before anything starts Ray, so Ray's workers inherit the
S3 endpoint, dummy credentials and the de-identification salt.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


MOTO_PORT = _free_port()
MOTO_ENDPOINT = f"http://127.0.0.1:{MOTO_PORT}"
os.environ.update(
    {
        "AWS_ENDPOINT_URL_S3": MOTO_ENDPOINT,
        "S3_ENDPOINT_URL": MOTO_ENDPOINT,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "RADFORGE_SALT": "test-salt-0123456789",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
        "TQDM_DISABLE": "1",
    }
)


def _wait_for_port(port: int, *, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    """Poll until something accepts connections on ``port`` (fails fast if the process died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"moto_server did not listen on 127.0.0.1:{port} within {timeout}s")


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """A real S3 API (moto server) on 127.0.0.1, for the whole session; yields the endpoint URL."""
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(MOTO_PORT)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_for_port(MOTO_PORT, timeout=30, proc=proc)
        yield MOTO_ENDPOINT
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def s3_bucket(moto_server: str, request: pytest.FixtureRequest) -> str:
    """A fresh bucket on the moto server; returns its name."""
    import boto3

    name = "rf-" + request.node.name.lower().replace("_", "-").replace("[", "-").replace("]", "")[:40]
    name = "".join(c for c in name if c.isalnum() or c == "-").strip("-")
    s3 = boto3.client("s3", endpoint_url=moto_server)
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """One real local Ray for the test session, bound to 127.0.0.1 (2 CPUs)."""
    import logging

    import ray

    from radforge.runtime import ensure_ray

    ensure_ray(num_cpus=2)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    yield
    ray.shutdown()
