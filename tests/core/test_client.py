"""``radforge jobs`` / ``radforge sources`` against a real control plane.

A real uvicorn server (tests/services/support.py) with a real SQLite database runs real ingest
jobs on the session's local Ray; the command line is driven in this process through
:func:`radforge.cli.main`, as a user would type it, with the token and server in the environment.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from radforge.cli import main
from radforge.client import ControlPlane, Token, find_token, new_lines, server_url
from tests.services.support import TOKEN, LiveServer, free_port, session_ray_server
from tests.support import make_archive

SNAKE = re.compile(r"^[a-z][a-z0-9_]*$")
# fields of a job whose values are maps keyed by data (statuses, kinds), not by field names
DATA_KEYED = {"by_status", "by_reason", "by_kind", "phase_seconds", "config"}


def snake_keys(value: Any, path: str = "") -> list[str]:
    """Keys (with their path) that are not snake_case, below maps keyed by data excepted."""
    bad: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            if not SNAKE.match(str(k)):
                bad.append(f"{path}{k}")
            if k not in DATA_KEYED:
                bad += snake_keys(v, f"{path}{k}.")
    elif isinstance(value, list):
        for item in value:
            bad += snake_keys(item, path)
    return bad


@pytest.fixture(scope="module")
def server(ray_local: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with session_ray_server(tmp_path_factory.mktemp("client-state"), max_running_jobs=2) as live:
        yield live


@pytest.fixture
def cli(server: LiveServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    """``cli(*argv)`` -> (exit status, stdout, stderr) of ``radforge ARGV`` against ``server``."""
    monkeypatch.setenv("RADFORGE_SERVER", server.url)
    monkeypatch.setenv("RADFORGE_API_TOKEN", TOKEN)
    monkeypatch.delenv("RADFORGE_API_TOKEN_FILE", raising=False)

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_an_ingest_job_submitted_followed_listed_and_shown(cli: Any, tmp_path: Path) -> None:
    archive = make_archive(tmp_path / "arch-client", n_ct=1, n_mr=0)
    code, out, err = cli("jobs", "submit", "ingest", str(archive), str(tmp_path / "dataset"), "--json")
    assert code == 0, err
    job = json.loads(out)
    assert job["kind"] == "ingest" and job["state"] in {"queued", "running"}
    assert job["spec"]["source_uri"] == str(archive)  # made absolute by the client
    assert snake_keys(job) == []

    # -f prints the log's last 3 lines, then each new one until the job ends, then its final state
    code, out, err = cli("jobs", "logs", "-f", "-n", "3", job["id"])
    assert code == 0, err
    assert err.strip().splitlines()[-1] == f"job {job['id']} succeeded"
    followed = out.splitlines()
    summaries = [line for line in followed if "summary" in line and '"samples_written"' in line]
    assert len(summaries) == 1, out
    _, whole, _ = cli("jobs", "logs", "-n", "1000", job["id"])
    assert followed == whole.splitlines()[-len(followed) :]  # one stretch of the log, nothing twice

    code, out, _ = cli("jobs", "show", job["id"], "--json")
    shown = json.loads(out)
    assert code == 0 and shown["state"] == "succeeded" and shown["result"]["samples_written"] > 0
    assert snake_keys(shown) == []
    code, out, _ = cli("jobs", "show", job["id"])
    lines = out.splitlines()
    assert code == 0 and "state: succeeded" in lines
    samples = shown["result"]["samples_written"]
    assert f"progress: series 1/1, {samples} samples" in lines
    assert f"result.samples_written: {samples}" in lines

    code, out, _ = cli("jobs", "list", "--json")
    page = json.loads(out)
    assert code == 0 and job["id"] in [j["id"] for j in page["items"]] and snake_keys(page) == []
    code, out, _ = cli("jobs", "list", "--kind", "ingest", "--state", "succeeded")
    header, *rows = out.splitlines()
    assert header.split() == ["ID", "KIND", "STATE", "PROGRESS", "CREATED", "DURATION"]
    assert any(row.split()[:3] == [job["id"], "ingest", "succeeded"] for row in rows), out

    code, out, _ = cli("jobs", "logs", job["id"], "-n", "2")
    assert code == 0 and len(out.splitlines()) == 2

    # the dataset's compaction as a job of its own
    code, out, err = cli(
        "jobs", "submit", "compact", str(tmp_path / "dataset"), "--target-shard-mb", "1", "--json"
    )
    assert code == 0, err
    compact = json.loads(out)
    assert compact["kind"] == "compact" and compact["spec"]["target_shard_mb"] == 1.0
    code, _, err = cli("jobs", "logs", "-f", compact["id"])
    assert code == 0 and err.strip().splitlines()[-1] == f"job {compact['id']} succeeded", err


def test_a_queued_job_is_cancelled(cli: Any, server: LiveServer, tmp_path: Path) -> None:
    """A job recorded as running on the archive (a live process) keeps the new job queued; cancel it."""
    from radforge.services.app.models import JobRecord, JobState
    from radforge.services.jobs.process_identity import process_start_ticks

    archive = str(make_archive(tmp_path / "arch-held", n_ct=1, n_mr=0))
    holder = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    now = time.time()
    store = server.app.state.service.store  # type: ignore[attr-defined]
    store.insert_job(
        JobRecord(
            id=f"holder-{holder.pid}",
            kind="ingest",
            state=JobState.RUNNING,
            spec={"kind": "ingest", "source_uri": archive, "dataset_uri": str(tmp_path / "other")},
            locks=[f"archive:{archive}"],
            created_at=now,
            updated_at=now,
            started_at=now,
            pid=holder.pid,
            proc_start=process_start_ticks(holder.pid),
            job_dir=str(tmp_path),
        )
    )
    try:
        code, out, err = cli("jobs", "submit", "ingest", archive, str(tmp_path / "dataset"))
        assert code == 0, err
        job_id = out.split()[3]
        assert out.strip() == f"submitted ingest job {job_id} (queued)"
        server.app.state.service.runner.tick()  # type: ignore[attr-defined]  # a dispatch pass: still queued
        code, out, err = cli("jobs", "cancel", job_id)
        assert (code, out.strip()) == (0, f"job {job_id} cancelled"), err
        code, out, err = cli("jobs", "cancel", job_id)
        assert code == 1 and out == ""
        assert err.strip() == f"radforge: job {job_id} has already cancelled (HTTP 409)"
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=20)


def test_errors_are_one_actionable_line(
    cli: Any, server: LiveServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def one_line(argv: list[str], *expected: str) -> str:
        code, out, err = cli(*argv)
        assert code == 1 and out == "" and len(err.strip().splitlines()) == 1, (code, out, err)
        assert all(e in err for e in expected), err
        return err

    one_line(["jobs", "show", "no-such-job"], "radforge: no job no-such-job on the control plane (404)")
    one_line(
        ["jobs", "submit", "ingest", str(tmp_path / "a"), str(tmp_path / "d"), "--priority", "5000"],
        "ingest job refused (422): priority: ",
        "1000",
    )
    one_line(
        ["jobs", "submit", "eval", "--backbone", str(tmp_path), "--tasks", "builtin", "--out", "s3://b/x"],
        "eval job refused (422): output_uri: ",
    )
    one_line(["sources", "show", "nowhere"], "no source with the id or name 'nowhere'")

    monkeypatch.setenv("RADFORGE_API_TOKEN", "wrong-token-0123456789")
    one_line(["jobs", "list"], "the API token from $RADFORGE_API_TOKEN was refused (403)")
    monkeypatch.delenv("RADFORGE_API_TOKEN")
    monkeypatch.setenv("RADFORGE_STATE_DIR", str(tmp_path))  # no token file there
    one_line(["jobs", "list"], "wants an API token (401)", "$RADFORGE_API_TOKEN")
    (tmp_path / "api-token").write_text(TOKEN + "\n")  # as radforge serve generates it
    assert cli("jobs", "list")[0] == 0
    monkeypatch.setenv("RADFORGE_API_TOKEN_FILE", str(tmp_path / "missing"))
    one_line(["jobs", "list"], f"cannot read the API token from {tmp_path / 'missing'}")
    monkeypatch.delenv("RADFORGE_API_TOKEN_FILE")

    one_line(
        ["jobs", "list", "--server", f"http://127.0.0.1:{free_port()}"],
        "cannot reach the control plane at http://127.0.0.1:",
        "radforge serve",
    )


def test_sources_added_shown_updated_polled_and_removed(cli: Any, tmp_path: Path) -> None:
    prefix, dataset = tmp_path / "incoming", tmp_path / "watched-dataset"
    prefix.mkdir()
    code, out, err = cli(
        "sources",
        "add",
        "hospital-b",
        str(prefix),
        str(dataset),
        "--interval",
        "3600",
        "--set",
        "planes=[axial]",
    )
    assert code == 0, err
    assert out.startswith(f"watching {prefix} as source hospital-b (")
    code, out, _ = cli("sources", "list", "--json")
    (source,) = [s for s in json.loads(out) if s["name"] == "hospital-b"]
    assert source["config"] == {"planes": ["axial"]} and source["interval_seconds"] == 3600
    assert snake_keys(source) == []
    code, out, _ = cli("sources", "list")
    assert out.splitlines()[0].split()[:4] == ["NAME", "ID", "URI", "DATASET"]
    assert any(line.split()[:2] == ["hospital-b", source["id"]] for line in out.splitlines())

    code, out, _ = cli("sources", "show", "hospital-b")  # by name, or by id
    assert code == 0 and f"id: {source['id']}" in out.splitlines() and 'config.planes: ["axial"]' in out
    code, out, _ = cli("sources", "update", source["id"], "--disable", "--cron", "0 3 * * *", "--json")
    updated = json.loads(out)
    assert (
        updated["enabled"] is False and updated["cron"] == "0 3 * * *" and updated["interval_seconds"] is None
    )
    code, out, _ = cli("sources", "poll", "hospital-b")
    assert (code, out.strip()) == (0, "no archives found")

    code, out, _ = cli("sources", "remove", "hospital-b")
    assert code == 0 and out.startswith("stopped watching source hospital-b")
    code, _, err = cli("sources", "show", source["id"])
    assert code == 1 and "no source with the id or name" in err


def test_the_token_and_server_come_from_the_environment(tmp_path: Path) -> None:
    assert find_token({"RADFORGE_API_TOKEN": " t0k3n-from-env "}) == Token(
        "t0k3n-from-env", "$RADFORGE_API_TOKEN"
    )
    (tmp_path / "secret").write_text("from-file\n")
    assert find_token({"RADFORGE_API_TOKEN_FILE": str(tmp_path / "secret")}) == Token(
        "from-file", str(tmp_path / "secret")
    )
    assert find_token({"RADFORGE_STATE_DIR": str(tmp_path)}) is None
    (tmp_path / "api-token").write_text("generated\n")
    assert find_token({"RADFORGE_STATE_DIR": str(tmp_path)}) == Token(
        "generated", str(tmp_path / "api-token")
    )
    assert server_url(None, {}) == "http://127.0.0.1:8000"
    assert server_url(None, {"RADFORGE_SERVER": "https://cp.example:8443/"}) == "https://cp.example:8443"
    assert server_url("http://flag:1", {"RADFORGE_SERVER": "http://env:2"}) == "http://flag:1"
    with pytest.raises(Exception, match="not an http"):
        server_url("file:///etc/passwd", {})
    assert ControlPlane("http://x/", None).server == "http://x"


@pytest.mark.parametrize(
    ("seen", "latest", "new"),
    [
        ([], ["a", "b"], ["a", "b"]),  # first read
        (["a", "b"], ["a", "b"], []),  # nothing new
        (["a", "b"], ["a", "b", "c"], ["c"]),  # grew, still under the window
        (["a", "b", "c"], ["b", "c", "d", "e"], ["d", "e"]),  # the window slid
        (["x", "x"], ["x", "x", "x"], ["x"]),  # repeated lines: the longest overlap
        (["a", "b"], ["c", "d"], ["c", "d"]),  # grew by more than a window: all new
    ],
)
def test_new_log_lines(seen: list[str], latest: list[str], new: list[str]) -> None:
    assert new_lines(seen, latest) == new
