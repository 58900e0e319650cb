"""radforge.files: a file named by someone else is read only if regular, and never past its cap."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from radforge.files import FileRefused, make_private_dir, read_bounded, read_bounded_text, touch_private
from radforge.storage import resolve, write_bytes_atomic

LIMIT = 1024


def test_a_regular_file_up_to_the_limit_is_read(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"x" * LIMIT)
    assert read_bounded(path, limit=LIMIT) == b"x" * LIMIT
    assert read_bounded(f"file://{path}", limit=LIMIT) == b"x" * LIMIT


def test_one_byte_over_the_limit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"x" * (LIMIT + 1))
    with pytest.raises(FileRefused, match=f"larger than {LIMIT} bytes"):
        read_bounded(path, limit=LIMIT)


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "folder"])
def test_what_is_not_a_regular_file_is_refused(tmp_path: Path, kind: str) -> None:
    path = {"fifo": tmp_path / "pipe", "dev-zero": Path("/dev/zero"), "folder": tmp_path}[kind]
    if kind == "fifo":
        os.mkfifo(path)  # nobody writes to it: a blocking open would never return
    with pytest.raises(FileRefused, match="not a regular file"):
        read_bounded(path, limit=LIMIT)


def test_a_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_bounded(tmp_path / "missing.yaml", limit=LIMIT)


def test_text_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(FileRefused, match="UTF-8"):
        read_bounded_text(path, limit=LIMIT)


def test_an_object_is_read_up_to_the_limit(s3_bucket: str) -> None:
    small, big = resolve(f"s3://{s3_bucket}/small.yaml"), resolve(f"s3://{s3_bucket}/big.yaml")
    write_bytes_atomic(small, b"steps: 1\n")
    write_bytes_atomic(big, b"x" * (LIMIT + 1))
    assert read_bounded(small.uri, limit=LIMIT) == b"steps: 1\n"
    with pytest.raises(FileRefused, match="larger than"):
        read_bounded(big.uri, limit=LIMIT)


def test_private_folders_and_files(tmp_path: Path) -> None:
    folder = tmp_path / "state" / "jobs"
    make_private_dir(folder)
    (tmp_path / "open").mkdir(mode=0o755)
    make_private_dir(tmp_path / "open")  # an existing folder is tightened
    touch_private(folder / "radforge.db")
    (folder / "log.txt").write_text("x")
    os.chmod(folder / "log.txt", 0o644)
    touch_private(folder / "log.txt")  # an existing file is tightened, not emptied
    for path, mode in [(folder, 0o700), (tmp_path / "open", 0o700), (folder / "radforge.db", 0o600)]:
        assert stat.S_IMODE(path.stat().st_mode) == mode, path
    assert stat.S_IMODE((folder / "log.txt").stat().st_mode) == 0o600
    assert (folder / "log.txt").read_text() == "x"
