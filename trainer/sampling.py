"""The order of an epoch's samples, computed from shard-level arrays: pure functions, no I/O.

A run's data is a list of shards (all sources of its mix, laid end to end) and, per source, how
many samples an epoch draws from it. An epoch is then decided in three steps, none of them per
sample of the dataset:

1. **Weights** (:func:`source_choose`): samples per source per epoch from ``proportion`` /
   ``repeat`` / ``choose``, as MosaicML Streaming's ``Stream.apply_weights`` derives them.
2. **Units** (:func:`plan_epoch`): each source's draw spread over its shards (whole repeats, the
   remainder a uniform random subset of the source's samples: a multivariate hypergeometric draw
   over its shards, O(shards)); a shard drawn ``k`` whole times plus ``r`` samples gives ``k`` full
   units and one partial unit. The units are permuted (seed, epoch) and laid end to end: positions
   ``0 .. E`` of the epoch.
3. **Blocks** (:meth:`EpochOrder.locate`): consecutive units are grouped into blocks of about
   ``block`` samples, and the positions inside a block are permuted (seed, epoch, block), so
   neighbouring positions come from many shards (a batch mixes series and sources), while the
   shards in use at any time are those of one or two blocks (the cache's working set). A block is
   expanded only when a position in it is asked for: a process holds O(block), never O(epoch).

Global batch ``k`` is positions ``[k B, (k + 1) B)``; rank ``r`` of ``W`` takes positions
``k B + r + W j`` (:func:`batch_positions`), which is what :func:`radforge.trainer.data.micro_batch_indices`
relies on to give every micro-batch the same samples for any worker count. Everything is a
function of (seed, epoch, shard counts, weights): resuming at (epoch, samples consumed) repeats an
uninterrupted run exactly.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

DEFAULT_BLOCK = 8192  # samples shuffled together (data.shuffle_block): more mixes more, widens shards in use
CACHED_BLOCKS = 2  # expanded blocks a process keeps (a batch straddles at most two)


def source_choose(
    samples: Sequence[int],
    *,
    proportions: Sequence[float | None],
    repeats: Sequence[float | None],
    chooses: Sequence[int | None],
    seed: int,
) -> np.ndarray:
    """Samples drawn per epoch from each source (streaming's ``Stream.apply_weights``).

    With proportions (all sources give one) the epoch has as many samples as the sources together,
    split by the normalised proportions, the rounding shortfall given one each to sources drawn at
    random (``seed``). Otherwise each source gives ``repeat x samples`` (truncated), ``choose``, or
    its samples.
    """
    n = np.asarray(samples, np.int64)
    if any(p is not None for p in proportions):
        if any(p is None for p in proportions):
            raise ValueError("either every source gives a proportion or none does")
        share = np.asarray(proportions, np.float64)
        share /= share.sum()
        total = int(n.sum())
        out = (total * share).astype(np.int64)
        shortfall = total - int(out.sum())
        out[np.random.default_rng(seed).choice(len(n), shortfall, replace=False)] += 1
        return out
    out = n.copy()
    for i, (rep, ch) in enumerate(zip(repeats, chooses, strict=True)):
        if rep is not None:
            out[i] = int(rep * n[i])
        elif ch is not None:
            out[i] = ch
    return out


def shard_choose(samples: np.ndarray, choose: int, *, rng: np.random.Generator) -> np.ndarray:
    """Samples drawn from each shard when ``choose`` are drawn from shards of ``samples`` samples.

    Whole passes over the source first; the remainder is a uniform random subset of its samples,
    counted per shard by one multivariate hypergeometric draw (O(shards), no per-sample array).
    """
    total = int(samples.sum())
    if total == 0:
        return np.zeros_like(samples)
    whole, rest = divmod(int(choose), total)
    out = samples * whole
    if rest:
        out = out + rng.multivariate_hypergeometric(samples, rest, method="marginals")
    return out.astype(np.int64)


def batch_positions(batch: int, *, rank: int, world: int, per_rank: int) -> np.ndarray:
    """Epoch positions of rank ``rank``'s share of global batch ``batch`` (its items r, r + W, ...)."""
    return batch * per_rank * world + rank + world * np.arange(per_rank, dtype=np.int64)


@dataclass
class EpochOrder:
    """One epoch: units (a shard drawn whole, or a subset of it) in order, and their blocks.

    ``locate`` maps epoch positions to (global shard, sample index in the shard).
    """

    seed: int
    epoch: int
    shuffle: bool
    shard_samples: np.ndarray  # samples per global shard
    unit_shard: np.ndarray  # global shard of each unit, in epoch order
    unit_count: np.ndarray  # samples of each unit
    unit_start: np.ndarray  # epoch position where each unit starts (units + 1)
    block_unit: np.ndarray  # first unit of each block (blocks + 1)
    block_start: np.ndarray  # epoch position where each block starts (blocks + 1)
    _blocks: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=OrderedDict, repr=False)

    @property
    def size(self) -> int:
        """Samples in the epoch."""
        return int(self.unit_start[-1])

    def locate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(global shard, sample in shard) of each epoch position."""
        positions = np.asarray(positions, np.int64)
        if positions.size and (positions.min() < 0 or positions.max() >= self.size):
            raise IndexError(f"epoch positions must be in [0, {self.size})")
        blocks = np.searchsorted(self.block_start, positions, side="right") - 1
        shards = np.empty_like(positions)
        index = np.empty_like(positions)
        for b in np.unique(blocks):
            sel = blocks == b
            bs, bi = self._block(int(b))
            local = positions[sel] - self.block_start[b]
            shards[sel], index[sel] = bs[local], bi[local]
        return shards, index

    def _block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        got = self._blocks.get(b)
        if got is not None:
            self._blocks.move_to_end(b)
            return got
        u0, u1 = int(self.block_unit[b]), int(self.block_unit[b + 1])
        counts = self.unit_count[u0:u1]
        units = np.repeat(np.arange(u0, u1), counts)
        offset = np.arange(units.size, dtype=np.int64) - (self.unit_start[units] - self.unit_start[u0])
        if self.shuffle:
            perm = np.random.default_rng([self.seed, self.epoch, b]).permutation(units.size)
            units, offset = units[perm], offset[perm]
        shards = self.unit_shard[units]
        index = offset.copy()
        partial = counts < self.shard_samples[self.unit_shard[u0:u1]]
        if partial.any():  # a unit drawing a subset of its shard: the same subset in every process
            local = units - u0
            start = np.zeros(u1 - u0, np.int64)
            subsets, at = [], 0
            for j in np.flatnonzero(partial):
                g, u = int(self.unit_shard[u0 + j]), u0 + int(j)
                rng = np.random.default_rng([self.seed, self.epoch if self.shuffle else 0, g, u])
                subsets.append(np.sort(rng.choice(int(self.shard_samples[g]), int(counts[j]), replace=False)))
                start[j], at = at, at + int(counts[j])
            pick = partial[local]
            index[pick] = np.concatenate(subsets)[start[local[pick]] + offset[pick]]
        self._blocks[b] = (shards, index)
        while len(self._blocks) > CACHED_BLOCKS:
            self._blocks.popitem(last=False)
        return shards, index


def plan_epoch(
    shard_samples: np.ndarray,
    source_shards: Sequence[int],
    source_draw: Sequence[int] | np.ndarray,
    *,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    block: int = DEFAULT_BLOCK,
) -> EpochOrder:
    """The order of epoch ``epoch`` over shards of ``shard_samples`` samples.

    ``source_shards[i]`` is the number of shards of source ``i`` (sources' shards are laid end to
    end in ``shard_samples``), ``source_draw[i]`` its samples per epoch (:func:`source_choose`).
    Without ``shuffle`` the units keep shard order, positions inside a block are not permuted and
    the subsets drawn are the same every epoch (streaming's sampling without shuffle).
    """
    if block < 1:
        raise ValueError(f"block must be at least 1 sample (got {block})")
    shard_samples = np.asarray(shard_samples, np.int64)
    bounds = np.concatenate([[0], np.cumsum(source_shards, dtype=np.int64)])
    if bounds[-1] != len(shard_samples):
        raise ValueError(f"sources name {bounds[-1]} shards, the table has {len(shard_samples)}")
    drawn = np.zeros(len(shard_samples), np.int64)
    for i, want in enumerate(source_draw):
        a, z = int(bounds[i]), int(bounds[i + 1])
        rng = np.random.default_rng([seed, epoch if shuffle else 0, i])
        drawn[a:z] = shard_choose(shard_samples[a:z], int(want), rng=rng)
    # O(shards) int64 arrays, each freed once used: this runs in every rank (10^6 shards: 8 MB each)
    if np.array_equal(drawn, shard_samples):  # every shard drawn once, whole: one unit per shard
        unit_shard = np.arange(len(shard_samples), dtype=np.int64)
        unit_count = shard_samples
    else:
        n = np.maximum(shard_samples, 1)
        whole, rest = drawn // n, drawn % n
        del n
        per_shard = whole + (rest > 0)
        unit_shard = np.repeat(np.arange(len(shard_samples), dtype=np.int64), per_shard)
        nth = np.arange(unit_shard.size, dtype=np.int64)
        nth -= np.repeat(np.cumsum(per_shard) - per_shard, per_shard)
        del per_shard
        unit_count = np.where(nth < whole[unit_shard], shard_samples[unit_shard], rest[unit_shard])
        del nth, whole, rest
    del drawn
    if shuffle:
        perm = np.random.default_rng([seed, epoch]).permutation(unit_shard.size)
        unit_shard, unit_count = unit_shard[perm], unit_count[perm]
        del perm
    unit_start = np.zeros(unit_shard.size + 1, np.int64)
    np.cumsum(unit_count, out=unit_start[1:])
    # first unit of each block: the unit where position k * block falls, for every k (duplicates
    # where one unit spans several multiples of ``block``)
    marks = np.arange(0, int(unit_start[-1]), block, dtype=np.int64)
    block_unit = np.unique(np.searchsorted(unit_start, marks, side="right") - 1)
    block_unit = np.append(block_unit, unit_shard.size).astype(np.int64)
    return EpochOrder(
        seed=seed,
        epoch=epoch,
        shuffle=shuffle,
        shard_samples=shard_samples,
        unit_shard=unit_shard,
        unit_count=np.asarray(unit_count, np.int64),
        unit_start=unit_start,
        block_unit=block_unit,
        block_start=unit_start[block_unit],
    )
