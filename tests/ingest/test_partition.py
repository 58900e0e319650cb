"""Cutting the ingest into Ray tasks: header tasks fill every CPU at once, decode tasks go biggest first."""

from __future__ import annotations

import pytest

from radforge.ingest.partition import (
    MIN_HEADER_FILES_PER_TASK,
    SLICE_PIXELS,
    decode_task_count,
    decode_task_groups,
    header_files_per_task,
    series_cost,
)


@pytest.mark.parametrize(
    ("n", "cpus", "cap", "want"),
    [
        (2048, 2, 2048, 1024),  # a small archive: one task per CPU, all running at once
        (2049, 2, 2048, 1025),
        (6144, 2, 2048, 1536),  # four tasks, two full waves (three would leave one CPU idle)
        (1_000_000, 64, 2048, 1954),  # a big one: 512 tasks, 8 full waves of 64
        (10, 8, 2048, MIN_HEADER_FILES_PER_TASK),  # a handful of files: one task, not eight tiny ones
        (0, 4, 2048, MIN_HEADER_FILES_PER_TASK),
        (5000, 1, 100, 100),
        (100, 4, 10, 10),  # a cap below the floor of 64 files still holds
    ],
)
def test_header_files_per_task(n: int, cpus: int, cap: int, want: int) -> None:
    assert header_files_per_task(n, cpus, cap=cap) == want


def test_header_tasks_come_in_full_waves() -> None:
    for n in range(MIN_HEADER_FILES_PER_TASK * 8, 60_000, 997):
        for cpus in (1, 2, 3, 8):
            per = header_files_per_task(n, cpus, cap=2048)
            tasks = -(-n // per)
            assert per <= 2048
            if n <= cpus * 2048:
                assert tasks <= cpus  # a small archive: one wave, nobody waits for a second
            waves = -(-tasks // cpus)
            assert tasks > (waves - 1) * cpus + cpus // 2 or tasks == 1  # the last wave is mostly full


@pytest.mark.parametrize(("n", "cpus", "cap"), [(-1, 1, 1), (1, 0, 1), (1, 1, 0)])
def test_header_files_per_task_refuses_nonsense(n: int, cpus: int, cap: int) -> None:
    with pytest.raises(ValueError):
        header_files_per_task(n, cpus, cap=cap)


P = SLICE_PIXELS


def test_decode_tasks_start_with_the_longest_series() -> None:
    # 4 tasks of ~512 slices for 2 CPUs: two full waves; pairs of equal series are balanced.
    assert decode_task_groups([256 * P] * 8, 2, target=512 * P) == [[0, 4], [1, 5], [2, 6], [3, 7]]
    # A long series is a task of its own, first; the short ones fill the other task(s).
    assert decode_task_groups([10 * P, 900 * P, 40 * P, 30 * P], 2, target=512 * P) == [[1], [2, 3, 0]]
    assert decode_task_groups([5, 5, 5], 1, target=100) == [[0, 1, 2]]  # one small task
    assert decode_task_groups([], 4, target=100) == []


@pytest.mark.parametrize("cpus", [1, 2, 3, 8, 64])
@pytest.mark.parametrize("target", [64 * P, 512 * P, 4096 * P])
def test_decode_tasks_take_every_series_once_in_balanced_waves(cpus: int, target: int) -> None:
    costs = [((i * 7919) % 613 + 1) * P for i in range(101)]  # 1..613 slices
    groups = decode_task_groups(costs, cpus, target=target)
    flat = sorted(i for g in groups for i in g)
    assert flat == list(range(len(costs)))
    assert len(groups) == decode_task_count(sum(costs), len(costs), cpus, target=target)
    assert len(groups) == len(costs) or len(groups) % cpus == 0  # whole waves
    work = [sum(costs[i] for i in g) for g in groups]
    assert work == sorted(work, reverse=True)  # heaviest first
    # Greedy LPT: no task exceeds the ideal share by more than the longest series it could not split.
    assert max(work) <= sum(costs) / len(groups) + max(costs)
    for g in groups:
        assert [costs[i] for i in g] == sorted((costs[i] for i in g), reverse=True)


def test_decode_task_count() -> None:
    assert decode_task_count(2048 * P, 8, 2, target=512 * P) == 4
    assert decode_task_count(2048 * P, 8, 3, target=512 * P) == 6  # rounded up to whole waves
    assert decode_task_count(2048 * P, 3, 4, target=512 * P) == 3  # never more tasks than series
    assert decode_task_count(1, 1, 4, target=512 * P) == 1
    assert decode_task_count(0, 0, 4, target=512 * P) == 0
    with pytest.raises(ValueError):
        decode_task_count(1, 1, 0, target=1)


def test_series_cost() -> None:
    assert series_cost(pending=True, rows=512, cols=512, frames=300, nbytes=0) == 300 * P
    voxels = 91 * 109 * 91  # a NIfTI volume: no rows/cols in its plan, 2 bytes per voxel
    assert series_cost(pending=True, rows=None, cols=None, frames=1, nbytes=2 * voxels) == voxels
    assert series_cost(pending=False, rows=512, cols=512, frames=300, nbytes=10**9) == 1  # only recorded
