"""Control-plane latency: job status and /metrics under many concurrent clients.

Seeds a fresh SQLite database with ``--records`` job records (ingest jobs with progress and
result), starts ``radforge serve`` on 127.0.0.1 in its own process, and runs ``--clients``
concurrent HTTP clients for ``--seconds`` (each alternates ``GET /api/v1/jobs/{random id}`` and
``GET /metrics``; ``--pause`` seconds on average between a client's requests, jittered, 0 = back
to back, i.e. a saturated server whose latency is its queue). Reports
p50/p99 latency per route and overall, requests/s and errors. Ends with one JSON line.

    .venv/bin/python -m bench.control_plane [--records 1000] [--clients 200] [--seconds 30] [--pause 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

TOKEN = "bench-token-0123456789abcdef"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def seed(db: Path, n: int) -> list[str]:
    from radforge.services.app.db import Store
    from radforge.services.app.models import JobRecord, JobState

    rng = random.Random(0)
    states = [JobState.SUCCEEDED] * 8 + [JobState.FAILED, JobState.CANCELLED]
    now = time.time()
    records = []
    for i in range(n):
        t = now - (n - i) * 60
        state = rng.choice(states)
        samples = rng.randint(1_000, 200_000)
        records.append(
            JobRecord(
                id=f"{i:032x}",
                kind="ingest",
                state=state,
                origin=rng.choice(["api", "scheduler"]),
                archive=f"hospital-{i % 7}-2026-{i % 12 + 1:02d}",
                spec={
                    "kind": "ingest",
                    "source_uri": f"s3://hospital-{i % 7}/incoming/2026-{i % 12 + 1:02d}",
                    "dataset_uri": "s3://radforge-datasets/ct",
                },
                locks=[],
                created_at=t,
                updated_at=t + 600,
                started_at=t + 1,
                finished_at=t + 600,
                exit_code=0 if state == JobState.SUCCEEDED else 1,
                progress={
                    "phase": "done",
                    "samples_written": samples,
                    "bytes_written": samples * 300_000,
                    "series_done": samples // 200,
                    "series_total": samples // 200,
                    "shards_written": 40,
                },
                result={
                    "samples_written": samples,
                    "bytes_written": samples * 300_000,
                    "series": samples // 200,
                    "by_status": {"ingested": samples // 200},
                    "by_reason": {},
                    "committed": True,
                },
            )
        )
    store = Store(db)
    store.insert_jobs(records)
    store.close()
    return [r.id for r in records]


class _Conn:
    """One keep-alive HTTP/1.1 connection (a raw asyncio client: the load generator must cost less
    than the server it measures; httpx's pool collapses at 200 connections here)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await self.reader.readexactly(length)
        return status


async def _client(
    port: int,
    ids: list[str],
    deadline: float,
    pause: float,
    out: dict[str, list[float]],
    errors: list[str],
    rng: random.Random,
) -> None:
    conn = _Conn("127.0.0.1", port)
    turn = rng.randrange(2)
    if pause:  # clients start out of step, as real pollers do (no synchronized bursts)
        await asyncio.sleep(rng.uniform(0, pause))
    while time.perf_counter() < deadline:
        route = ("status", "metrics")[turn % 2]
        turn += 1
        path = f"/api/v1/jobs/{rng.choice(ids)}" if route == "status" else "/metrics"
        t0 = time.perf_counter()
        try:
            ok = await conn.get(path) == 200
        except (OSError, asyncio.IncompleteReadError, ValueError) as e:
            ok = False
            errors.append(type(e).__name__)
            conn = _Conn("127.0.0.1", port)
        dt = time.perf_counter() - t0
        if ok:
            out[route].append(dt)
        else:
            errors.append("status")
        if pause:
            await asyncio.sleep(rng.uniform(0.5, 1.5) * pause)


async def load(port: int, ids: list[str], *, clients: int, seconds: float, pause: float) -> dict[str, Any]:
    out: dict[str, list[float]] = {"status": [], "metrics": []}
    errors: list[str] = []
    deadline = time.perf_counter() + seconds
    t0 = time.perf_counter()
    await asyncio.gather(
        *(_client(port, ids, deadline, pause, out, errors, random.Random(i)) for i in range(clients))
    )
    return {"latencies": out, "errors": len(errors), "wall": time.perf_counter() - t0}


def _pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values) * 1000, q)), 2) if values else float("nan")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=1000)
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--pause", type=float, default=0.0, help="seconds between one client's requests")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="radforge-bench-cp-") as tmp:
        state = Path(tmp) / "state"
        ids = seed(state / "radforge.db", args.records)
        port = _free_port()
        env = {
            **os.environ,
            "RADFORGE_API_TOKEN": TOKEN,
            "RADFORGE_SALT": os.environ.get("RADFORGE_SALT", "bench-salt-0123"),
        }
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "radforge.cli",
                "serve",
                "--port",
                str(port),
                "--state-dir",
                str(state),
                "--ray-address",
                "127.0.0.1:9",
            ],  # no job starts: every seeded job has ended
            stdout=subprocess.DEVNULL,
            stderr=open(Path(tmp) / "serve.log", "wb"),  # noqa: SIM115
            env=env,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise SystemExit("radforge serve did not start") from None
                    time.sleep(0.1)
            res = asyncio.run(load(port, ids, clients=args.clients, seconds=args.seconds, pause=args.pause))
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
    lat = res["latencies"]
    every = lat["status"] + lat["metrics"]
    figures = {
        "bench": "control_plane",
        "records": args.records,
        "clients": args.clients,
        "seconds": args.seconds,
        "pause_s": args.pause,
        "requests": len(every),
        "requests_per_s": round(len(every) / res["wall"], 1),
        "p50_ms": _pct(every, 50),
        "p99_ms": _pct(every, 99),
        "status_p50_ms": _pct(lat["status"], 50),
        "status_p99_ms": _pct(lat["status"], 99),
        "metrics_p50_ms": _pct(lat["metrics"], 50),
        "metrics_p99_ms": _pct(lat["metrics"], 99),
        "errors": res["errors"],
        "cpus": os.cpu_count(),
    }
    print(json.dumps(figures, sort_keys=True))
    return 0 if res["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
