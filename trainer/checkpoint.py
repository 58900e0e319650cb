"""Atomic training checkpoints on a local path or an object store (``s3://``), the last K kept.

Layout under the run's output URI::

    checkpoints/step-00000100/state.pt     student, teacher, optimizer, centerings, step, RNG, loader
    checkpoints/step-00000100/config.yaml  the resolved run config
    checkpoints/latest                     {"step": 100, "dir": "step-00000100"}, written last

Publishing protocol: the step folder is written completely, then ``latest`` is replaced
atomically (rename locally, a single PUT on object stores). A crash mid-write leaves a partial
folder that ``latest`` never names, so the latest checkpoint always loads; partial folders are
removed by the next successful publish. Retention deletes folders older than the newest ``keep``
only after ``latest`` moved on.
"""

from __future__ import annotations

import io
import json
import logging
import re
from dataclasses import dataclass
from typing import Any

import torch

from sharder.storage import Location, exists, read_bytes, resolve, write_bytes_atomic

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
LATEST = "latest"
STATE = "state.pt"
CONFIG = "config.yaml"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated or incompatible; the message names it."""


@dataclass(frozen=True)
class CheckpointRef:
    """A published checkpoint: its step and folder."""

    step: int
    location: Location


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def checkpoints_root(output: str) -> Location:
    return resolve(output).join(CHECKPOINTS)


def latest(output: str) -> CheckpointRef | None:
    """The checkpoint ``latest`` names under ``output``, or None when there is none yet."""
    root = checkpoints_root(output)
    pointer = root.join(LATEST)
    root.fs.invalidate_cache(root.path)  # s3fs caches listings; another process may have published
    if not exists(pointer):
        return None
    try:
        obj = json.loads(read_bytes(pointer))
        step, name = int(obj["step"]), str(obj["dir"])
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{pointer.uri} is not a valid checkpoint pointer (corrupt JSON)") from None
    return CheckpointRef(step=step, location=root.join(name))


def save(output: str, *, step: int, state: dict[str, Any], config_yaml: str, keep: int) -> CheckpointRef:
    """Publish ``state`` as the checkpoint of ``step`` (folder first, ``latest`` last), keep ``keep``."""
    root = checkpoints_root(output)
    folder = root.join(step_dir_name(step))
    buf = io.BytesIO()
    torch.save(state, buf)
    write_bytes_atomic(folder.join(STATE), buf.getvalue())
    write_bytes_atomic(folder.join(CONFIG), config_yaml.encode())
    write_bytes_atomic(
        root.join(LATEST), json.dumps({"step": step, "dir": folder.path.rsplit("/", 1)[-1]}).encode()
    )
    _prune(root, newest=step, keep=keep)
    logger.info("checkpoint step %d -> %s", step, folder.uri)
    return CheckpointRef(step=step, location=folder)


def _prune(root: Location, *, newest: int, keep: int) -> None:
    """Delete step folders older than the newest ``keep`` and any newer than ``newest`` (abandoned)."""
    fs = root.fs
    fs.invalidate_cache(root.path)
    steps = []
    for path in fs.ls(root.path, detail=False):
        m = _STEP_DIR.match(str(path).rstrip("/").rsplit("/", 1)[-1])
        if m:
            steps.append((int(m.group(1)), str(path)))
    kept = sorted(s for s, _ in steps if s <= newest)[-keep:]
    for s, path in steps:
        if s not in kept:
            fs.rm(path, recursive=True)


def load(ref: CheckpointRef) -> dict[str, Any]:
    """The state saved in ``ref``; raises :class:`CheckpointError` naming it if it cannot load."""
    loc = ref.location.join(STATE)
    if not exists(loc):
        raise CheckpointError(f"checkpoint {ref.location.uri} has no {STATE}")
    try:
        state: dict[str, Any] = torch.load(
            io.BytesIO(read_bytes(loc)), map_location="cpu", weights_only=False
        )
    except Exception as err:  # torch raises several types for truncated / foreign files
        raise CheckpointError(f"checkpoint {loc.uri} cannot be loaded ({type(err).__name__}: {err})") from err
    missing = {"step", "student", "teacher", "optimizer"} - set(state)
    if missing:
        raise CheckpointError(f"checkpoint {loc.uri} lacks {', '.join(sorted(missing))}")
    return state
