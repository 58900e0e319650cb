"""The CLI under hostile or broken conditions: every failure is one line on stderr and an exit status,
never a traceback (``--debug`` shows one). The real ``radforge`` command runs as a subprocess.

Cases: S3 without credentials, an unknown URI scheme, a config that is ``/dev/zero``, a named pipe,
a sparse 100 MB file or malformed YAML, a malformed ``--set`` override, and a reader that stops
early (``radforge ... | head -1``: a broken pipe).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

RADFORGE = [sys.executable, "-m", "radforge"]
TIMEOUT_S = 60
ADDRESS_SPACE = 1 << 30  # a config read without bound fails here instead of exhausting the machine


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def _run(
    *argv: str, stdout: int | None = None, limit_memory: bool = False
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RADFORGE, *argv],
        env={**os.environ, "RADFORGE_SALT": "cli-salt-0123456789"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if stdout is None else stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=TIMEOUT_S,
        preexec_fn=_limit_memory if limit_memory else None,
    )


def _one_line(result: subprocess.CompletedProcess[str], *, expect: str) -> str:
    err = result.stderr.strip()
    assert result.returncode not in (0, None), result
    assert result.returncode > 0, f"killed by signal {-result.returncode}: {err[-500:]}"
    assert "Traceback" not in err, err[-2000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err[-2000:]
    assert lines[0].startswith("radforge: ") and expect in lines[0], lines[0]
    return lines[0]


NO_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "",
    "AWS_SECRET_ACCESS_KEY": "",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    "AWS_CONFIG_FILE": "/nonexistent",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9",
}


def test_s3_without_credentials_is_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | NO_CREDENTIALS
    result = subprocess.run(
        [*RADFORGE, "ingest", "s3://hospital-a/incoming", str(tmp_path / "ds")],
        env={**env, "RADFORGE_SALT": "cli-salt-0123456789"},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    _one_line(result, expect="credentials")


def test_an_unknown_uri_scheme_is_one_line(tmp_path: Path) -> None:
    _one_line(_run("ingest", "nosuch://bucket/archive", str(tmp_path / "ds")), expect="nosuch")
    _one_line(_run("dataset", "verify", "nosuch://bucket/ds"), expect="nosuch")


@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "sparse", "not-yaml"])
def test_a_hostile_config_file_is_one_line(tmp_path: Path, kind: str) -> None:
    config = tmp_path / "ingest.yaml"
    if kind == "dev-zero":
        config = Path("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(config)
    elif kind == "sparse":
        with open(config, "wb") as f:
            f.truncate(100 << 20)
    else:
        config.write_text("planes: [axial\n")
    argv = ["ingest", str(tmp_path / "archive"), str(tmp_path / "ds"), "--config", str(config)]
    line = _one_line(_run(*argv, limit_memory=True), expect=str(config))
    assert "invalid configuration" in line


@pytest.mark.parametrize("override", ["planes=[axial", "planes=!!python/object/apply:os.system ['true']"])
def test_a_malformed_override_is_one_line(tmp_path: Path, override: str) -> None:
    line = _one_line(
        _run("ingest", str(tmp_path / "archive"), str(tmp_path / "ds"), "--set", override), expect="planes"
    )
    assert "invalid configuration" in line


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = _run("--debug", "ingest", "nosuch://bucket/archive", str(tmp_path / "ds"))
    assert result.returncode > 0 and "Traceback" in result.stderr


def test_a_reader_that_stops_early_is_not_an_error(tmp_path: Path) -> None:
    """``radforge dataset verify DS | head -1``: no traceback; the status is the command's own."""
    ds = tmp_path / "ds"
    ds.mkdir()
    shards = [{"raw_data": {"basename": f"shard.{i:05d}.mds"}, "samples": 1} for i in range(20_000)]
    (ds / "index.json").write_text(json.dumps({"version": 2, "shards": shards}))
    read, write = os.pipe()
    os.close(read)  # the reader has gone before the first line
    try:
        result = _run("dataset", "verify", str(ds), stdout=write)
    finally:
        os.close(write)
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr[-2000:]
    assert result.returncode == 1  # the dataset's problems, as without the pipe
