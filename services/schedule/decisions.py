"""Scheduling decisions as pure functions.

Which queued jobs start, when a source is polled next, which archives of a watched prefix get an
ingest job.

The runner and the scheduler (threads, Ray, storage) only gather facts and apply these answers,
so every rule here is tested without a process, a clock or a bucket.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from radforge.services.schedule.cron import next_fire, parse_cron


@dataclass(frozen=True)
class QueuedJob:
    """What the dispatcher needs to know about a queued job."""

    id: str
    kind: str
    priority: int
    created_at: float
    locks: frozenset[str]


def choose_jobs_to_start(
    queued: Sequence[QueuedJob],
    *,
    held_locks: Iterable[str],
    running: int,
    max_running: int,
    max_running_by_kind: dict[str, int] | None = None,
    running_by_kind: dict[str, int] | None = None,
) -> list[str]:
    """Ids of the queued jobs to start now, in start order.

    Highest priority first, then oldest. A job whose locks (its archive, its dataset) are held by a
    running job, or by a job chosen earlier in this pass, waits without blocking the jobs behind it;
    so one archive (or one dataset) is never worked on by two jobs at once. At most ``max_running``
    jobs run in all, and at most ``max_running_by_kind[kind]`` of one kind.
    """
    held = set(held_locks)
    per_kind = dict(running_by_kind or {})
    limits = max_running_by_kind or {}
    slots = max_running - running
    chosen: list[str] = []
    for job in sorted(queued, key=lambda j: (-j.priority, j.created_at, j.id)):
        if slots <= 0:
            break
        if job.locks & held:
            continue
        if job.kind in limits and per_kind.get(job.kind, 0) >= limits[job.kind]:
            continue
        chosen.append(job.id)
        held |= job.locks
        per_kind[job.kind] = per_kind.get(job.kind, 0) + 1
        slots -= 1
    return chosen


def next_poll(*, interval_seconds: float | None, cron: str | None, after: datetime) -> datetime:
    """When a source polled (or created) at ``after`` is due next: every interval, or at cron times."""
    if cron is not None:
        fire = next_fire(parse_cron(cron), after=after)
        if fire is None:  # parse_cron refuses expressions that never fire
            raise ValueError(f"cron {cron!r} never fires")
        return fire
    if interval_seconds is None:
        raise ValueError("a source needs interval_seconds or cron")
    return after + timedelta(seconds=interval_seconds)


@dataclass(frozen=True)
class ArchiveObservation:
    """One archive (a folder under a watched prefix) as the scheduler sees it in one poll."""

    name: str
    in_catalog: bool  # the dataset's catalog has a part with this archive id
    active: bool  # a queued or running job of this service works on it
    last_state: str | None = None  # state of the last finished job for it, if any
    failed_attempts: int = 0  # failed jobs since its last success
    fingerprint: str | None = None  # of its objects now (only when rescanning ingested archives)
    ingested_fingerprint: str | None = None  # of its objects when it was last ingested
    # whether its listing equals the inventory its last ingest left in the dataset (only when
    # rescanning ingested archives; None: no inventory, the fingerprints above decide)
    inventory_unchanged: bool | None = None


@dataclass(frozen=True)
class ArchiveDecision:
    """Whether to submit an ingest job for an archive, and why (shown by the poll endpoint)."""

    name: str
    submit: bool
    reason: str


def decide_archive(obs: ArchiveObservation, *, max_attempts: int) -> ArchiveDecision:
    """The rule for one archive. Never submits while a job for it is queued or running."""

    def answer(submit: bool, reason: str) -> ArchiveDecision:
        return ArchiveDecision(name=obs.name, submit=submit, reason=reason)

    if obs.active:
        return answer(False, "a job for it is queued or running")
    if obs.in_catalog or obs.last_state == "succeeded":
        if obs.inventory_unchanged is not None:  # listed and compared: no header read, no job
            if obs.inventory_unchanged:
                return answer(False, "ingested; no object added, changed or removed since (inventory)")
            return answer(True, "objects added, changed or removed since it was ingested (inventory)")
        changed = (
            obs.fingerprint is not None
            and obs.ingested_fingerprint is not None
            and obs.fingerprint != obs.ingested_fingerprint
        )
        return answer(True, "objects added since it was ingested") if changed else answer(False, "ingested")
    if obs.last_state == "cancelled":
        return answer(False, "its last job was cancelled (submit it by hand to retry)")
    if obs.last_state == "failed":
        if obs.failed_attempts >= max_attempts:
            return answer(False, f"failed {obs.failed_attempts} time(s); not retried automatically")
        return answer(True, f"retry after {obs.failed_attempts} failed attempt(s)")
    return answer(True, "new archive")


def plan_submissions(
    observations: Sequence[ArchiveObservation], *, max_attempts: int
) -> list[ArchiveDecision]:
    """:func:`decide_archive` for every archive, sorted by name (oldest delivery first for dated names)."""
    return [decide_archive(o, max_attempts=max_attempts) for o in sorted(observations, key=lambda o: o.name)]
