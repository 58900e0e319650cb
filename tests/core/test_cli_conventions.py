"""The command line behaves like the tools users know (issue 16).

A progress bar for ingest with Ray's INFO lines hidden unless ``-v``; snake_case JSON keys;
quiet exit when the reader of stdout has gone (``radforge ... --json | head``). The ingest runs
for real, as a user's shell runs it: ``python -m radforge.cli`` in a process of its own (its own
local Ray), stderr not a terminal.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from radforge.cli import ENV_PACKAGES, main
from radforge.cli_progress import eval_status, ingest_status
from tests.services.support import TOKEN, LiveServer, make_settings
from tests.support import make_archive

# fixtures: a tiny built-in task suite and a random-init export (pytest finds them by name here)
from tests.trainer.eval.test_eval_suite import export, suite  # noqa: F401

# what Ray prints at INFO: "2026-12-04 17:41:11,983\tINFO streaming_executor.py:215 -- Starting execution"
RAY_INFO = re.compile(r"\bINFO \S+\.py:\d+ --")
SNAKE = re.compile(r"^[a-z][a-z0-9_]*$")


def radforge(*argv: str, env: dict[str, str] | None = None, stdout: Any = subprocess.PIPE) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "radforge.cli", *argv],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def test_ingest_status_words() -> None:
    before = ingest_status(series_done=0, series_total=None, slices=0, samples=0, decode_seconds=None)
    assert before == "listing the archive, reading headers, planning series"
    assert ingest_status(series_done=0, series_total=3, slices=0, samples=0, decode_seconds=0.5) == (
        "series 0/3  0 slices  0 samples"
    )
    assert ingest_status(series_done=2, series_total=3, slices=120, samples=360, decode_seconds=4.0) == (
        "series 2/3  120 slices  360 samples  30.0 slices/s"
    )
    words = ingest_status(
        series_done=2, series_total=3, slices=120, samples=360, decode_seconds=4.0, slices_total=400
    )
    assert words == "series 2/3  120/400 slices  360 samples  30.0 slices/s"
    # a mosaic is one planned slice until decoded: the total is never shown below what is done
    words = ingest_status(
        series_done=1, series_total=1, slices=48, samples=48, decode_seconds=None, slices_total=1
    )
    assert words == "series 1/1  48/48 slices  48 samples"
    assert eval_status("loading", 0, 0) == "loading"
    assert eval_status("probing", 3, 14) == "probing 3/14 evaluations"


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A small archive ingested by ``radforge ingest --json`` (no -v), then again with ``-v``."""
    root = tmp_path_factory.mktemp("cli-ingest")
    archive = make_archive(root / "arch", n_ct=2, n_mr=1)
    dataset = root / "dataset"
    wide = {"COLUMNS": "200"}  # the whole bar on one line, whatever the terminal the tests run in
    quiet = radforge("ingest", str(archive), str(dataset), "--json", env=wide)
    verbose = radforge("ingest", str(archive), str(dataset), "-v", env=wide)
    return {"dataset": dataset, "quiet": quiet, "verbose": verbose}


def test_ingest_shows_a_bar_and_hides_ray_info_lines(ingested: dict[str, Any]) -> None:
    quiet = ingested["quiet"]
    assert quiet.returncode == 0, quiet.stderr
    summary = json.loads(quiet.stdout)
    assert [line for line in quiet.stderr.splitlines() if RAY_INFO.search(line)] == []
    assert "Progress bars disabled" not in quiet.stderr  # Ray Data's bars are off: ours is shown
    # the bar's last state (stderr is not a terminal: rich prints it once, at the end)
    bar = [line for line in quiet.stderr.splitlines() if line.startswith("ingest ")]
    assert len(bar) == 1, quiet.stderr
    slices = summary["samples_written"] + summary["slices_dropped"]  # one window, one plane: a slice each
    assert f"series 3/3  {slices}/{slices} slices  {summary['samples_written']} samples" in bar[0]
    assert re.search(r" [\d.]+ slices/s", bar[0])

    verbose = ingested["verbose"]  # -v after the command, as users type it: Ray's INFO lines are back
    assert verbose.returncode == 0, verbose.stderr
    assert any(RAY_INFO.search(line) for line in verbose.stderr.splitlines()), verbose.stderr
    assert "nothing new to commit" in verbose.stdout


def test_a_refused_ingest_is_one_line_without_a_bar(tmp_path: Path) -> None:
    """Refused before anything runs (no Ray started): the error alone, no progress bar."""
    done = radforge("ingest", str(tmp_path / "missing"), str(tmp_path / "dataset"))
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.splitlines() == [f"radforge: source {tmp_path / 'missing'} does not exist"], (
        done.stderr
    )


def test_json_keys_are_snake_case(ingested: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    summary = json.loads(ingested["quiet"].stdout)  # by_status, by_reason, by_kind: keyed by data
    assert [k for k in [*summary, *summary["phase_seconds"]] if not SNAKE.match(k)] == []
    dataset = str(ingested["dataset"])
    for argv in (["dataset", "verify", dataset], ["dataset", "list", str(Path(dataset).parent)]):
        assert main([*argv, "--json"]) == 0
        for line in capsys.readouterr().out.splitlines():
            assert [k for k in json.loads(line) if not SNAKE.match(k)] == [], argv
    assert main(["env", "--json"]) == 0  # keys: package names, and fields in snake_case
    report = json.loads(capsys.readouterr().out)
    assert [k for k in report if k not in ENV_PACKAGES and not SNAKE.match(k)] == []
    assert "cuda_available" in report


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A control plane whose jobs never start (nothing listens at its Ray address): the API only."""
    settings = make_settings(tmp_path_factory.mktemp("pipe-state"), ray_address="127.0.0.1:9")
    with LiveServer(settings) as live:
        yield live


@pytest.mark.parametrize(
    "argv",
    [
        ["env", "--json"],
        ["jobs", "list", "--json"],
        ["jobs", "list"],
        ["sources", "list", "--json"],
        ["dataset", "stats", "DATASET", "--json"],
    ],
    ids=lambda argv: "-".join(argv),
)
def test_a_closed_pipe_ends_quietly(argv: list[str], server: LiveServer, ingested: dict[str, Any]) -> None:
    """``radforge ... | head`` where head has already gone: no traceback, no message, exit 1."""
    argv = [str(ingested["dataset"]) if a == "DATASET" else a for a in argv]
    read, write = os.pipe()
    os.close(read)  # nobody will ever read: the first write fails with EPIPE
    try:
        done = radforge(*argv, env={"RADFORGE_SERVER": server.url, "RADFORGE_API_TOKEN": TOKEN}, stdout=write)
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (1, "")


def test_eval_shows_its_progress(
    suite: list[Path],  # noqa: F811
    export: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``radforge eval`` draws a bar over its (backbone, task) evaluations on stderr; stdout: the result."""
    argv = ["eval", "--backbone", f"tiny={export}", "--random-init", "--tasks", str(suite[2])]
    argv += ["--out", str(tmp_path / "report"), "--probes", "knn", "--seeds", "1", "--max-shots", "1"]
    assert main([*argv, "--bootstrap", "10", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["report"] == str(tmp_path / "report" / "report.md")
    bar = [line for line in err.splitlines() if line.startswith("eval ")]
    assert len(bar) == 1 and "reporting 2/2 evaluations" in bar[0], err
