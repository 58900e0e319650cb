"""Training batches from MDS datasets: StreamingDataset per rank -> views in loader processes -> ViewBatch.

Built inside each worker after ``RANK``/``WORLD_SIZE``/``LOCAL_WORLD_SIZE`` are set (Ray Train v2
sets them before the loop; :func:`build_loader` sets single-process defaults). Views are
deterministic functions of (seed, epoch, sample id): each sample's numpy Generator is seeded from
them, and each batch's iBOT masks from (seed, epoch, the batch's sample ids). So a run that resumes
from a :class:`streaming.StreamingDataLoader` state sees exactly the views an uninterrupted run saw,
whatever process decoded them.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from streaming import StreamingDataLoader, StreamingDataset

from sharder.mixing import MixSpec, build_streams
from trainer.views.multicrop import MaskSampler, MultiCrop, collate_views

logger = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
# The six segments a StreamingDataset creates per prefix (streaming 0.13, see ENVIRONMENT.md).
_STREAMING_SHM = re.compile(
    r"^\d{6}_(barrier|cache_usage|locals|next_epoch|shard_access_times|shard_states)$"
)


def stale_shared_memory(shm_dir: Path = SHM_DIR) -> list[Path]:
    """Streaming's shared-memory segments present in ``shm_dir`` (left by killed workers, or in use)."""
    if not shm_dir.is_dir():
        return []
    return sorted(p for p in shm_dir.iterdir() if _STREAMING_SHM.match(p.name))


def mapped_shared_memory(proc: Path = Path("/proc")) -> set[str]:
    """Names of /dev/shm files that some live process (that we may inspect) has mapped."""
    names: set[str] = set()
    for maps in proc.glob("[0-9]*/maps"):
        try:
            text = maps.read_text()
        except OSError:  # exited meanwhile, or another user's process
            continue
        for line in text.splitlines():
            where = line.find("/dev/shm/")
            if where >= 0:
                names.add(line[where + len("/dev/shm/") :].split(" ")[0])
    return names


def remove_stale_shared_memory(shm_dir: Path = SHM_DIR) -> list[str]:
    """Unlink streaming's segments that no live process maps; call once per node before the dataset.

    A killed worker leaves its segments behind and a new dataset on the same local folder then
    refuses to start. ``streaming.base.util.clean_stale_shared_memory`` stops at the first prefix
    with nothing leaked and misses later ones, so we unlink the names directly, sparing segments
    a live process (another run or test on this node) still maps.
    """
    removed = []
    in_use = mapped_shared_memory()
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


def set_single_process_env() -> None:
    """Rank variables streaming reads, for a run without a launcher (kept if already set)."""
    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "LOCAL_RANK": "0"}.items():
        os.environ.setdefault(k, v)


class ViewDataset(StreamingDataset):
    """A StreamingDataset whose samples are multi-crop views (built in the loader process)."""

    def __init__(self, *, multicrop: MultiCrop, seed: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._multicrop = multicrop
        self._view_seed = seed
        self._epoch: int | None = None

    def __iter__(self) -> Any:
        self._epoch = None  # read lazily: streaming fixes the epoch when the iteration starts
        yield from super().__iter__()

    def get_item(self, sample_id: int, retry: int = 7) -> Any:
        raw = super().get_item(sample_id, retry)
        if self._epoch is None:
            self._epoch = int(self.next_epoch) - 1
        rng = np.random.default_rng([self._view_seed, self._epoch, int(sample_id)])
        views = self._multicrop(raw["image"], raw["fg"], raw["meta"], rng=rng)
        return {"key": raw["key"], "sample_id": int(sample_id), "epoch": self._epoch, "views": views}


class Collate:
    """Stack views into a :class:`ViewBatch` with iBOT masks seeded by the batch's sample ids."""

    def __init__(self, masks: MaskSampler, *, seed: int) -> None:
        self.masks, self.seed = masks, seed

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        ids = [it["sample_id"] for it in items]
        rng = np.random.default_rng([self.seed, items[0]["epoch"], *ids])
        return {
            "keys": [it["key"] for it in items],  # first: StreamingDataLoader counts its length
            "batch": collate_views([it["views"] for it in items], masks=self.masks, rng=rng),
        }


def build_loader(
    mix: MixSpec,
    *,
    multicrop: MultiCrop,
    masks: MaskSampler,
    batch_size: int,
    seed: int,
    cache_dir: str,
    cache_limit: str | None,
    shuffle: bool = True,
    num_workers: int = 2,
    prefetch_factor: int = 2,
) -> StreamingDataLoader:
    """A checkpointable loader of ``{"keys": [...], "batch": ViewBatch}`` for this rank.

    Checks each source's schema version first (raises ``SchemaVersionError`` / ``DatasetError``
    naming the dataset). ``batch_size`` is per rank; streaming partitions samples over ranks and
    loader processes deterministically from ``seed``.
    """
    set_single_process_env()
    streams = build_streams(mix, cache_dir=cache_dir)
    dataset = ViewDataset(
        multicrop=multicrop,
        seed=seed,
        streams=streams,
        batch_size=batch_size,
        shuffle=shuffle,
        shuffle_seed=seed,
        cache_limit=cache_limit,
    )
    return StreamingDataLoader(
        dataset,
        batch_size=batch_size,
        collate_fn=Collate(masks, seed=seed),
        num_workers=num_workers,
        prefetch_factor=prefetch_factor if num_workers else None,
        persistent_workers=False,
        drop_last=True,
    )
