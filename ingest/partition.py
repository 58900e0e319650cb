"""How the ingest job cuts its work into Ray tasks (pure decisions, no Ray).

A task has a fixed cost besides its work: scheduling, a worker's round trip to the driver, its
output's metadata (25-80 ms per task on the project's VM, see docs/BENCHMARKS.md). So a task should
be big; but a small archive should still keep every CPU busy from the first moment, and a task must
stay small enough that a retry or a straggler costs little.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

MIN_HEADER_FILES_PER_TASK = 64  # below this a task is mostly overhead


def header_files_per_task(n_objects: int, cpus: int, *, cap: int) -> int:
    """Files per header-reading task: whole waves of equal tasks over every CPU, none above ``cap``.

    The task count is the fewest tasks of at most ``cap`` files, rounded up to a multiple of the
    CPUs, so the last wave is as full as the others (3 tasks on 2 CPUs would leave one alone).

    >>> header_files_per_task(2048, 2, cap=2048)   # two tasks, both CPUs at once
    1024
    >>> header_files_per_task(6144, 2, cap=2048)   # four tasks in two full waves, not three
    1536
    >>> header_files_per_task(10, 8, cap=2048)     # a handful of files: one task
    64
    """
    if n_objects < 0 or cpus < 1 or cap < 1:
        raise ValueError(f"need n_objects >= 0, cpus >= 1, cap >= 1 (got {n_objects}, {cpus}, {cap})")
    tasks = max(1, -(-n_objects // cap))
    tasks = -(-tasks // cpus) * cpus
    return max(1, min(cap, max(MIN_HEADER_FILES_PER_TASK, -(-n_objects // tasks))))


SLICE_PIXELS = 512 * 512  # the unit of decode work: one 512 x 512 slice


def series_cost(*, pending: bool, rows: int | None, cols: int | None, frames: int, nbytes: int) -> int:
    """Work estimate of decoding and writing one series, in pixels.

    Pixels, not objects or bytes: a slice's cost follows its size, and a compressed file is small
    but no cheaper to decode. Without dimensions (a NIfTI volume) the object's bytes stand in at
    two per voxel. A series that is only recorded (skipped, quarantined) costs one pixel.
    """
    if not pending:
        return 1
    if rows and cols:
        return max(1, rows * cols * max(frames, 1))
    return max(1, nbytes // 2)


def decode_task_count(total_cost: int, n_series: int, cpus: int, *, target: int) -> int:
    """How many decoding tasks: about ``target`` pixels each, whole waves over ``cpus``, <= one per series."""
    if cpus < 1 or target < 1:
        raise ValueError(f"need cpus >= 1 and target >= 1 (got {cpus}, {target})")
    if n_series == 0:
        return 0
    tasks = max(1, -(-total_cost // target))
    return min(n_series, -(-tasks // cpus) * cpus)


def decode_task_groups(costs: Sequence[int], cpus: int, *, target: int) -> list[list[int]]:
    """Indices of the series each decoding task takes: balanced tasks, the biggest first.

    Every task costs a fixed 25-80 ms besides its work (scheduling, a round trip to the driver), so
    tasks are about ``target`` pixels (several short series together; a long series alone), and
    there are a whole number of waves of ``cpus`` tasks. Series are dealt longest first to the task
    with the least work so far (greedy longest-processing-time, within 4/3 of the best split), and
    the tasks are listed heaviest first: a free worker takes the next one, so light tasks fill the
    end and no worker finishes long after the others. Within a task series keep the longest-first
    order; ties keep their input order, so the grouping is deterministic.

    >>> decode_task_groups([256 * SLICE_PIXELS] * 8, 2, target=512 * SLICE_PIXELS)  # 2 waves of 2
    [[0, 4], [1, 5], [2, 6], [3, 7]]
    """
    n_tasks = decode_task_count(sum(costs), len(costs), cpus, target=target)
    order = sorted(range(len(costs)), key=lambda i: -costs[i])
    loads = [(0, t) for t in range(n_tasks)]  # a heap of (work so far, task)
    groups: list[list[int]] = [[] for _ in range(n_tasks)]
    for i in order:
        load, t = heapq.heappop(loads)
        groups[t].append(i)
        heapq.heappush(loads, (load + costs[i], t))
    work = [sum(costs[i] for i in g) for g in groups]
    return [groups[t] for t in sorted(range(n_tasks), key=lambda t: -work[t])]


__all__ = [
    "MIN_HEADER_FILES_PER_TASK",
    "SLICE_PIXELS",
    "decode_task_count",
    "decode_task_groups",
    "header_files_per_task",
    "series_cost",
]
