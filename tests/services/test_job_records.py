"""Job records read back bounded: what a job folder holds cannot hang or flood the service."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from radforge.services.jobs.progress import MAX_RECORD_BYTES, PROGRESS, job_file, read_json, write_json_atomic


def test_records_round_trip_private(tmp_path: Path) -> None:
    path = job_file(tmp_path, PROGRESS)
    write_json_atomic(path, {"series_done": 3})
    assert read_json(path) == {"series_done": 3}
    assert read_json(f"file://{path}") == {"series_done": 3}
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_a_pipe_a_device_or_a_huge_file_reads_as_no_record(tmp_path: Path) -> None:
    pipe, huge = tmp_path / "progress.json", tmp_path / "result.json"
    os.mkfifo(pipe)  # nobody writes: a blocking read would hang the runner's thread
    with open(huge, "wb") as f:
        f.truncate(MAX_RECORD_BYTES + 1)  # sparse
    assert read_json(pipe) is None
    assert read_json(huge) is None
    assert read_json("/dev/zero") is None
    assert read_json(tmp_path / "missing.json") is None
