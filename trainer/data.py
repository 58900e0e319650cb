"""Training batches from MDS datasets: shard tables -> this rank's epoch order -> views in loader processes.

Each rank opens its mix through the datasets' shard tables (:mod:`radforge.sharder.shard_table`:
a few arrays per dataset version, memory-mapped, shared by every process of a node) and decides
the epoch's order at the shard level (:mod:`radforge.trainer.sampling`); it expands only the
positions it streams, and opens a shard only when a sample of it is read. Opening a dataset of
10^6 shards takes seconds and a few hundred MB at most (docs/BENCHMARKS.md, issue 15).

Built inside each worker after ``RANK``/``WORLD_SIZE`` are set (Ray Train v2 and torchrun set them;
:func:`build_loader` sets single-process defaults). Views are deterministic functions of (seed,
epoch, sample id): each sample's numpy Generator is seeded from them, and each micro-batch's iBOT
masks from (seed, epoch, its sample ids). The loader's state is (epoch, samples of the epoch
consumed by all ranks), so a run that resumes sees exactly the batches and views an uninterrupted
run saw, whatever the number of ranks or loader processes.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from radforge.files import own_private_dir
from radforge.sharder.mixing import MixSpec, SourceShards, open_sources
from radforge.sharder.shard_table import ShardFiles
from radforge.trainer.sampling import DEFAULT_BLOCK, EpochOrder, batch_positions, plan_epoch, source_choose
from radforge.trainer.views.multicrop import MaskSampler, MultiCrop, collate_views

logger = logging.getLogger(__name__)

PREFETCH_THREADS = 4  # shards of the next batch fetched at once, per loader process


def set_single_process_env() -> None:
    """Rank variables of a run without a launcher (kept if already set)."""
    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "LOCAL_RANK": "0"}.items():
        os.environ.setdefault(k, v)


class ViewMaker:
    """A decoded sample -> its multi-crop views (run in the loader process), seeded by (seed, epoch, id)."""

    def __init__(self, multicrop: MultiCrop, *, seed: int) -> None:
        self.multicrop, self.seed = multicrop, seed

    def __call__(self, raw: dict[str, Any], *, sample_id: int, epoch: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, epoch, sample_id])
        views = self.multicrop(raw["image"], raw["fg"], raw["meta"], rng=rng)
        return {"key": raw["key"], "sample_id": sample_id, "epoch": epoch, "views": views}


def micro_batch_indices(n: int, *, accumulation: int) -> list[list[int]]:
    """Positions in a worker's batch of ``n`` items that form each of its ``accumulation`` micro-batches.

    Micro-batch ``a`` takes every ``accumulation``-th item from position ``a``. Why strided:
    the loader deals a global batch to W ranks one sample at a time (rank r gets positions r, r + W,
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
            "keys": [it["key"] for it in items],
            "micro": micro,
            "micro_keys": micro_keys,
        }


class MixSamples(IterableDataset[Any]):
    """One rank's batches of one epoch of a mix, each built by the loader process that reads it.

    ``make_item(raw, sample_id=, epoch=)`` turns a decoded sample into a batch item, ``collate`` a
    list of items into a batch. Sample ids number the mix's samples (sources' shards end to end).
    :meth:`begin` fixes the epoch and the first global batch; the loader process of worker ``w`` of
    ``K`` then builds this rank's share of global batches ``first + w``, ``first + w + K``, ... (the
    DataLoader takes them from its workers in turn, so the order does not depend on ``K``).
    """

    def __init__(
        self,
        sources: Sequence[SourceShards],
        *,
        make_item: Callable[..., Any],
        collate: Callable[[list[Any]], Any],
        per_rank: int,
        rank: int,
        world: int,
        seed: int,
        shuffle: bool,
        cache_dir: str,
        cache_limit: int | None,
        block: int = DEFAULT_BLOCK,
    ) -> None:
        self.sources = list(sources)
        self.make_item, self.collate = make_item, collate
        self.per_rank, self.rank, self.world = per_rank, rank, world
        self.seed, self.shuffle, self.block = seed, shuffle, block
        self.cache_dir, self.cache_limit = cache_dir, cache_limit
        self.source_shards = [s.stop - s.start for s in self.sources]
        pieces = [np.asarray(s.table.samples[s.start : s.stop], np.int64) for s in self.sources]
        # one source: a view of the memory-mapped table (shared by the node), not a copy
        self.shard_samples = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
        self.sample_offset = np.cumsum(self.shard_samples)
        self.sample_offset -= self.shard_samples
        self.source_first = np.cumsum([0, *self.source_shards])[:-1]
        specs = [s.spec for s in self.sources]
        self.draw = source_choose(
            [s.samples for s in self.sources],
            proportions=[s.proportion for s in specs],
            repeats=[s.repeat for s in specs],
            chooses=[s.choose for s in specs],
            seed=seed,
        )
        self.epoch_size = int(self.draw.sum())
        self.global_batch = per_rank * world
        self.batches = self.epoch_size // self.global_batch  # full global batches per epoch
        self.order: EpochOrder | None = None
        self.first = 0
        self._files: dict[str, ShardFiles] = {}

    def begin(self, epoch: int, first: int) -> None:
        """Plan ``epoch`` from global batch ``first`` (shard-level arrays, shared by workers forked after)."""
        self.order = plan_epoch(
            self.shard_samples,
            self.source_shards,
            self.draw,
            seed=self.seed,
            epoch=epoch,
            shuffle=self.shuffle,
            block=self.block,
        )
        self.first = first

    def __iter__(self) -> Iterator[Any]:
        if self.order is None:
            raise RuntimeError("MixSamples.begin(epoch, first) must be called before iterating")
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        mine = range(self.first + worker, self.batches, workers)
        for source in self.sources:  # made before the prefetch threads share them
            self._files_of(source)
        # the shards of this process's next batch are fetched in the background while it builds
        # this one (remote or compressed shards: a download or decompression each, once per node)
        ahead = ThreadPoolExecutor(max_workers=PREFETCH_THREADS, thread_name_prefix="shard-prefetch")
        try:
            for j, k in enumerate(mine):
                shards, index = self.order.locate(self._positions(k))
                if j + 1 < len(mine):
                    for g in np.unique(self.order.locate(self._positions(mine[j + 1]))[0]):
                        ahead.submit(self._prepare, int(g))
                yield self.collate([self._item(int(g), int(i)) for g, i in zip(shards, index, strict=True)])
        finally:
            ahead.shutdown(wait=False, cancel_futures=True)

    def _positions(self, batch: int) -> np.ndarray:
        return batch_positions(batch, rank=self.rank, world=self.world, per_rank=self.per_rank)

    def _source(self, shard: int) -> tuple[ShardFiles, int, int]:
        """(the files of the shard's dataset, the shard's row in its table, its source)."""
        src = int(np.searchsorted(self.source_first, shard, side="right")) - 1
        source = self.sources[src]
        return self._files_of(source), source.start + shard - int(self.source_first[src]), src

    def _files_of(self, source: SourceShards) -> ShardFiles:
        files = self._files.get(source.root.uri)
        if files is None:
            files = ShardFiles(
                source.root, source.table, cache_dir=self.cache_dir, cache_limit=self.cache_limit
            )
            self._files[source.root.uri] = files
        return files

    def _prepare(self, shard: int) -> None:
        files, row, _ = self._source(shard)
        with contextlib.suppress(Exception):  # a failed prefetch is retried, and reported, by the read
            files.prepare(row)

    def _item(self, shard: int, index: int) -> Any:
        assert self.order is not None
        files, row, _ = self._source(shard)
        raw = files.sample(row, index)
        return self.make_item(raw, sample_id=int(self.sample_offset[shard]) + index, epoch=self.order.epoch)


def _as_is(batch: Any) -> Any:
    return batch  # batches are collated in the loader process that built them


class MixLoader:
    """One rank's batches, epoch after epoch; its state (epoch, samples consumed) resumes it exactly.

    Each ``iter()`` is one epoch (the next one, or the resumed one), read by ``num_workers``
    processes forked for it. ``state_dict`` counts the samples of the epoch that all ranks consumed
    (this rank's batches x the global batch), so a run resumed with another number of ranks or
    loader processes goes on from the same global position.
    """

    def __init__(
        self, dataset: MixSamples, *, num_workers: int, prefetch_factor: int, pin_memory: bool = False
    ) -> None:
        self.dataset = dataset
        self.num_workers, self.prefetch_factor, self.pin_memory = num_workers, prefetch_factor, pin_memory
        self._next = (0, 0)  # (epoch, first global batch) of the next iteration
        self._epoch, self._first, self._yielded = 0, 0, 0

    def __len__(self) -> int:
        return self.dataset.batches

    def __iter__(self) -> Iterator[Any]:
        epoch, first = self._next
        self._next = (epoch + 1, 0)
        self._epoch, self._first, self._yielded = epoch, first, 0
        self.dataset.begin(epoch, first)
        loader = DataLoader(
            self.dataset,
            batch_size=None,
            collate_fn=_as_is,
            num_workers=self.num_workers,
            prefetch_factor=self.prefetch_factor if self.num_workers else None,
            persistent_workers=False,
            # page-locked batches: the step's non_blocking copy to the GPU is then really asynchronous (from
            # pageable memory it blocks the training process for the whole transfer, counted as data wait)
            pin_memory=self.pin_memory,
            generator=torch.Generator(),  # worker seeds: the run's global torch RNG is left alone
        )
        it = iter(loader)
        try:
            for batch in it:
                self._yielded += 1
                yield batch
        finally:
            shutdown = getattr(it, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()

    def state_dict(self) -> dict[str, Any]:
        d = self.dataset
        return {
            "epoch": self._epoch,
            "sample_in_epoch": (self._first + self._yielded) * d.global_batch,
            "epoch_size": d.epoch_size,
            "seed": d.seed,
        }

    def load_state_dict(self, obj: dict[str, Any]) -> None:
        """Resume at ``obj``'s position (also a StreamingDataLoader's state: same keys, another order)."""
        epoch, done = int(obj["epoch"]), int(obj["sample_in_epoch"])
        saved = (obj.get("epoch_size"), obj.get("seed"))
        if saved != (self.dataset.epoch_size, self.dataset.seed):
            logger.warning(
                "resuming at epoch %d, sample %d of an epoch that is not the checkpoint's (epoch size, seed: "
                "%s then, %s now; the data changed since, or an older loader wrote it): the batches differ "
                "from an uninterrupted run's",
                epoch,
                done,
                saved,
                (self.dataset.epoch_size, self.dataset.seed),
            )
        first = -(-done // self.dataset.global_batch)  # a changed global batch skips, never repeats
        if first >= self.dataset.batches:
            epoch, first = epoch + 1, 0
        self._next = (epoch, first)
        self._epoch, self._first, self._yielded = epoch, first, 0


def build_loader(
    mix: MixSpec,
    *,
    multicrop: MultiCrop,
    masks: MaskSampler,
    batch_size: int,
    seed: int,
    cache_dir: str,
    cache_limit: str | int | None,
    shuffle: bool = True,
    num_workers: int = 2,
    prefetch_factor: int = 2,
    accumulation: int = 1,
    block: int = DEFAULT_BLOCK,
) -> MixLoader:
    """A checkpointable loader of this rank's batches: ``{"keys", "micro", "micro_keys"}``.

    ``micro`` holds ``accumulation`` :class:`ViewBatch` micro-batches, ``micro_keys`` their keys.

    Checks each source's schema version first (raises ``SchemaVersionError`` / ``DatasetError``
    naming the dataset). ``batch_size`` is this rank's share of the global batch; the epoch's order
    is one global order that does not depend on the number of ranks or loader processes, dealt to
    ranks sample by sample (:func:`radforge.trainer.sampling.batch_positions`), and
    :func:`micro_batch_indices` cuts it into micro-batches that do not depend on them either.
    ``block`` is how many samples are shuffled together (:mod:`radforge.trainer.sampling`).
    """
    from streaming.base.util import bytes_to_int

    set_single_process_env()
    own_private_dir(cache_dir)  # a fixed /tmp name: another local user must not have planted it
    dataset = MixSamples(
        open_sources(mix, cache_dir=cache_dir),
        make_item=ViewMaker(multicrop, seed=seed),
        collate=Collate(masks, seed=seed, accumulation=accumulation),
        per_rank=batch_size,
        rank=int(os.environ["RANK"]),
        world=int(os.environ["WORLD_SIZE"]),
        seed=seed,
        shuffle=shuffle,
        cache_dir=cache_dir,
        cache_limit=bytes_to_int(cache_limit) if isinstance(cache_limit, str) else cache_limit,
        block=block,
    )
    return MixLoader(
        dataset,
        num_workers=num_workers,
        prefetch_factor=prefetch_factor,
        pin_memory=torch.cuda.is_available(),
    )
