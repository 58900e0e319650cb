"""A real PostgreSQL server for the control-plane tests: initdb + postgres on 127.0.0.1, once per session.

PostgreSQL refuses to run as root; when the tests run as root (CI), the server runs as the
unprivileged ``nobody`` through ``runuser``, in a folder of its own under /tmp. The server binaries
come from PATH or Debian's /usr/lib/postgresql/<version>/bin (``make system-deps`` installs them).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.services.support import LiveServer, free_port, wait_until

PG_USER = "radforge"


def _pg_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None)
    assert found, f"PostgreSQL's {name} is required (make system-deps installs Debian's postgresql)"
    return found


def _as_server_user(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "nobody", "--", *argv] if os.geteuid() == 0 else argv


class Postgres:
    """One PostgreSQL server; :meth:`new_database` gives each test module a fresh database URL."""

    def __init__(self, port: int) -> None:
        self.port = port

    def url(self, database: str) -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        import psycopg

        name = f"rf_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """PostgreSQL on 127.0.0.1 (trust auth on loopback only, a temporary cluster), for the session."""
    root = Path(tempfile.mkdtemp(prefix="radforge-pg-"))
    data, port = root / "data", free_port()
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(root, nobody.pw_uid, nobody.pw_gid)
    subprocess.run(
        _as_server_user(
            [_pg_bin("initdb"), "-D", str(data), "-U", PG_USER, "--auth=trust", "-E", "UTF8", "--no-sync"]
        ),
        check=True,
        capture_output=True,
    )
    proc = subprocess.Popen(
        _as_server_user(
            [
                _pg_bin("postgres"),
                "-D",
                str(data),
                "-p",
                str(port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"unix_socket_directories={root}",
                "-c",
                "fsync=off",
            ]
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = Postgres(port)
    try:

        def ready() -> bool:
            import psycopg

            assert proc.poll() is None, f"postgres exited with status {proc.returncode}"
            try:
                with psycopg.connect(server.url("postgres"), connect_timeout=2):
                    return True
            except psycopg.OperationalError:
                return False

        wait_until(ready, timeout=60, what="PostgreSQL to accept connections")
        yield server
    finally:
        proc.terminate()  # runuser forwards SIGTERM: postgres's smart shutdown
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A fresh database of each backend: a SQLite file, or a new database on the session's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'radforge.db'}"
    return str(request.getfixturevalue("postgres").new_database())


@pytest.fixture(scope="module")
def api(server: LiveServer) -> Iterator[httpx.Client]:
    """An authorised client of the module's ``server``."""
    with server.client() as client:
        yield client
