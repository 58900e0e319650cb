"""The operator report stays out of the dataset and lists exactly the series not ingested."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from radforge.ingest.config import load_config
from radforge.ingest.errors import SourceError
from radforge.ingest.operator_report import check_report_location, write_operator_report
from radforge.ingest.pipeline import run_ingest
from radforge.storage import resolve


@pytest.mark.parametrize("inside", ["ds", "ds/report.json", "ds/manifests/report.json"])
def test_a_report_inside_the_dataset_is_refused_before_the_run(tmp_path: Path, inside: str) -> None:
    archive = tmp_path / "archive"
    archive.mkdir()
    with pytest.raises(SourceError, match="inside the dataset"):
        run_ingest(str(archive), str(tmp_path / "ds"), load_config(), operator_report=str(tmp_path / inside))
    assert not (tmp_path / "ds").exists()  # nothing written anywhere


def test_a_report_beside_the_dataset_is_fine(tmp_path: Path) -> None:
    # a sibling whose name starts like the dataset's is not inside it
    assert check_report_location(str(tmp_path / "ds-report.json"), resolve(str(tmp_path / "ds")))


def test_only_series_not_ingested_are_listed_with_their_objects(tmp_path: Path) -> None:
    records = [
        {"series_key": "a", "status": "ingested", "reason": None, "detail": None},
        {"series_key": "b", "status": "quarantined", "reason": "decode_failed", "detail": "truncated"},
        {"series_key": "c", "status": "skipped", "reason": "localizer", "detail": "scout"},
    ]
    objects = {"a": ["p/1.dcm"], "b": ["p/3.dcm", "p/2.dcm"], "c": ["p/4.dcm"]}
    target = tmp_path / "zone" / "report.json"
    assert write_operator_report(resolve(str(target)), source_uri="s", records=records, objects=objects) == 2
    report = json.loads(target.read_text())
    assert [(e["series_key"], e["reason"], e["objects"]) for e in report["series"]] == [
        ("b", "decode_failed", ["p/2.dcm", "p/3.dcm"]),
        ("c", "localizer", ["p/4.dcm"]),
    ]
