"""``make demo`` end to end: sample archive -> ingest -> verify -> stats -> a tiny pretraining run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.demo import main
from sharder.verify import verify_dataset
from tests.support import read_all


def test_demo_runs_the_whole_pipeline(
    ray_local: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    dataset, run = tmp_path / "dataset", tmp_path / "run"
    assert verify_dataset(str(dataset)).ok
    samples = read_all(dataset)
    assert {s["meta"]["modality"] for s in samples.values()} == {"CT", "MR"}
    latest = json.loads((run / "checkpoints" / "latest").read_text())["dir"]
    assert (run / "checkpoints" / latest / "state.pt").is_file()
    assert f"Checkpoint (step 20): {run / 'checkpoints' / latest}" in out  # it says where the checkpoint is
