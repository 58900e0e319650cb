"""The service's records in SQLite: jobs, watched sources, archive fingerprints.

One connection per thread (WAL: readers never wait for the writer), every write a single
statement or one short transaction, so API threads, the runner and the scheduler share the file
safely. The records are the service's memory across restarts: nothing about a job lives only in
a process.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from services.models import JobRecord, JobState, SourceRecord

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    origin TEXT NOT NULL,
    source_id TEXT,
    archive TEXT,
    spec TEXT NOT NULL,
    locks TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    cancel_signalled_at REAL,
    pid INTEGER,
    proc_start INTEGER,
    job_dir TEXT,
    ray_address TEXT,
    exit_code INTEGER,
    error TEXT,
    progress TEXT,
    result TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, priority DESC, created_at);
CREATE INDEX IF NOT EXISTS jobs_by_created ON jobs (created_at DESC);
CREATE INDEX IF NOT EXISTS jobs_by_source ON jobs (source_id, archive, created_at);
CREATE TABLE IF NOT EXISTS sources (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    uri TEXT NOT NULL,
    dataset_uri TEXT NOT NULL,
    interval_seconds REAL,
    cron TEXT,
    priority INTEGER NOT NULL,
    enabled INTEGER NOT NULL,
    ready_marker TEXT,
    rescan_ingested INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    config TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    next_poll_at REAL NOT NULL,
    last_poll_at REAL,
    last_lag_seconds REAL,
    last_error TEXT
);
CREATE TABLE IF NOT EXISTS archive_fingerprints (
    source_id TEXT NOT NULL,
    name TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (source_id, name)
);
"""
_JSON_COLUMNS = frozenset({"spec", "locks", "progress", "result", "config"})
_BOOL_COLUMNS = frozenset({"cancel_requested", "enabled", "rescan_ingested"})
ACTIVE_STATES = (JobState.QUEUED.value, JobState.RUNNING.value)


class StoreError(RuntimeError):
    """The database cannot be opened or has a schema this build does not know."""


def _row(row: sqlite3.Row) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in row.keys():
        value = row[key]
        if key in _JSON_COLUMNS and value is not None:
            value = json.loads(value)
        elif key in _BOOL_COLUMNS:
            value = bool(value)
        out[key] = value
    return out


def _encode(values: dict[str, Any]) -> dict[str, Any]:
    return {
        k: json.dumps(v, sort_keys=True) if k in _JSON_COLUMNS and v is not None else v
        for k, v in values.items()
    }


class Store:
    """Jobs, sources and archive fingerprints in one SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        c = self._conn()
        version = c.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise StoreError(f"{path}: database schema {version} is newer than this build ({SCHEMA_VERSION})")
        c.executescript(SCHEMA)
        c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # ---- connections --------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
            except sqlite3.Error as e:
                raise StoreError(f"{self.path}: cannot open the database ({e})") from None
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        c = self._conn()
        c.execute("BEGIN IMMEDIATE")
        try:
            yield c
        except BaseException:
            c.execute("ROLLBACK")
            raise
        c.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()

    def ping(self) -> bool:
        return self._conn().execute("SELECT 1").fetchone()[0] == 1

    # ---- jobs ---------------------------------------------------------------------------------
    def insert_job(self, job: JobRecord) -> None:
        values = _encode(job.model_dump(mode="json"))
        values["state"] = job.state.value
        cols = ", ".join(values)
        marks = ", ".join(f":{k}" for k in values)
        self._conn().execute(f"INSERT INTO jobs ({cols}) VALUES ({marks})", values)

    def insert_jobs(self, jobs: Sequence[JobRecord]) -> None:
        """Insert many records in one transaction (benchmarks, imports)."""
        if not jobs:
            return
        rows = [_encode(j.model_dump(mode="json")) for j in jobs]
        cols = ", ".join(rows[0])
        marks = ", ".join(f":{k}" for k in rows[0])
        with self._tx() as c:
            c.executemany(f"INSERT INTO jobs ({cols}) VALUES ({marks})", rows)

    def get_job(self, job_id: str) -> JobRecord | None:
        row = self._conn().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else JobRecord.model_validate(_row(row))

    def list_jobs(
        self,
        *,
        kind: str | None = None,
        states: Sequence[str] = (),
        source_id: str | None = None,
        origin: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[JobRecord], int]:
        """One page of jobs (newest first) matching the filters, and how many match in all."""
        where, args = [], []
        for column, value in (("kind", kind), ("source_id", source_id), ("origin", origin)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if states:
            where.append(f"state IN ({', '.join('?' * len(states))})")
            args.extend(states)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        c = self._conn()
        total = c.execute(f"SELECT COUNT(*) FROM jobs {clause}", args).fetchone()[0]
        rows = c.execute(
            f"SELECT * FROM jobs {clause} ORDER BY created_at DESC, id LIMIT ? OFFSET ?",
            [*args, limit, offset],
        ).fetchall()
        return [JobRecord.model_validate(_row(r)) for r in rows], int(total)

    def jobs_in_states(self, *states: JobState) -> list[JobRecord]:
        marks = ", ".join("?" * len(states))
        rows = (
            self._conn()
            .execute(
                f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY priority DESC, created_at",
                [s.value for s in states],
            )
            .fetchall()
        )
        return [JobRecord.model_validate(_row(r)) for r in rows]

    def active_locks(self) -> set[str]:
        """Locks (archives, datasets) of every queued or running job."""
        rows = self._conn().execute("SELECT locks FROM jobs WHERE state IN (?, ?)", ACTIVE_STATES).fetchall()
        return {lock for r in rows for lock in json.loads(r[0])}

    def claim_job(self, job_id: str, *, now: float) -> bool:
        """Queued -> running; False if the job is no longer queued (cancelled meanwhile)."""
        cur = self._conn().execute(
            "UPDATE jobs SET state = ?, started_at = ?, updated_at = ? WHERE id = ? AND state = ?",
            (JobState.RUNNING.value, now, now, job_id, JobState.QUEUED.value),
        )
        return cur.rowcount == 1

    def set_process(
        self, job_id: str, *, pid: int, proc_start: int | None, job_dir: str, ray_address: str, now: float
    ) -> None:
        self._conn().execute(
            "UPDATE jobs SET pid = ?, proc_start = ?, job_dir = ?, ray_address = ?, updated_at = ? "
            "WHERE id = ?",
            (pid, proc_start, job_dir, ray_address, now, job_id),
        )

    def update_progress(self, job_id: str, progress: dict[str, Any], *, now: float) -> None:
        self._conn().execute(
            "UPDATE jobs SET progress = ?, updated_at = ? WHERE id = ?",
            (json.dumps(progress, sort_keys=True), now, job_id),
        )

    def finish_job(
        self,
        job_id: str,
        *,
        state: JobState,
        now: float,
        exit_code: int | None = None,
        error: str | None = None,
        result: dict[str, Any] | None = None,
        progress: dict[str, Any] | None = None,
    ) -> bool:
        """Running (or queued) -> a terminal state, once; False if it had already ended."""
        cur = self._conn().execute(
            "UPDATE jobs SET state = ?, finished_at = ?, updated_at = ?, exit_code = ?, error = ?, "
            "result = COALESCE(?, result), progress = COALESCE(?, progress) WHERE id = ? AND state IN (?, ?)",
            (
                state.value,
                now,
                now,
                exit_code,
                error,
                None if result is None else json.dumps(result, sort_keys=True),
                None if progress is None else json.dumps(progress, sort_keys=True),
                job_id,
                *ACTIVE_STATES,
            ),
        )
        return cur.rowcount == 1

    def request_cancel(self, job_id: str, *, now: float) -> tuple[JobRecord | None, bool]:
        """Cancel a queued job at once, or flag a running one (the runner signals it).

        Returns the record (None if unknown) and whether this call cancelled a queued job.
        """
        with self._tx() as c:
            cur = c.execute(
                "UPDATE jobs SET state = ?, finished_at = ?, updated_at = ?, cancel_requested = 1 "
                "WHERE id = ? AND state = ?",
                (JobState.CANCELLED.value, now, now, job_id, JobState.QUEUED.value),
            )
            dequeued = cur.rowcount == 1
            c.execute(
                "UPDATE jobs SET cancel_requested = 1, updated_at = ? WHERE id = ? AND state = ?",
                (now, job_id, JobState.RUNNING.value),
            )
        return self.get_job(job_id), dequeued

    def mark_cancel_signalled(self, job_id: str, *, now: float) -> None:
        self._conn().execute(
            "UPDATE jobs SET cancel_signalled_at = ?, updated_at = ? WHERE id = ?", (now, now, job_id)
        )

    def count_by_kind_state(self) -> dict[tuple[str, str], int]:
        rows = self._conn().execute("SELECT kind, state, COUNT(*) FROM jobs GROUP BY kind, state").fetchall()
        return {(r[0], r[1]): int(r[2]) for r in rows}

    def archive_history(self, source_id: str) -> dict[str, list[str]]:
        """Archive name -> states of the source's jobs for it, oldest first."""
        rows = (
            self._conn()
            .execute(
                "SELECT archive, state FROM jobs WHERE source_id = ? AND archive IS NOT NULL "
                "ORDER BY created_at",
                (source_id,),
            )
            .fetchall()
        )
        history: dict[str, list[str]] = {}
        for archive, state in rows:
            history.setdefault(archive, []).append(state)
        return history

    # ---- sources ------------------------------------------------------------------------------
    def insert_source(self, source: SourceRecord) -> None:
        values = _encode(source.model_dump(mode="json"))
        cols = ", ".join(values)
        marks = ", ".join(f":{k}" for k in values)
        self._conn().execute(f"INSERT INTO sources ({cols}) VALUES ({marks})", values)

    def get_source(self, source_id: str) -> SourceRecord | None:
        row = self._conn().execute("SELECT * FROM sources WHERE id = ?", (source_id,)).fetchone()
        return None if row is None else SourceRecord.model_validate(_row(row))

    def source_name_taken(self, name: str) -> bool:
        return self._conn().execute("SELECT 1 FROM sources WHERE name = ?", (name,)).fetchone() is not None

    def list_sources(self) -> list[SourceRecord]:
        rows = self._conn().execute("SELECT * FROM sources ORDER BY name").fetchall()
        return [SourceRecord.model_validate(_row(r)) for r in rows]

    def due_sources(self, *, now: float) -> list[SourceRecord]:
        rows = (
            self._conn()
            .execute(
                "SELECT * FROM sources WHERE enabled = 1 AND next_poll_at <= ? ORDER BY next_poll_at", (now,)
            )
            .fetchall()
        )
        return [SourceRecord.model_validate(_row(r)) for r in rows]

    def update_source(self, source_id: str, values: dict[str, Any]) -> None:
        if not values:
            return
        encoded = _encode(values)
        sets = ", ".join(f"{k} = :{k}" for k in encoded)
        self._conn().execute(f"UPDATE sources SET {sets} WHERE id = :_id", {**encoded, "_id": source_id})

    def delete_source(self, source_id: str) -> bool:
        with self._tx() as c:
            c.execute("DELETE FROM archive_fingerprints WHERE source_id = ?", (source_id,))
            cur = c.execute("DELETE FROM sources WHERE id = ?", (source_id,))
        return cur.rowcount == 1

    def count_sources(self) -> int:
        return int(self._conn().execute("SELECT COUNT(*) FROM sources").fetchone()[0])

    def fingerprints(self, source_id: str) -> dict[str, str]:
        rows = (
            self._conn()
            .execute("SELECT name, fingerprint FROM archive_fingerprints WHERE source_id = ?", (source_id,))
            .fetchall()
        )
        return {r[0]: r[1] for r in rows}

    def set_fingerprint(self, source_id: str, name: str, fingerprint: str, *, now: float) -> None:
        self._conn().execute(
            "INSERT INTO archive_fingerprints (source_id, name, fingerprint, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (source_id, name) DO UPDATE SET fingerprint = excluded.fingerprint, "
            "updated_at = excluded.updated_at",
            (source_id, name, fingerprint, now),
        )
