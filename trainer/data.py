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
from collections.abc import Sequence
from typing import Any

import numpy as np
from streaming import StreamingDataLoader, StreamingDataset

from radforge.files import own_private_dir
from radforge.sharder.mixing import MixSpec, build_streams
from radforge.trainer.views.multicrop import MaskSampler, MultiCrop, collate_views

logger = logging.getLogger(__name__)


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


def micro_batch_indices(n: int, *, accumulation: int) -> list[list[int]]:
    """Positions in a worker's batch of ``n`` items that form each of its ``accumulation`` micro-batches.

    Micro-batch ``a`` takes every ``accumulation``-th item from position ``a``. Why strided:
    streaming deals a global batch to W ranks one sample at a time (rank r gets positions r, r + W,
    r + 2W, ... of the global order). Cut the global batch of G = k micro-batches of m into
    micro-batch j = positions {j, j + k, j + 2k, ...}; rank r's items at a, a + A, a + 2A, ...
    (A = k / W) are exactly micro-batch j = r + W a, in the same order. So every micro-batch holds
    the same samples, in the same order, for any worker count that divides k.
    """
    if n % accumulation:
        raise ValueError(f"a batch of {n} cannot be cut into {accumulation} equal micro-batches")
    return [list(range(a, n, accumulation)) for a in range(accumulation)]


class Collate:
    """Stack views into ``accumulation`` :class:`ViewBatch` micro-batches, iBOT masks seeded per micro-batch.

    Masks are drawn from (seed, epoch, the micro-batch's sample ids), so they do not depend on which
    worker or loader process built the batch.
    """

    def __init__(self, masks: MaskSampler, *, seed: int, accumulation: int = 1) -> None:
        self.masks, self.seed, self.accumulation = masks, seed, accumulation

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        micro, micro_keys = [], []
        for positions in micro_batch_indices(len(items), accumulation=self.accumulation):
            part = [items[i] for i in positions]
            ids = [it["sample_id"] for it in part]
            rng = np.random.default_rng([self.seed, part[0]["epoch"], *ids])
            micro.append(collate_views([it["views"] for it in part], masks=self.masks, rng=rng))
            micro_keys.append([it["key"] for it in part])
        return {
            "keys": [it["key"] for it in items],  # first: StreamingDataLoader counts its length
            "micro": micro,
            "micro_keys": micro_keys,
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
    accumulation: int = 1,
) -> StreamingDataLoader:
    """A checkpointable loader of this rank's batches: ``{"keys", "micro", "micro_keys"}``.

    ``micro`` holds ``accumulation`` :class:`ViewBatch` micro-batches, ``micro_keys`` their keys.

    Checks each source's schema version first (raises ``SchemaVersionError`` / ``DatasetError``
    naming the dataset). ``batch_size`` is this rank's share of the global batch; streaming
    partitions samples over ranks and loader processes deterministically from ``seed``, in one global
    order that does not depend on the number of ranks (on one node, or with the canonical node count
    saved in the loader state); :func:`micro_batch_indices` cuts it into micro-batches that do not
    depend on it either.
    """
    set_single_process_env()
    kwargs: dict[str, Any] = dict(
        multicrop=multicrop,
        seed=seed,
        batch_size=batch_size,
        shuffle=shuffle,
        shuffle_seed=seed,
        cache_limit=cache_limit,
    )
    own_private_dir(cache_dir)  # a fixed /tmp name: another local user must not have planted it
    dataset = ViewDataset(streams=build_streams(mix, cache_dir=cache_dir), **kwargs)
    return StreamingDataLoader(
        dataset,
        batch_size=batch_size,
        collate_fn=Collate(masks, seed=seed, accumulation=accumulation),
        num_workers=num_workers,
        prefetch_factor=prefetch_factor if num_workers else None,
        persistent_workers=False,
        drop_last=True,
    )
