"""Cutting the ingest into Ray tasks: header tasks fill every CPU at once, decode tasks go biggest first."""

from __future__ import annotations

import pytest

from ingest.partition import MIN_HEADER_FILES_PER_TASK, decode_task_groups, header_files_per_task


@pytest.mark.parametrize(
    ("n", "cpus", "cap", "want"),
    [
        (2048, 2, 2048, 1024),  # a small archive: one task per CPU, all running at once
        (2049, 2, 2048, 1025),
        (1_000_000, 64, 2048, 2048),  # a big one: capped tasks, many waves
        (10, 8, 2048, MIN_HEADER_FILES_PER_TASK),  # a handful of files: one task, not eight tiny ones
        (0, 4, 2048, MIN_HEADER_FILES_PER_TASK),
        (5000, 1, 100, 100),  # the cap wins over the floor of 64 only when set lower by the user
        (100, 4, 10, 10),
    ],
)
def test_header_files_per_task(n: int, cpus: int, cap: int, want: int) -> None:
    assert header_files_per_task(n, cpus, cap=cap) == want


def test_header_tasks_cover_a_small_archive_in_one_wave() -> None:
    for n in range(MIN_HEADER_FILES_PER_TASK * 8, 20_000, 997):
        for cpus in (1, 2, 3, 8):
            per = header_files_per_task(n, cpus, cap=2048)
            tasks = -(-n // per)
            if n <= cpus * 2048:
                assert tasks <= cpus  # nobody waits for a second wave
            assert per <= 2048


@pytest.mark.parametrize(("n", "cpus", "cap"), [(-1, 1, 1), (1, 0, 1), (1, 1, 0)])
def test_header_files_per_task_refuses_nonsense(n: int, cpus: int, cap: int) -> None:
    with pytest.raises(ValueError):
        header_files_per_task(n, cpus, cap=cap)


def test_decode_tasks_start_with_the_longest_series() -> None:
    assert decode_task_groups([10, 300, 40, 300], 1) == [[1], [3], [2], [0]]
    assert decode_task_groups([10, 300, 40, 300], 2) == [[1, 3], [2, 0]]
    assert decode_task_groups([5, 5, 5], 2) == [[0, 1], [2]]  # ties keep their order: deterministic
    assert decode_task_groups([], 3) == []


def test_decode_tasks_take_every_series_once() -> None:
    sizes = [(i * 7919) % 613 for i in range(101)]
    for per in (1, 2, 3, 7, 200):
        groups = decode_task_groups(sizes, per)
        flat = [i for g in groups for i in g]
        assert sorted(flat) == list(range(len(sizes)))
        assert all(1 <= len(g) <= per for g in groups)
        assert [sizes[i] for i in flat] == sorted(sizes, reverse=True)


def test_decode_task_groups_refuses_zero_series_per_task() -> None:
    with pytest.raises(ValueError):
        decode_task_groups([1], 0)
