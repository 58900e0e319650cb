"""Evaluation task folders are named by a token holder (eval jobs): their files are read bounded.

A ``task.json`` or a suite file that is a named pipe, a device or a huge file must end in one
``TaskError`` at once, and a suite file that is not YAML must not have its lines quoted back.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from radforge.trainer.eval.tasks import TaskError, find_tasks, load_task

MARKER = "planted-secret-line-4b1d"


def _within(seconds: float, fn) -> BaseException | None:
    """Run ``fn`` in a thread; the exception it raised, or fail if it is still blocked after ``seconds``."""
    box: list[BaseException | None] = [None]

    def target() -> None:
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - the test inspects it
            box[0] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "the read blocked"
    return box[0]


def test_a_fifo_as_task_json_is_refused_at_once(tmp_path: Path) -> None:
    folder = tmp_path / "task"
    folder.mkdir()
    os.mkfifo(folder / "task.json")
    err = _within(10, lambda: load_task(folder))
    assert isinstance(err, TaskError)


def test_a_huge_task_json_is_refused_without_reading_it(tmp_path: Path) -> None:
    folder = tmp_path / "task"
    folder.mkdir()
    with open(folder / "task.json", "wb") as f:
        f.truncate(100 << 20)  # sparse: no disk used
    with pytest.raises(TaskError, match="task.json"):
        load_task(folder)


def test_a_suite_file_that_is_not_yaml_is_not_quoted(tmp_path: Path) -> None:
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"tasks: [a\n{MARKER}: {{: [\n")
    with pytest.raises(TaskError) as info:
        find_tasks(suite)
    assert MARKER not in str(info.value)
