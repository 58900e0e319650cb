from datetime import UTC, datetime

import pytest

from radforge.services.schedule.decisions import (
    ArchiveObservation,
    QueuedJob,
    choose_jobs_to_start,
    decide_archive,
    next_poll,
    plan_submissions,
)


def job(
    id: str, *, prio: int = 0, at: float = 0.0, locks: tuple[str, ...] = (), kind: str = "ingest"
) -> QueuedJob:
    return QueuedJob(id=id, kind=kind, priority=prio, created_at=at, locks=frozenset(locks))


def test_higher_priority_then_older_first() -> None:
    queued = [job("new", at=3), job("old", at=1), job("urgent", prio=5, at=9), job("mid", at=2)]
    assert choose_jobs_to_start(queued, held_locks=(), running=0, max_running=3) == ["urgent", "old", "mid"]


def test_slots_left_limit_starts() -> None:
    queued = [job("a", at=1), job("b", at=2)]
    assert choose_jobs_to_start(queued, held_locks=(), running=2, max_running=3) == ["a"]
    assert choose_jobs_to_start(queued, held_locks=(), running=3, max_running=3) == []


def test_an_archive_is_never_worked_on_by_two_jobs_at_once() -> None:
    queued = [
        job("same-archive", at=1, locks=("archive:/a", "dataset:/d1")),
        job("other", at=2, locks=("archive:/b", "dataset:/d2")),
        job("same-archive-twice", at=3, locks=("archive:/b", "dataset:/d3")),
    ]
    # /a is held by a running job: its job waits without blocking the others; of two queued jobs
    # for /b only the first starts.
    assert choose_jobs_to_start(queued, held_locks={"archive:/a"}, running=1, max_running=10) == ["other"]


def test_one_dataset_one_writer() -> None:
    queued = [
        job("x", at=1, locks=("archive:/x", "dataset:/d")),
        job("y", at=2, locks=("archive:/y", "dataset:/d")),
    ]
    assert choose_jobs_to_start(queued, held_locks=(), running=0, max_running=10) == ["x"]


def test_per_kind_limits() -> None:
    queued = [job("t1", kind="train", at=1), job("t2", kind="train", at=2), job("i1", at=3)]
    chosen = choose_jobs_to_start(
        queued, held_locks=(), running=0, max_running=10, max_running_by_kind={"train": 1}
    )
    assert chosen == ["t1", "i1"]
    chosen = choose_jobs_to_start(
        queued,
        held_locks=(),
        running=1,
        max_running=10,
        max_running_by_kind={"train": 1},
        running_by_kind={"train": 1},
    )
    assert chosen == ["i1"]


def test_next_poll_interval_and_cron() -> None:
    after = datetime(2026, 11, 27, 10, 7, 30, tzinfo=UTC)
    assert next_poll(interval_seconds=90, cron=None, after=after) == datetime(2026, 11, 27, 10, 9, tzinfo=UTC)
    assert next_poll(interval_seconds=None, cron="*/15 * * * *", after=after) == datetime(
        2026, 11, 27, 10, 15, tzinfo=UTC
    )
    with pytest.raises(ValueError, match="interval_seconds or cron"):
        next_poll(interval_seconds=None, cron=None, after=after)


@pytest.mark.parametrize(
    "obs, submit, reason",
    [
        (ArchiveObservation("a", in_catalog=False, active=False), True, "new archive"),
        (ArchiveObservation("a", in_catalog=True, active=False), False, "ingested"),
        (ArchiveObservation("a", in_catalog=False, active=False, last_state="succeeded"), False, "ingested"),
        (ArchiveObservation("a", in_catalog=False, active=True), False, "queued or running"),
        (
            ArchiveObservation("a", in_catalog=True, active=True, fingerprint="2", ingested_fingerprint="1"),
            False,
            "queued or running",
        ),
        (
            ArchiveObservation("a", in_catalog=True, active=False, fingerprint="2", ingested_fingerprint="1"),
            True,
            "objects added",
        ),
        (
            ArchiveObservation("a", in_catalog=True, active=False, fingerprint="1", ingested_fingerprint="1"),
            False,
            "ingested",
        ),
        (
            ArchiveObservation("a", in_catalog=True, active=False, inventory_unchanged=True),
            False,
            "no object",
        ),
        (
            ArchiveObservation(
                "a",
                in_catalog=True,
                active=False,
                fingerprint="2",
                ingested_fingerprint="1",
                inventory_unchanged=True,
            ),
            False,
            "ingested; no object added",  # the inventory (with ETags/mtimes) decides, not the names and sizes
        ),
        (ArchiveObservation("a", in_catalog=True, active=False, inventory_unchanged=False), True, "changed"),
        (ArchiveObservation("a", in_catalog=True, active=True, inventory_unchanged=False), False, "running"),
        (
            ArchiveObservation("a", in_catalog=False, active=False, last_state="failed", failed_attempts=1),
            True,
            "retry after 1",
        ),
        (
            ArchiveObservation("a", in_catalog=False, active=False, last_state="failed", failed_attempts=3),
            False,
            "failed 3 time",
        ),
        (ArchiveObservation("a", in_catalog=False, active=False, last_state="cancelled"), False, "cancelled"),
    ],
)
def test_decide_archive(obs: ArchiveObservation, submit: bool, reason: str) -> None:
    decision = decide_archive(obs, max_attempts=3)
    assert decision.submit is submit
    assert reason in decision.reason


def test_plan_submissions_in_name_order() -> None:
    obs = [
        ArchiveObservation(n, in_catalog=n == "2026-11-02", active=False)
        for n in ("2026-11-03", "2026-11-01", "2026-11-02")
    ]
    plan = plan_submissions(obs, max_attempts=3)
    assert [(d.name, d.submit) for d in plan] == [
        ("2026-11-01", True),
        ("2026-11-02", False),
        ("2026-11-03", True),
    ]
