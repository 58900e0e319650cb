"""The operator report: which source objects are behind each skipped or quarantined series.

Data engineers must find the files behind a quarantined series, but the dataset and its manifest
are path-free (folders are often named after patients). The opt-in operator report
(``radforge ingest --operator-report URI``) is the one output that names objects: one JSON
document listing, per series not ingested, its reason, detail and source objects (paths relative
to the archive root). It holds identifying paths, so it belongs in the hospital's trust zone next
to the archive, never inside the dataset: a location inside the dataset is refused before the run.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from radforge.ingest.errors import SourceError
from radforge.storage import Location, resolve

WARNING = (
    "This report names source objects, whose paths may contain patient names or identifiers. "
    "Keep it in the hospital's trust zone with the archive; never copy it next to the dataset."
)


def check_report_location(report_uri: str, dataset: Location) -> Location:
    """Resolve the report's location; ``SourceError`` when it lies inside the dataset."""
    report = resolve(report_uri)
    inside = f"{dataset.uri.rstrip('/')}/"
    if report.uri == dataset.uri.rstrip("/") or report.uri.startswith(inside):
        raise SourceError(
            f"operator report {report.uri} is inside the dataset {dataset.uri}: it names source "
            "objects (identifying paths) and must stay outside the dataset, in the hospital's trust zone"
        )
    return report


def report_entries(records: Iterable[dict[str, Any]], objects: dict[str, list[str]]) -> list[dict[str, Any]]:
    """One entry per series record not ingested: key, status, reason, detail and its source objects."""
    entries = []
    for record in records:
        if record["status"] == "ingested":
            continue
        entries.append(
            {
                "series_key": record["series_key"],
                "status": record["status"],
                "reason": record["reason"],
                "detail": record["detail"],
                "objects": sorted(objects.get(record["series_key"], [])),
            }
        )
    return sorted(entries, key=lambda e: (e["reason"] or "", e["series_key"]))


def write_operator_report(
    report: Location, *, source_uri: str, records: Iterable[dict[str, Any]], objects: dict[str, list[str]]
) -> int:
    """Write the report (JSON) to ``report``; returns how many series it lists."""
    entries = report_entries(records, objects)
    document = {"warning": WARNING, "archive": source_uri, "series": entries}
    parent = report.path.rsplit("/", 1)[0]
    if report.is_local and parent:
        report.fs.makedirs(parent, exist_ok=True)
    with report.fs.open(report.path, "w") as f:
        json.dump(document, f, indent=1)
    return len(entries)
