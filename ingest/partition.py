"""How the ingest job cuts its work into Ray tasks (pure decisions, no Ray).

A task has a fixed cost besides its work: scheduling, a worker's round trip to the driver, its
output's metadata (25-80 ms per task on the project's VM, see docs/BENCHMARKS.md). So a task should
be big; but a small archive should still keep every CPU busy from the first moment, and a task must
stay small enough that a retry or a straggler costs little.
"""

from __future__ import annotations

from collections.abc import Sequence

MIN_HEADER_FILES_PER_TASK = 64  # below this a task is mostly overhead


def header_files_per_task(n_objects: int, cpus: int, *, cap: int) -> int:
    """Files per header-reading task: one wave over every CPU for a small archive, ``cap`` for a big one.

    >>> header_files_per_task(2048, 2, cap=2048)   # two tasks, both CPUs at once
    1024
    >>> header_files_per_task(1_000_000, 64, cap=2048)
    2048
    >>> header_files_per_task(10, 8, cap=2048)     # a handful of files: one task
    64
    """
    if n_objects < 0 or cpus < 1 or cap < 1:
        raise ValueError(f"need n_objects >= 0, cpus >= 1, cap >= 1 (got {n_objects}, {cpus}, {cap})")
    per_cpu = -(-n_objects // cpus)
    return max(1, min(cap, max(MIN_HEADER_FILES_PER_TASK, per_cpu)))


def decode_task_groups(sizes: Sequence[int], series_per_task: int) -> list[list[int]]:
    """Indices of the series each decoding task takes, the biggest series first.

    Tasks start in list order and a free worker takes the next one, so starting with the longest
    series (by number of source objects) leaves short ones to fill the end and no worker finishes
    long after the others (longest-processing-time-first). Ties keep their input order, so the
    grouping is deterministic.

    >>> decode_task_groups([10, 300, 40, 300], 2)
    [[1, 3], [2, 0]]
    """
    if series_per_task < 1:
        raise ValueError(f"series_per_task must be >= 1 (got {series_per_task})")
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i])
    return [order[i : i + series_per_task] for i in range(0, len(order), series_per_task)]


__all__ = ["MIN_HEADER_FILES_PER_TASK", "decode_task_groups", "header_files_per_task"]
