"""A checkpoint is data: loading a hostile ``state.pt`` must not run code (eval and train jobs load them).

Checkpoints come from object storage that a token holder names (``init_from``, an eval job's
backbone); a pickle can name any callable. ``torch.load`` must refuse it instead of calling it.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
import torch

from radforge.trainer import checkpoint as ckpt


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.mkdir, (self.marker,))  # any callable would do: this one leaves a trace


def _hostile_checkpoint(output: Path, marker: Path) -> None:
    folder = output / "checkpoints" / "step-00000001"
    folder.mkdir(parents=True)
    buf = io.BytesIO()
    torch.save({"step": 1, "format": "dcp", "payload": _Payload(str(marker))}, buf)
    (folder / "state.pt").write_bytes(buf.getvalue())
    (folder / "config.yaml").write_text("{}\n")
    (output / "checkpoints" / "latest").write_text(json.dumps({"step": 1, "dir": "step-00000001"}))


def test_a_hostile_checkpoint_is_refused_without_running_its_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    _hostile_checkpoint(tmp_path / "run", marker)
    ref = ckpt.latest(str(tmp_path / "run"))
    assert ref is not None
    with pytest.raises(ckpt.CheckpointError, match="cannot be loaded"):
        ckpt.load(ref)
    assert not marker.exists()
