"""The control plane as an attacker with a valid token meets it: a real uvicorn server, no Ray.

Jobs are accepted and stay queued (every kind's limit is 0), so nothing here starts a process;
what is under attack is the API, its validation and what it reads on a request's behalf.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from radforge.services.jobs.kinds import KINDS
from tests.services.support import LiveServer, make_settings

# nothing listens on the discard port: a job that started would fail, and none starts
NO_RAY = "127.0.0.1:9"
SECRET = "planted-secret-4b9e1d7c"


def control_plane(state: Path, **overrides: Any) -> LiveServer:
    """A service whose jobs stay queued, its state in ``state``; ``overrides`` are settings."""
    defaults: dict[str, Any] = {
        "ray_address": NO_RAY,
        "scheduler_tick_seconds": 600,
        "max_running_by_kind": dict.fromkeys(KINDS, 0),
    }
    settings = make_settings(state, **(defaults | overrides))
    return LiveServer(settings)


RUN_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny-cpu.yaml"


def train_job(**fields: Any) -> dict[str, Any]:
    """A train job body writing below ``/tmp`` (any local path is allowed by default)."""
    return {"kind": "train", "output_uri": "/tmp/radforge-security-run", **fields}


def valid_train_job() -> dict[str, Any]:
    """A train job the service accepts (the tiny CPU run config)."""
    return train_job(config_uri=str(RUN_CONFIG), overrides=["steps=1"])
