"""The /dev/shm janitor: streaming's shared-memory segments that killed or resumed runs leave behind.

A StreamingDataset creates named segments per prefix; a killed worker leaves them, and a resumed
loader leaves its ``NNNNNN_resume`` segment until the process exits. Either derails the next
dataset on the node, so the training loop removes the stale ones before it builds a dataset
(:func:`remove_stale_shared_memory`) and releases its own resume segment when done
(:func:`release_resume_memory`).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from streaming import StreamingDataLoader

logger = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
# The segments a StreamingDataset creates per prefix (streaming 0.13's SHM_TO_CLEAN): the six of
# ENVIRONMENT.md, "resume" (load_state_dict; left behind by every resumed run, even one that exits
# cleanly) and two epoch_* ones. A stale "resume" is not harmless: streaming takes, as its prefix,
# the largest of the first free prefixes found per segment name, so stray resume segments push it
# onto a prefix whose other segments a live dataset holds, and the next dataset fails with
# FileExistsError on "NNNNNN_locals" (seen here with another test's dataset on the node).
_SHM_NAMES = (
    "barrier|cache_usage|locals|next_epoch|shard_access_times|shard_states|resume|epoch_data|epoch_shape"
)
_STREAMING_SHM = re.compile(rf"^\d{{6}}_({_SHM_NAMES})$")


def stale_shared_memory(shm_dir: Path = SHM_DIR) -> list[Path]:
    """Streaming's shared-memory segments present in ``shm_dir`` (left by killed workers, or in use)."""
    if not shm_dir.is_dir():
        return []
    return sorted(p for p in shm_dir.iterdir() if _STREAMING_SHM.match(p.name))


def mapped_shared_memory(shm_dir: Path = SHM_DIR, *, proc: Path = Path("/proc")) -> set[str]:
    """Names of files in ``shm_dir`` that some live process (that we may inspect) has mapped.

    Only mappings of that very folder count: a segment of the same name elsewhere (another folder
    a test uses) does not keep one here alive.
    """
    prefix = f"{shm_dir}/"
    names: set[str] = set()
    for maps in proc.glob("[0-9]*/maps"):
        try:
            text = maps.read_text()
        except OSError:  # exited meanwhile, or another user's process
            continue
        for line in text.splitlines():
            where = line.find(prefix)
            if where >= 0:
                names.add(line[where + len(prefix) :].split(" ")[0])
    return names


def remove_stale_shared_memory(shm_dir: Path = SHM_DIR) -> list[str]:
    """Unlink streaming's segments that no live process maps; call once per node before the dataset.

    A killed worker leaves its segments behind and a new dataset on the same local folder then
    refuses to start. ``streaming.base.util.clean_stale_shared_memory`` stops at the first prefix
    with nothing leaked and misses later ones, so we unlink the names directly, sparing segments
    a live process (another run or test on this node) still maps.
    """
    removed = []
    in_use = mapped_shared_memory(shm_dir)
    for path in stale_shared_memory(shm_dir):
        if path.name in in_use:
            continue
        try:
            path.unlink()
            removed.append(path.name)
        except FileNotFoundError:
            pass
    if removed:
        logger.info("removed %d stale streaming shared-memory segments", len(removed))
    return removed


def release_resume_memory(loader: StreamingDataLoader) -> None:
    """Unlink the ``NNNNNN_resume`` segment a resumed loader created (call once it will not iterate again).

    Streaming registers it with ``atexit``, so a long-lived process (a service, a test session)
    that ran resumed trainings in-process would keep one per run mapped until it exits, and stray
    resume segments derail streaming's choice of prefix for later datasets (see ``_SHM_NAMES``).
    """
    dataset: Any = loader.dataset
    shm = getattr(dataset, "_resume_shm", None)
    if shm is not None:
        shm.cleanup()
        del dataset._resume_shm
