"""The embedded Ray holds its own token: another local process cannot join it and run work.

Ray 2.60's token authentication (``RAY_AUTH_MODE=token``) is on for the head the service starts; the
token is a 0600 file in the state folder that only job processes are given. A process without it
(Ray's defaults, or a wrong token) never joins; one with it does, within seconds.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from radforge.services.jobs.raycluster import EmbeddedRay

JOIN = "import ray; ray.init(address={address!r}); print('JOINED', flush=True); ray.shutdown()"
REFUSED_WITHIN_S = 20  # a process with the token joins in ~3 s here
JOINS_WITHIN_S = 90


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRay]:
    ray = EmbeddedRay(tmp_path_factory.mktemp("state"), num_cpus=1)
    try:
        ray.address()
        yield ray
    finally:
        ray.close(jobs_running=False)


def _join(address: str, env: dict[str, str], timeout: float) -> str:
    """What a local process trying to join prints: ``JOINED``, its error, or ``TIMEOUT``."""
    try:
        result = subprocess.run(
            [sys.executable, "-c", JOIN.format(address=address)],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return "TIMEOUT"
    return result.stdout + result.stderr[-300:]


def _without_ray_auth() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}


@pytest.mark.parametrize(
    "auth",
    [{"RAY_AUTH_MODE": "disabled"}, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "f" * 64}],
    ids=["no-token", "wrong-token"],
)
def test_a_local_process_without_the_token_cannot_join(head: EmbeddedRay, auth: dict[str, str]) -> None:
    out = _join(head.address(), _without_ray_auth() | auth, REFUSED_WITHIN_S)
    assert "JOINED" not in out, "a process without the cluster's token joined the embedded Ray"


def test_job_processes_join_with_the_token(head: EmbeddedRay) -> None:
    out = _join(head.address(), _without_ray_auth() | head.job_env(), JOINS_WITHIN_S)
    assert "JOINED" in out, out


def test_the_token_is_the_service_users_alone(head: EmbeddedRay) -> None:
    token = Path(head.job_env()["RAY_AUTH_TOKEN_PATH"])
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert token.parent == head.state_dir
