"""The service's records in SQLite or PostgreSQL: jobs, watched sources, archive fingerprints.

One connection per thread, every write a single statement or one short transaction, so API
threads, the runner and the scheduler share the database safely (SQLite in WAL mode: readers
never wait for the writer). The records are the service's memory across restarts: nothing about a
job lives only in a process.

SQL is written once, portable (``?`` and ``:name`` placeholders, types both engines know);
:class:`_Postgres` rewrites the placeholders for psycopg.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from radforge.files import touch_private
from radforge.services.app.models import JobRecord, JobState, SourceRecord

SCHEMA_VERSION = 2
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
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    started_at DOUBLE PRECISION,
    finished_at DOUBLE PRECISION,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    cancel_signalled_at DOUBLE PRECISION,
    pid BIGINT,
    proc_start BIGINT,
    job_dir TEXT,
    ray_address TEXT,
    exit_code INTEGER,
    error TEXT,
    progress TEXT,
    result TEXT,
    ray_job_id TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, priority DESC, created_at);
CREATE INDEX IF NOT EXISTS jobs_by_created ON jobs (created_at DESC);
CREATE INDEX IF NOT EXISTS jobs_by_source ON jobs (source_id, archive, created_at);
CREATE TABLE IF NOT EXISTS sources (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    uri TEXT NOT NULL,
    dataset_uri TEXT NOT NULL,
    interval_seconds DOUBLE PRECISION,
    cron TEXT,
    priority INTEGER NOT NULL,
    enabled INTEGER NOT NULL,
    ready_marker TEXT,
    rescan_ingested INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    config TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    next_poll_at DOUBLE PRECISION NOT NULL,
    last_poll_at DOUBLE PRECISION,
    last_lag_seconds DOUBLE PRECISION,
    last_error TEXT
);
CREATE TABLE IF NOT EXISTS archive_fingerprints (
    source_id TEXT NOT NULL,
    name TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (source_id, name)
)
"""
# Version n -> n + 1 (databases written by earlier builds are upgraded in place at open).
MIGRATIONS = {1: ["ALTER TABLE jobs ADD COLUMN ray_job_id TEXT"]}
_JSON_COLUMNS = frozenset({"spec", "locks", "progress", "result", "config"})
_BOOL_COLUMNS = frozenset({"cancel_requested", "enabled", "rescan_ingested"})
ACTIVE_STATES = (JobState.QUEUED.value, JobState.RUNNING.value)


class StoreError(RuntimeError):
    """The database cannot be opened or has a schema this build does not know."""


def _rows(cur: Any) -> list[dict[str, Any]]:
    names = [d[0] for d in cur.description]
    out = []
    for row in cur.fetchall():
        record: dict[str, Any] = {}
        for key, value in zip(names, row, strict=True):
            if key in _JSON_COLUMNS and value is not None:
                value = json.loads(value)
            elif key in _BOOL_COLUMNS:
                value = bool(value)
            record[key] = value
        out.append(record)
    return out


def _encode(values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in values.items():
        if k in _JSON_COLUMNS and v is not None:
            v = json.dumps(v, sort_keys=True)
        elif isinstance(v, bool):
            v = int(v)  # INTEGER columns on both engines (PostgreSQL refuses a boolean there)
        out[k] = v
    return out


class _Backend(Protocol):
    """What differs between the engines: connecting, placeholders, the schema version, transactions."""

    where: str  # for messages (never holds a password: the settings refuse one in the URL)

    def connect(self) -> Any: ...

    def sql(self, text: str) -> str: ...

    def schema_version(self, conn: Any) -> int: ...

    def set_schema_version(self, conn: Any, version: int) -> None: ...

    def transaction(self, conn: Any) -> Any: ...


class _Sqlite:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = str(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # 0600 before SQLite opens it (its -wal and -shm files take the database's mode)
        touch_private(path)

    def connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: cannot open the database ({e})") from None
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    def sql(self, text: str) -> str:
        return text

    def schema_version(self, conn: sqlite3.Connection) -> int:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])

    def set_schema_version(self, conn: sqlite3.Connection, version: int) -> None:
        conn.execute(f"PRAGMA user_version = {int(version)}")

    @contextmanager
    def transaction(self, conn: sqlite3.Connection) -> Iterator[None]:
        conn.execute("BEGIN IMMEDIATE")  # take the write lock now: no deadlock upgrading a read lock
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


@lru_cache(maxsize=256)
def _pg_sql(text: str) -> str:
    """``?`` -> ``%s`` and ``:name`` -> ``%(name)s`` (psycopg's placeholders)."""
    text = text.replace("%", "%%").replace("?", "%s")
    return re.sub(r"(?<![:\w]):([A-Za-z_][A-Za-z0-9_]*)", r"%(\1)s", text)


class _Postgres:
    def __init__(self, url: str) -> None:
        self.url = url
        host = url.partition("://")[2].rpartition("@")[2]
        self.where = f"postgresql://{host}"

    def connect(self) -> Any:
        import psycopg

        try:
            return psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        except psycopg.Error as e:
            raise StoreError(f"{self.where}: cannot open the database ({type(e).__name__})") from None

    def sql(self, text: str) -> str:
        return _pg_sql(text)

    def schema_version(self, conn: Any) -> int:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0] or 0)

    def set_schema_version(self, conn: Any, version: int) -> None:
        with conn.transaction():
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (int(version),))

    def transaction(self, conn: Any) -> Any:
        return conn.transaction()


def _backend(database: Path | str) -> _Backend:
    text = str(database)
    if text.startswith(("postgresql://", "postgres://")):
        return _Postgres(text)
    return _Sqlite(Path(text.removeprefix("sqlite:///")))


class Store:
    """Jobs, sources and archive fingerprints in one database (a SQLite file or a PostgreSQL URL)."""

    def __init__(self, database: Path | str) -> None:
        self._db = _backend(database)
        self.where = self._db.where
        self._local = threading.local()
        self._all: list[Any] = []
        self._lock = threading.Lock()
        c = self._conn()
        version = self._db.schema_version(c)
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.where}: database schema {version} is newer than this build ({SCHEMA_VERSION})"
            )
        if version == 0:
            for statement in SCHEMA.split(";"):
                c.execute(statement)
        else:
            for v in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[v]:
                    c.execute(statement)
        self._db.set_schema_version(c, SCHEMA_VERSION)

    # ---- connections --------------------------------------------------------------------------
    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._db.connect()
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _x(self, sql: str, args: Sequence[Any] | dict[str, Any] = (), *, conn: Any = None) -> Any:
        """Execute one statement; returns the cursor."""
        return (conn or self._conn()).execute(self._db.sql(sql), args)

    def _all_rows(self, sql: str, args: Sequence[Any] | dict[str, Any] = ()) -> list[dict[str, Any]]:
        return _rows(self._x(sql, args))

    def _scalar(self, sql: str, args: Sequence[Any] = ()) -> Any:
        return self._x(sql, args).fetchone()[0]

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        c = self._conn()
        with self._db.transaction(c):
            yield c

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()

    def ping(self) -> bool:
        return bool(self._scalar("SELECT 1") == 1)

    # ---- jobs ---------------------------------------------------------------------------------
    def insert_job(self, job: JobRecord) -> None:
        values = _encode(job.model_dump(mode="json"))
        values["state"] = job.state.value
        cols = ", ".join(values)
        marks = ", ".join(f":{k}" for k in values)
        self._x(f"INSERT INTO jobs ({cols}) VALUES ({marks})", values)

    def insert_jobs(self, jobs: Sequence[JobRecord]) -> None:
        """Insert many records in one transaction (benchmarks, imports)."""
        if not jobs:
            return
        rows = [_encode(j.model_dump(mode="json")) for j in jobs]
        for row, job in zip(rows, jobs, strict=True):
            row["state"] = job.state.value
        cols = ", ".join(rows[0])
        marks = ", ".join(f":{k}" for k in rows[0])
        with self._tx() as c:
            c.cursor().executemany(self._db.sql(f"INSERT INTO jobs ({cols}) VALUES ({marks})"), rows)

    def get_job(self, job_id: str) -> JobRecord | None:
        rows = self._all_rows("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return JobRecord.model_validate(rows[0]) if rows else None

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
        total = self._scalar(f"SELECT COUNT(*) FROM jobs {clause}", args)
        rows = self._all_rows(
            f"SELECT * FROM jobs {clause} ORDER BY created_at DESC, id LIMIT ? OFFSET ?",
            [*args, limit, offset],
        )
        return [JobRecord.model_validate(r) for r in rows], int(total)

    def jobs_in_states(self, *states: JobState) -> list[JobRecord]:
        marks = ", ".join("?" * len(states))
        rows = self._all_rows(
            f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY priority DESC, created_at",
            [s.value for s in states],
        )
        return [JobRecord.model_validate(r) for r in rows]

    def active_locks(self) -> set[str]:
        """Locks (archives, datasets) of every queued or running job."""
        rows = self._all_rows("SELECT locks FROM jobs WHERE state IN (?, ?)", ACTIVE_STATES)
        return {lock for r in rows for lock in r["locks"]}

    def claim_job(self, job_id: str, *, now: float) -> bool:
        """Queued -> running; False if the job is no longer queued (cancelled meanwhile)."""
        cur = self._x(
            "UPDATE jobs SET state = ?, started_at = ?, updated_at = ? WHERE id = ? AND state = ?",
            (JobState.RUNNING.value, now, now, job_id, JobState.QUEUED.value),
        )
        return cur.rowcount == 1

    def set_process(
        self,
        job_id: str,
        *,
        pid: int | None,
        proc_start: int | None,
        job_dir: str,
        ray_address: str,
        now: float,
        ray_job_id: str | None = None,
    ) -> None:
        """Where a started job runs: its process (local driver) or its Ray submission id, and folder."""
        self._x(
            "UPDATE jobs SET pid = ?, proc_start = ?, job_dir = ?, ray_address = ?, ray_job_id = ?, "
            "updated_at = ? WHERE id = ?",
            (pid, proc_start, job_dir, ray_address, ray_job_id, now, job_id),
        )

    def update_progress(self, job_id: str, progress: dict[str, Any], *, now: float) -> None:
        self._x(
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
        cur = self._x(
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
            cur = self._x(
                "UPDATE jobs SET state = ?, finished_at = ?, updated_at = ?, cancel_requested = 1 "
                "WHERE id = ? AND state = ?",
                (JobState.CANCELLED.value, now, now, job_id, JobState.QUEUED.value),
                conn=c,
            )
            dequeued = cur.rowcount == 1
            self._x(
                "UPDATE jobs SET cancel_requested = 1, updated_at = ? WHERE id = ? AND state = ?",
                (now, job_id, JobState.RUNNING.value),
                conn=c,
            )
        return self.get_job(job_id), dequeued

    def mark_cancel_signalled(self, job_id: str, *, now: float) -> None:
        self._x("UPDATE jobs SET cancel_signalled_at = ?, updated_at = ? WHERE id = ?", (now, now, job_id))

    def count_by_kind_state(self) -> dict[tuple[str, str], int]:
        rows = self._x("SELECT kind, state, COUNT(*) FROM jobs GROUP BY kind, state").fetchall()
        return {(r[0], r[1]): int(r[2]) for r in rows}

    def archive_history(self, source_id: str) -> dict[str, list[str]]:
        """Archive name -> states of the source's jobs for it, oldest first."""
        rows = self._x(
            "SELECT archive, state FROM jobs WHERE source_id = ? AND archive IS NOT NULL ORDER BY created_at",
            (source_id,),
        ).fetchall()
        history: dict[str, list[str]] = {}
        for archive, state in rows:
            history.setdefault(archive, []).append(state)
        return history

    # ---- sources ------------------------------------------------------------------------------
    def insert_source(self, source: SourceRecord) -> None:
        values = _encode(source.model_dump(mode="json"))
        cols = ", ".join(values)
        marks = ", ".join(f":{k}" for k in values)
        self._x(f"INSERT INTO sources ({cols}) VALUES ({marks})", values)

    def get_source(self, source_id: str) -> SourceRecord | None:
        rows = self._all_rows("SELECT * FROM sources WHERE id = ?", (source_id,))
        return SourceRecord.model_validate(rows[0]) if rows else None

    def source_name_taken(self, name: str) -> bool:
        return self._x("SELECT 1 FROM sources WHERE name = ?", (name,)).fetchone() is not None

    def list_sources(self) -> list[SourceRecord]:
        return [SourceRecord.model_validate(r) for r in self._all_rows("SELECT * FROM sources ORDER BY name")]

    def due_sources(self, *, now: float) -> list[SourceRecord]:
        rows = self._all_rows(
            "SELECT * FROM sources WHERE enabled = 1 AND next_poll_at <= ? ORDER BY next_poll_at", (now,)
        )
        return [SourceRecord.model_validate(r) for r in rows]

    def update_source(self, source_id: str, values: dict[str, Any]) -> None:
        if not values:
            return
        encoded = _encode(values)
        sets = ", ".join(f"{k} = :{k}" for k in encoded)
        self._x(f"UPDATE sources SET {sets} WHERE id = :_id", {**encoded, "_id": source_id})

    def delete_source(self, source_id: str) -> bool:
        with self._tx() as c:
            self._x("DELETE FROM archive_fingerprints WHERE source_id = ?", (source_id,), conn=c)
            cur = self._x("DELETE FROM sources WHERE id = ?", (source_id,), conn=c)
        return cur.rowcount == 1

    def count_sources(self) -> int:
        return int(self._scalar("SELECT COUNT(*) FROM sources"))

    def fingerprints(self, source_id: str) -> dict[str, str]:
        rows = self._x(
            "SELECT name, fingerprint FROM archive_fingerprints WHERE source_id = ?", (source_id,)
        ).fetchall()
        return {r[0]: r[1] for r in rows}

    def set_fingerprint(self, source_id: str, name: str, fingerprint: str, *, now: float) -> None:
        self._x(
            "INSERT INTO archive_fingerprints (source_id, name, fingerprint, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (source_id, name) DO UPDATE SET fingerprint = excluded.fingerprint, "
            "updated_at = excluded.updated_at",
            (source_id, name, fingerprint, now),
        )
