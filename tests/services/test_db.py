"""The store on both engines (a SQLite file, a real PostgreSQL server): the same records, the same
once-only transitions, schema versions and upgrades.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from radforge.services.app.db import SCHEMA_VERSION, Store, StoreError
from radforge.services.app.models import JobRecord, JobState, SourceRecord


def _job(job_id: str, *, state: JobState = JobState.QUEUED, t: float = 1_700_000_000.0) -> JobRecord:
    return JobRecord(
        id=job_id,
        kind="train",
        state=state,
        priority=3,
        spec={"kind": "train", "output_uri": "file:///runs/a", "run": {"steps": 2}},
        locks=["output:file:///runs/a"],
        created_at=t,
        updated_at=t,
    )


def test_jobs_round_trip_and_transitions_happen_once(database: str) -> None:
    store = Store(database)
    try:
        assert store.ping()
        store.insert_job(_job("a"))
        store.insert_jobs([_job(f"b{i}", t=1_700_000_001.0 + i) for i in range(3)])
        assert store.get_job("a") == _job("a")  # JSON columns, floats and booleans come back as written
        assert store.active_locks() == {"output:file:///runs/a"}
        assert store.claim_job("a", now=1.0) and not store.claim_job("a", now=2.0)
        store.set_process(
            "a",
            pid=None,
            proc_start=2**40,
            job_dir="s3://state/jobs/a",
            ray_address="x",
            ray_job_id="radforge-a",
            now=3.0,
        )
        store.update_progress("a", {"step": 1, "total_steps": 2}, now=4.0)
        record, dequeued = store.request_cancel("a", now=5.0)
        assert record is not None and not dequeued and record.cancel_requested and record.state == "running"
        assert store.finish_job("a", state=JobState.CANCELLED, now=6.0, result={"step": 1})
        assert not store.finish_job("a", state=JobState.SUCCEEDED, now=7.0)  # once only
        a = store.get_job("a")
        assert a is not None and a.state == JobState.CANCELLED and a.ray_job_id == "radforge-a"
        assert (
            a.proc_start == 2**40 and a.progress == {"step": 1, "total_steps": 2} and a.result == {"step": 1}
        )
        _, dequeued = store.request_cancel("b0", now=8.0)
        assert dequeued and store.get_job("b0").state == JobState.CANCELLED  # type: ignore[union-attr]
        page, total = store.list_jobs(kind="train", states=["queued"], limit=1, offset=0)
        assert total == 2 and [j.id for j in page] == ["b2"]
        assert store.count_by_kind_state() == {("train", "cancelled"): 2, ("train", "queued"): 2}
    finally:
        store.close()


def test_sources_and_fingerprints(database: str) -> None:
    store = Store(database)
    try:
        source = SourceRecord(
            id="s1",
            name="hospital-a",
            uri="s3://h/in/",
            dataset_uri="s3://d/ct",
            interval_seconds=60.0,
            cron=None,
            priority=0,
            enabled=True,
            ready_marker=None,
            rescan_ingested=False,
            max_attempts=3,
            config={},
            created_at=1.0,
            updated_at=1.0,
            next_poll_at=10.0,
        )
        store.insert_source(source)
        assert store.get_source("s1") == source and store.source_name_taken("hospital-a")
        assert [s.id for s in store.due_sources(now=10.0)] == ["s1"] and store.due_sources(now=9.0) == []
        store.update_source("s1", {"enabled": False, "last_error": "x"})
        assert store.due_sources(now=10.0) == [] and store.count_sources() == 1
        store.set_fingerprint("s1", "arch-1", "f1", now=1.0)
        store.set_fingerprint("s1", "arch-1", "f2", now=2.0)  # an upsert on both engines
        assert store.fingerprints("s1") == {"arch-1": "f2"}
        assert store.delete_source("s1") and store.fingerprints("s1") == {} and not store.delete_source("s1")
    finally:
        store.close()


def test_a_version_1_sqlite_database_is_upgraded_and_a_newer_one_refused(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # the schema of the first build: no ray_job_id column
        conn.execute(
            "CREATE TABLE jobs (id TEXT PRIMARY KEY, kind TEXT, state TEXT, priority INTEGER, "
            "origin TEXT, source_id TEXT, archive TEXT, spec TEXT, locks TEXT, created_at REAL, "
            "updated_at REAL, started_at REAL, finished_at REAL, cancel_requested INTEGER, "
            "cancel_signalled_at REAL, pid INTEGER, proc_start INTEGER, job_dir TEXT, "
            "ray_address TEXT, exit_code INTEGER, error TEXT, progress TEXT, result TEXT)"
        )
        conn.execute("PRAGMA user_version = 1")
    store = Store(path)
    store.insert_job(_job("kept"))
    store.set_process(
        "kept", pid=1, proc_start=1, job_dir="/j", ray_address="r", ray_job_id="radforge-kept", now=1.0
    )
    assert store.get_job("kept").ray_job_id == "radforge-kept"  # type: ignore[union-attr]
    store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer than this build"):
        Store(path)


def test_an_unreachable_postgresql_is_a_store_error_without_secrets() -> None:
    with pytest.raises(StoreError) as e:
        Store("postgresql://radforge@127.0.0.1:9/radforge?connect_timeout=2")
    assert "cannot open the database" in str(e.value)
