"""``radforge dataset list``: the datasets under a prefix, with totals from their commit logs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from radforge.cli import main
from radforge.sharder.datasink import commit_part
from radforge.sharder.listing import list_datasets
from radforge.sharder.marker import mark_dataset
from radforge.storage import resolve
from tests.sharder.test_commit_log import SLICES, _write


def _dataset(root: Path, parts: dict[str, list[str]]) -> None:
    """A marked dataset with one committed part per archive (real shards, no Ray)."""
    loc = resolve(str(root))
    root.mkdir(parents=True)
    mark_dataset(loc)
    for n, (archive, series) in enumerate(parts.items(), start=1):
        pid = f"p-{n:016x}"
        ret = _write(loc, pid, series)
        commit_part(loc, part_id=pid, part_info={"archive_id": archive}, task_returns=[ret])


def test_lists_the_datasets_below_a_prefix_and_nothing_else(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _dataset(tmp_path / "ct", {"hospital-a": ["s1", "s2"], "hospital-b": ["s3"]})
    _dataset(tmp_path / "mr", {"hospital-a": ["s9"]})
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not a dataset")
    (tmp_path / "loose.json").write_text("{}")

    found = list_datasets(resolve(str(tmp_path)))
    assert [f.uri.rsplit("/", 1)[-1] for f in found] == ["ct", "mr"]
    ct, mr = found
    assert (ct.parts, ct.archives, ct.samples) == (2, 2, 3 * SLICES)
    assert (mr.parts, mr.archives, mr.samples) == (1, 1, SLICES)
    assert ct.shards >= 2 and ct.bytes > 0

    assert main(["dataset", "list", str(tmp_path), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows == [f.to_dict() for f in found]
    assert main(["dataset", "list", str(tmp_path / "ct")]) == 0  # a dataset itself
    assert "parts 2, archives 2" in capsys.readouterr().out
    assert main(["dataset", "list", str(tmp_path / "notes")]) == 0
    assert "no radforge dataset" in capsys.readouterr().out
