"""``radforge dataset stats``: what a dataset holds, from its catalog and series manifests only.

Counts come from the per-part counters the datasink records at commit time, so stats never read
a shard; the slices-per-series distribution comes from the manifests.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from radforge.sharder.catalog import load_catalog
from radforge.sharder.datasink import COUNT_FIELDS
from radforge.storage import resolve


def dataset_stats(uri: str) -> dict[str, Any]:
    """Counts by modality, plane, window, body part and archive; bytes; slices-per-series distribution."""
    import pyarrow.parquet as pq

    root = resolve(uri)
    catalog = load_catalog(root, must_exist=True)
    by: dict[str, Counter[str]] = {f: Counter() for f in COUNT_FIELDS}
    by_archive: Counter[str] = Counter()
    status: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    per_series: list[int] = []
    for part in catalog.parts:
        by_archive[part.get("archive_id", "-")] += int(part.get("samples", 0))
        for key, n in part.get("counts", {}).items():
            for field, value in zip(COUNT_FIELDS, key.split("|"), strict=True):
                by[field][value] += int(n)
        loc = root.join(part["manifest"])
        with loc.fs.open(loc.path, "rb") as f:
            table = pq.read_table(f, columns=["status", "reason", "slices_kept"]).to_pydict()
        for st, reason, kept in zip(table["status"], table["reason"], table["slices_kept"], strict=True):
            status[st] += 1
            if reason:
                reasons[reason] += 1
            if st == "ingested":
                per_series.append(int(kept))
    arr = np.asarray(per_series or [0])
    return {
        "dataset_uri": root.uri,
        "schema_version": catalog.schema_version,
        "parts": len(catalog.parts),
        # from the parts' catalog entries (what their commits recorded): no part index is read
        "shards": sum(int(p.get("shards", 0)) for p in catalog.parts),
        "samples": sum(int(p.get("samples", 0)) for p in catalog.parts),
        "bytes": sum(int(p.get("bytes", 0)) for p in catalog.parts),
        **{f"by_{f}": dict(sorted(c.items())) for f, c in by.items()},
        "by_archive": dict(sorted(by_archive.items())),
        "series_by_status": dict(sorted(status.items())),
        "series_by_reason": dict(sorted(reasons.items())),
        "slices_per_series": {
            "series": len(per_series),
            "min": int(arr.min()),
            "p50": float(np.percentile(arr, 50)),
            "p90": float(np.percentile(arr, 90)),
            "max": int(arr.max()),
            "mean": round(float(arr.mean()), 2),
        },
    }


def format_stats(stats: dict[str, Any]) -> str:
    """A plain-text rendering for the terminal."""
    lines = [
        f"dataset {stats['dataset_uri']} (schema {stats['schema_version']})",
        f"  parts {stats['parts']}, shards {stats['shards']}, samples {stats['samples']}, "
        f"{stats['bytes'] / 1e6:.1f} MB",
    ]
    for name in ("modality", "plane", "window", "body_part", "archive"):
        counts = stats[f"by_{name}"]
        lines.append(f"  by {name}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    lines.append("  series: " + ", ".join(f"{k}={v}" for k, v in stats["series_by_status"].items()))
    if stats["series_by_reason"]:
        lines.append("  reasons: " + ", ".join(f"{k}={v}" for k, v in stats["series_by_reason"].items()))
    d = stats["slices_per_series"]
    lines.append(
        f"  slices per ingested series: n={d['series']} min={d['min']} p50={d['p50']:.0f} "
        f"p90={d['p90']:.0f} max={d['max']} mean={d['mean']}"
    )
    return "\n".join(lines)
