"""Atomic training checkpoints on a local path or an object store (``s3://``), the last K kept.

Layout under the run's output URI::

    checkpoints/step-00000100/state.pt     student, teacher, optimizer, centerings, step, RNG, loader
    checkpoints/step-00000100/config.yaml  the resolved run config
    checkpoints/step-00000100/shards/      FSDP2 runs only: student, teacher and optimizer as
                                           torch.distributed.checkpoint (DCP) shards, one file per
                                           rank plus .metadata; state.pt then holds the rest
    checkpoints/latest                     {"step": 100, "dir": "step-00000100"}, written last

Publishing protocol: the step folder is emptied (leftovers of a crashed attempt), written
completely by every rank that holds a shard, then, after a barrier, ``latest`` is replaced
atomically by rank 0 (rename locally, a single PUT on object stores). A crash mid-write leaves a
folder that ``latest`` never names, so the latest checkpoint always loads; such folders are removed
by the next successful publish. Retention deletes folders older than the newest ``keep`` only
after ``latest`` moved on. The step folder is its own temporary folder: the pointer is the commit.

:func:`load_weights` reads full (unsharded) network weights from either format without a process
group; :func:`load_teacher_backbone` is what export and evaluation use.
"""

from __future__ import annotations

import io
import json
import logging
import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from radforge.storage import Location, exists, read_bytes, resolve, write_bytes_atomic

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
LATEST = "latest"
STATE = "state.pt"
CONFIG = "config.yaml"
SHARDS = "shards"
SHARDED_KEYS = ("student", "teacher", "optimizer")  # what DCP holds in a sharded checkpoint
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


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _dcp_writer(loc: Location) -> Any:
    import torch.distributed.checkpoint as dcp

    if loc.is_local:
        return dcp.FileSystemWriter(loc.path)
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter

    return FsspecWriter(loc.uri, **loc.fs.storage_options)


def _dcp_reader(loc: Location) -> Any:
    import torch.distributed.checkpoint as dcp

    if loc.is_local:
        return dcp.FileSystemReader(loc.path)
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader

    return FsspecReader(loc.uri, **loc.fs.storage_options)


def save(
    output: str,
    *,
    step: int,
    state: dict[str, Any],
    config_yaml: str,
    keep: int,
    sharded: dict[str, Any] | None = None,
) -> CheckpointRef | None:
    """Publish the checkpoint of ``step`` (folder first, ``latest`` last) and keep the newest ``keep``.

    ``state`` is written by rank 0 as ``state.pt``. ``sharded`` (FSDP2 runs: sharded state dicts of
    student, teacher and optimizer) is written by every rank with DCP; in a process group every
    rank must call this (it is collective). Returns the reference on rank 0, None elsewhere.
    """
    root = checkpoints_root(output)
    folder = root.join(step_dir_name(step))
    rank = _rank()
    if rank == 0 and exists(folder):
        folder.fs.rm(folder.path, recursive=True)  # a crashed attempt's files, never named by latest
    _barrier()
    if sharded is not None:
        import torch.distributed.checkpoint as dcp

        dcp.save(sharded, storage_writer=_dcp_writer(folder.join(SHARDS)))
    ref = None
    if rank == 0:
        buf = io.BytesIO()
        torch.save({**state, "format": "dcp" if sharded is not None else "torch"}, buf)
        write_bytes_atomic(folder.join(STATE), buf.getvalue())
        write_bytes_atomic(folder.join(CONFIG), config_yaml.encode())
    _barrier()  # every shard is written before the pointer names the folder
    if rank == 0:
        write_bytes_atomic(
            root.join(LATEST), json.dumps({"step": step, "dir": folder.path.rsplit("/", 1)[-1]}).encode()
        )
        _prune(root, newest=step, keep=keep)
        logger.info("checkpoint step %d -> %s", step, folder.uri)
        ref = CheckpointRef(step=step, location=folder)
    return ref


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


def is_sharded(saved: dict[str, Any]) -> bool:
    """Whether a loaded ``state.pt`` belongs to a sharded (DCP) checkpoint."""
    return saved.get("format") == "dcp"


def load(ref: CheckpointRef) -> dict[str, Any]:
    """The ``state.pt`` saved in ``ref``; raises :class:`CheckpointError` naming it if it cannot load.

    For a sharded checkpoint the networks and optimizer are not in it: see :func:`load_sharded`.
    """
    loc = ref.location.join(STATE)
    if not exists(loc):
        raise CheckpointError(f"checkpoint {ref.location.uri} has no {STATE}")
    try:
        # weights_only: tensors, numbers, strings and containers, never a callable a pickle names
        # (checkpoints come from storage a token holder may name: init_from, an eval job's backbone)
        state: dict[str, Any] = torch.load(io.BytesIO(read_bytes(loc)), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated / foreign files
        raise CheckpointError(f"checkpoint {loc.uri} cannot be loaded ({type(err).__name__}: {err})") from err
    required = {"step"} | (set() if is_sharded(state) else set(SHARDED_KEYS))
    missing = required - set(state)
    if missing:
        raise CheckpointError(f"checkpoint {loc.uri} lacks {', '.join(sorted(missing))}")
    return state


def load_sharded(ref: CheckpointRef, target: dict[str, Any]) -> None:
    """Fill ``target`` (sharded state dicts shaped like the saved ones) in place from ``ref``'s DCP shards.

    Collective in a process group; the world size may differ from the one that saved.
    """
    import torch.distributed.checkpoint as dcp

    loc = ref.location.join(SHARDS)
    try:
        dcp.load(target, storage_reader=_dcp_reader(loc))
    except Exception as err:  # DCP wraps per-rank failures in CheckpointException
        raise CheckpointError(
            f"sharded checkpoint {loc.uri} cannot be loaded into this run's model "
            f"(was it written with another recipe?): {type(err).__name__}: {err}"
        ) from err


def resolve_checkpoint(uri: str) -> CheckpointRef:
    """The checkpoint ``uri`` names: a run output (its ``latest``), a step folder, or a ``state.pt`` in one.

    Raises :class:`CheckpointError` naming ``uri`` and the three valid forms when it is none of them.
    """
    loc = resolve(uri)
    if loc.path.endswith("/" + STATE):
        loc = resolve(loc.uri.rsplit("/", 1)[0])
    if exists(loc.join(CHECKPOINTS, LATEST)):
        ref = latest(loc.uri)
        assert ref is not None  # the pointer exists; a corrupt one raised
        return ref
    if exists(loc.join(STATE)):
        m = _STEP_DIR.match(loc.path.rsplit("/", 1)[-1])
        return CheckpointRef(step=int(m.group(1)) if m else -1, location=loc)  # -1: step is in state.pt
    raise CheckpointError(
        f"no checkpoint at {loc.uri}: expected a run output ({CHECKPOINTS}/{LATEST}), "
        f"a step folder ({STATE}) or a {STATE} file"
    )


def load_weights(
    checkpoint: str | CheckpointRef,
    *,
    networks: tuple[str, ...] = ("student", "teacher"),
    saved: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Full (unsharded, CPU) state dicts of ``networks`` from a checkpoint of either format.

    ``checkpoint`` is a run output, a step folder or a ``state.pt`` (:func:`resolve_checkpoint`), or
    a resolved reference; ``saved`` is its ``state.pt`` when the caller has loaded it already (a
    plain checkpoint is then not read twice). Needs no process group: a sharded checkpoint's
    tensors are read whole from its DCP shards.
    """
    ref = resolve_checkpoint(checkpoint) if isinstance(checkpoint, str) else checkpoint
    if saved is None:
        saved = load(ref)
    if not is_sharded(saved):
        return {name: saved[name] for name in networks}
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = _dcp_reader(ref.location.join(SHARDS))
    try:
        meta = reader.read_metadata().state_dict_metadata
    except Exception as err:
        raise CheckpointError(
            f"sharded checkpoint {ref.location.uri} has no readable DCP metadata: {err}"
        ) from err
    flat: dict[str, torch.Tensor] = {}
    for key, item in meta.items():
        if key.split(".", 1)[0] in networks and isinstance(item, TensorStorageMetadata):
            flat[key] = torch.empty(item.size, dtype=item.properties.dtype)
    try:
        dcp.load(flat, storage_reader=_dcp_reader(ref.location.join(SHARDS)), no_dist=True)
    except Exception as err:  # a missing or truncated shard file
        raise CheckpointError(
            f"sharded checkpoint {ref.location.join(SHARDS).uri} cannot be read: {type(err).__name__}: {err}"
        ) from err
    out: dict[str, dict[str, Any]] = {name: {} for name in networks}
    for key, tensor in flat.items():
        name, rest = key.split(".", 1)
        out[name][rest] = tensor
    return out


def load_teacher_backbone(
    checkpoint: str | CheckpointRef, *, saved: dict[str, Any] | None = None
) -> dict[str, torch.Tensor]:
    """The teacher's backbone weights (keys as in :class:`radforge.trainer.models.vit.VisionTransformer`).

    ``checkpoint`` and ``saved`` as for :func:`load_weights`; plain or sharded checkpoints. The
    teacher (EMA) backbone is the model DINOv2-style recipes release.
    """
    teacher = load_weights(checkpoint, networks=("teacher",), saved=saved)["teacher"]
    return {k.removeprefix("backbone."): v for k, v in teacher.items() if k.startswith("backbone.")}
