"""Each stage's ``__init__`` exports its public surface, and importing a stage stays light."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

STAGES = ["radforge.ingest", "radforge.sharder", "radforge.trainer", "radforge.services"]
HEAVY = ("ray", "torch", "fastapi", "streaming")
# what importing the stage itself may bring in: the trainer's building blocks need torch
ALLOWED = {"radforge.trainer": {"torch"}}


@pytest.mark.parametrize("stage", STAGES)
def test_every_exported_name_resolves(stage: str) -> None:
    package = importlib.import_module(stage)
    assert package.__all__, f"{stage} exports nothing"
    for name in package.__all__:
        value = getattr(package, name)
        assert getattr(value, "__name__", name) == name or not callable(value), f"{stage}.{name} is {value!r}"
    with pytest.raises(AttributeError, match=rf"module '{stage}' has no attribute 'no_such_name'"):
        package.no_such_name  # noqa: B018


@pytest.mark.parametrize("stage", STAGES)
def test_importing_a_stage_does_not_import_ray_torch_or_fastapi(stage: str) -> None:
    probe = f"import sys, {stage}; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert set(out.split()) <= ALLOWED.get(stage, set()), f"import {stage} imported {out.split()}"


def test_the_entry_points_the_cli_uses_are_exported() -> None:
    from radforge.ingest import run_ingest
    from radforge.services import create_app, serve
    from radforge.sharder import verify_dataset
    from radforge.trainer import load_train_config, run_training

    assert run_ingest.__module__ == "radforge.ingest.pipeline"
    assert verify_dataset.__module__ == "radforge.sharder.verify"
    assert run_training.__module__ == "radforge.trainer.loop"
    assert load_train_config.__module__ == "radforge.trainer.run_config"
    assert (create_app.__module__, serve.__module__) == ("radforge.services.app.main",) * 2
