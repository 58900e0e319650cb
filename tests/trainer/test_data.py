"""The trainer's loader over shard tables: coverage, resume, the elastic rule, mixing, S3, vs streaming."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from radforge.sharder.mixing import MixSpec, open_sources
from radforge.sharder.stream_memory import release_stream
from radforge.trainer.data import MixLoader, MixSamples, micro_batch_indices
from radforge.trainer.sampling import batch_positions, plan_epoch, source_choose
from tests.sharder.table_support import make_dataset, part_id


def _key(raw: dict[str, Any], *, sample_id: int, epoch: int) -> tuple[str, int, int]:
    assert raw["meta"]["key"] == raw["key"]
    return raw["key"], sample_id, epoch


def _loader(
    sources: list[dict[str, Any]],
    cache: Path,
    *,
    per_rank: int = 4,
    rank: int = 0,
    world: int = 1,
    workers: int = 0,
    seed: int = 3,
    block: int = 8,
) -> MixLoader:
    opened = open_sources(MixSpec(sources=sources), cache_dir=str(cache))
    samples = MixSamples(
        opened,
        make_item=_key,
        collate=list,
        per_rank=per_rank,
        rank=rank,
        world=world,
        seed=seed,
        shuffle=True,
        cache_dir=str(cache),
        cache_limit=None,
        block=block,
    )
    return MixLoader(samples, num_workers=workers, prefetch_factor=2)


def _keys(batches: list[list[tuple[str, int, int]]]) -> list[list[str]]:
    return [[k for k, _, _ in b] for b in batches]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, list[str]]]:
    """48 samples in 3 parts of shards of 5 (uneven last shards), no root index (threshold lowered)."""
    root = tmp_path_factory.mktemp("data") / "ds"
    parts = make_dataset(str(root), {part_id(1): 22, part_id(2): 9, part_id(3): 17}, root_index_max_shards=1)
    assert not (root / "index.json").exists()
    return str(root), parts


def test_every_sample_once_per_epoch_across_ranks_and_workers(
    dataset: tuple[str, dict[str, list[str]]], tmp_path: Path
) -> None:
    uri, parts = dataset
    everything = sorted(k for keys in parts.values() for k in keys)
    for world, workers in ((1, 0), (2, 2), (4, 1)):
        loaders = [
            _loader([{"uri": uri}], tmp_path, per_rank=8 // world, rank=r, world=world, workers=workers)
            for r in range(world)
        ]
        for epoch in range(2):
            seen = [_keys(list(ld)) for ld in loaders]
            assert all(len(s) == 6 for s in seen)  # 48 samples, global batch 8
            assert sorted(k for s in seen for b in s for k in b) == everything, (world, workers, epoch)
    one = _loader([{"uri": uri}], tmp_path, per_rank=8)
    first, second = _keys(list(one)), _keys(list(one))
    assert first != second and sorted(sum(first, [])) == sorted(sum(second, []))  # reshuffled per epoch


def test_same_samples_as_streaming_per_epoch(
    dataset: tuple[str, dict[str, list[str]]], tmp_path: Path
) -> None:
    """A stock StreamingDataset over each part's index draws the same samples per epoch (as a multiset),
    whole and with repeat=2 (streaming and this loader both read each sample exactly twice)."""
    from streaming import Stream, StreamingDataset

    uri, parts = dataset
    for repeat in (None, 2.0):
        streams = [Stream(local=f"{uri}/parts/{p}", repeat=repeat) for p in parts]
        stock = StreamingDataset(streams=streams, batch_size=4, shuffle=True, shuffle_seed=3)
        want = Counter(s["key"] for s in stock)
        release_stream(stock)
        ours = _loader([{"uri": uri, "repeat": repeat}], tmp_path, per_rank=4)
        assert Counter(sum(_keys(list(ours)), [])) == want
        assert sum(want.values()) == 48 * (repeat or 1)


def test_resume_mid_epoch_repeats_the_straight_run(
    dataset: tuple[str, dict[str, list[str]]], tmp_path: Path
) -> None:
    """Straight: 2 epochs. Stopped after 2 batches of epoch 1, resumed by a new loader with another
    number of loader processes: the batches after the stop are the straight run's, sample ids and
    epochs included."""
    uri, _ = dataset
    straight = _loader([{"uri": uri}], tmp_path, workers=2)
    want = list(straight) + list(straight)

    first = _loader([{"uri": uri}], tmp_path, workers=2)
    got = list(first)
    it = iter(first)
    got += [next(it), next(it)]
    state = first.state_dict()
    del it
    assert state["epoch"] == 1 and state["sample_in_epoch"] == 8

    resumed = _loader([{"uri": uri}], tmp_path, workers=1)
    resumed.load_state_dict(state)
    got += list(resumed)
    assert got == want


def test_epoch_end_state_resumes_at_the_next_epoch(
    dataset: tuple[str, dict[str, list[str]]], tmp_path: Path
) -> None:
    uri, _ = dataset
    ld = _loader([{"uri": uri}], tmp_path)
    list(ld)
    state = ld.state_dict()
    assert state == {"epoch": 0, "sample_in_epoch": 48, "epoch_size": 48, "seed": 3}
    want = list(ld)
    again = _loader([{"uri": uri}], tmp_path)
    again.load_state_dict(state)
    assert list(again) == want and want[0][0][2] == 1


@pytest.mark.parametrize("world", [1, 2, 4])
def test_micro_batches_do_not_depend_on_the_worker_count(
    dataset: tuple[str, dict[str, list[str]]], tmp_path: Path, world: int
) -> None:
    """Global batch 8 in 4 micro-batches of 2: micro-batch j = r + W a of rank r's accumulation step a is
    the same samples, in the same order, for 1, 2 and 4 ranks (each with its own loader processes)."""
    uri, _ = dataset
    acc = 4 // world

    def micro(w: int) -> list[dict[int, list[str]]]:
        steps: list[dict[int, list[str]]] = []
        for r in range(w):
            batches = _keys(
                list(_loader([{"uri": uri}], tmp_path, per_rank=8 // w, rank=r, world=w, workers=1))
            )
            for s, batch in enumerate(batches):
                if len(steps) <= s:
                    steps.append({})
                for a, pos in enumerate(micro_batch_indices(len(batch), accumulation=4 // w)):
                    steps[s][r + w * a] = [batch[i] for i in pos]
        return steps

    reference = micro(1)
    assert len(reference) == 6 and all(len(s) == 4 for s in reference)
    assert micro(world) == reference and acc * world == 4


def test_mixing_weights_keep_streaming_semantics(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    ka = sum(make_dataset(str(a), {part_id(1): 30, part_id(2): 10}, prefix="a").values(), [])
    kb = sum(make_dataset(str(b), {part_id(3): 20}, prefix="b").values(), [])

    def epoch(sources: list[dict[str, Any]], seed: int = 3) -> list[str]:
        return sum(_keys(list(_loader(sources, tmp_path, per_rank=1, seed=seed))), [])

    # proportion: the epoch is as long as the sources together, split 3:1
    got = Counter(
        k[0] for k in epoch([{"uri": str(a), "proportion": 0.25}, {"uri": str(b), "proportion": 0.75}])
    )
    assert got == {"a": 15, "b": 45}
    # repeat: 2 -> every sample twice; 0.5 -> half the samples, none twice, another half next epoch
    twice = Counter(epoch([{"uri": str(b), "repeat": 2.0}]))
    assert set(twice) == set(kb) and set(twice.values()) == {2}
    halves = _loader([{"uri": str(a), "repeat": 0.5}], tmp_path, per_rank=1)
    h1, h2 = sum(_keys(list(halves)), []), sum(_keys(list(halves)), [])
    assert len(h1) == len(set(h1)) == 20 and set(h1) <= set(ka) and set(h1) != set(h2)
    # choose: an absolute number per epoch, here more than the source holds (one pass + a subset)
    chosen = Counter(epoch([{"uri": str(b), "choose": 26}]))
    assert sum(chosen.values()) == 26 and set(chosen) == set(kb) and sorted(chosen.values())[-6:] == [2] * 6
    # one part of a dataset
    assert sorted(epoch([{"uri": str(a), "part": part_id(2)}])) == sorted(k for k in ka if part_id(2) in k)
    with pytest.raises(ValueError, match=r"no committed part 'p-00000000000000ff'"):
        open_sources(
            MixSpec(sources=[{"uri": str(a), "part": "p-00000000000000ff"}]), cache_dir=str(tmp_path)
        )


def test_remote_dataset_reads_through_the_node_cache(tmp_path: Path, s3_bucket: str) -> None:
    uri = f"s3://{s3_bucket}/ds"
    parts = make_dataset(uri, {part_id(1): 12, part_id(2): 4}, root_index_max_shards=1)
    ld = _loader([{"uri": uri}], tmp_path / "cache", per_rank=4, workers=2)
    keys = sum(_keys(list(ld)), [])
    assert sorted(keys) == sorted(sum(parts.values(), []))
    assert list((tmp_path / "cache" / "tables").rglob("*.rft")) and list((tmp_path / "cache").rglob("*.mds"))


def test_source_choose_is_streamings_apply_weights() -> None:
    from streaming import Stream

    samples = np.array([30, 10, 21], np.int64)
    cases: list[list[dict[str, Any]]] = [
        [{"proportion": 0.2}, {"proportion": 0.5}, {"proportion": 0.3}],
        [{"repeat": 0.5}, {"choose": 17}, {}],
    ]
    for weights in cases:
        streams = [Stream(local=f"/tmp/x{i}", **w) for i, w in enumerate(weights)]
        Stream.apply_weights(streams, samples, None, 11)
        ours = source_choose(
            samples.tolist(),
            proportions=[w.get("proportion") for w in weights],
            repeats=[w.get("repeat") for w in weights],
            chooses=[w.get("choose") for w in weights],
            seed=11,
        )
        assert ours.tolist() == [int(s.choose) for s in streams]


def test_epoch_order_expands_only_the_blocks_asked_for() -> None:
    """10^5 shards of 1,000 samples (10^8 samples): planning is shard-level; locating a batch expands one
    block; every position maps to a valid sample; blocks are a permutation of their units' samples."""
    shards = np.full(100_000, 1000, np.int64)
    order = plan_epoch(shards, [100_000], [100_000_000], seed=0, epoch=0, block=1 << 12)
    assert order.size == 100_000_000 and order.unit_shard.size == 100_000
    pos = batch_positions(123_456, rank=1, world=4, per_rank=8)
    shard, index = order.locate(pos)
    assert len(order._blocks) == 1 and ((index >= 0) & (index < 1000)).all()
    b0, b1 = int(order.block_start[0]), int(order.block_start[1])
    s, i = order.locate(np.arange(b0, b1))
    units = order.unit_shard[order.block_unit[0] : order.block_unit[1]]
    assert sorted(zip(s.tolist(), i.tolist(), strict=True)) == sorted(
        (int(u), j) for u in units for j in range(1000)
    )


def test_resume_on_a_dataset_that_changed_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A part committed between the checkpoint and the resume: the new version is read from the saved
    position (its epoch is another order), and the log says the batches differ from the straight run."""
    root = tmp_path / "grows"
    make_dataset(str(root), {part_id(1): 16})
    first = _loader([{"uri": str(root)}], tmp_path)
    it = iter(first)
    next(it)
    state = first.state_dict()
    del it
    make_dataset(str(root), {part_id(2): 8})
    resumed = _loader([{"uri": str(root)}], tmp_path)
    with caplog.at_level("WARNING", logger="radforge.trainer.data"):
        resumed.load_state_dict(state)
    assert "not the checkpoint's" in caplog.text and "(16, 3) then, (24, 3) now" in caplog.text
    assert len(list(resumed)) == 5  # 24 samples, batches of 4, the first already taken


def test_resume_and_elastic_shrink_over_a_compacted_dataset(tmp_path: Path) -> None:
    """Three parts compacted into one (its shard table made by the first reader from its index): an
    epoch holds every sample once; 2 ranks run 2 steps, then 1 rank resumes from their state: each
    step's micro-batches (global batch 8, micro-batches of 4) equal a straight 1-rank run's."""
    from radforge.sharder.compact import compact_dataset

    root = tmp_path / "compacted"
    parts = make_dataset(str(root), {part_id(1): 22, part_id(2): 9, part_id(3): 17}, root_index_max_shards=1)
    summary = compact_dataset(str(root), target_shard_bytes=4096, root_index_max_shards=1)
    assert summary.parts_after == 1 and summary.shards_after < summary.shards_before
    src = [{"uri": str(root)}]

    straight = _keys(list(_loader(src, tmp_path, per_rank=8)))
    assert sorted(sum(straight, [])) == sorted(sum(parts.values(), []))
    assert (root / "parts" / summary.compactions[0]["part"] / "shards.rft").is_file()  # stored by the reader
    want = [[[b[i] for i in pos] for pos in micro_batch_indices(8, accumulation=2)] for b in straight]

    ranks = [_loader(src, tmp_path, per_rank=4, rank=r, world=2, workers=1) for r in range(2)]
    iters = [iter(ld) for ld in ranks]
    got = [[[k for k, _, _ in next(it)] for it in iters] for _ in range(2)]  # micro-batch j = rank j
    state = ranks[0].state_dict()
    del iters
    assert state["sample_in_epoch"] == 16 and state == ranks[1].state_dict()
    shrunk = _loader(src, tmp_path, per_rank=8, workers=2)
    shrunk.load_state_dict(state)
    got += [
        [[b[i] for i in pos] for pos in micro_batch_indices(8, accumulation=2)] for b in _keys(list(shrunk))
    ]
    assert got == want
