"""Small committed datasets written with radforge's own shard writer and commit log (no Ray, no ingest)."""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from radforge.sharder.commit_log import append_part, write_part_index
from radforge.sharder.mds import SampleEncoder, ShardWriter
from radforge.sharder.schema import COLUMNS, SCHEMA_VERSION
from radforge.storage import Location, resolve


def sample(key: str) -> dict[str, Any]:
    """A tiny sample of the radforge schema whose pixels encode its key (checked on read)."""
    value = sum(key.encode()) % 1000
    return {
        "key": key,
        "image": np.full((4, 4), value, np.int16),
        "fg": np.zeros((1, 1), np.uint8),
        "meta": {"modality": "CT", "key": key},
    }


def commit_part(
    root: Location | str,
    part_id: str,
    keys: list[str],
    *,
    per_shard: int = 5,
    compression: str | None = "zstd:1",
    root_index_max_shards: int = 10_000,
) -> list[dict[str, Any]]:
    """Write ``keys`` as shards of ``per_shard`` samples under ``parts/<part_id>/t0/`` and commit the part.

    Returns the part's shard entries (basenames relative to the dataset root).
    """
    root = resolve(root) if isinstance(root, str) else root
    encoder = SampleEncoder(COLUMNS)
    with tempfile.TemporaryDirectory() as tmp:
        writer = ShardWriter(
            tmp, encoder=encoder, compression=compression, hashes=["xxh64"], size_limit=1 << 30
        )
        shards: list[dict[str, Any]] = []
        for start in range(0, len(keys), per_shard):
            for key in keys[start : start + per_shard]:
                writer.add(encoder.encode(sample(key)))
            writer.flush()
        shards = writer.finish()
        prefix = f"parts/{part_id}/t0/"
        for entry in shards:
            for kind in ("raw_data", "zip_data"):
                if entry.get(kind):
                    name = entry[kind]["basename"]
                    if kind == "zip_data" or not entry.get("zip_data"):
                        dst = root.join(prefix + name)
                        root.fs.makedirs(os.path.dirname(dst.path), exist_ok=True)
                        root.fs.put_file(os.path.join(tmp, name), dst.path)
                    entry[kind]["basename"] = prefix + name
    write_part_index(root, part_id, shards)
    manifest = f"manifests/{part_id}.parquet"  # one series per part, as compaction concatenates them
    root.fs.makedirs(root.join("manifests").path, exist_ok=True)
    with root.fs.open(root.join(manifest).path, "wb") as f:
        pq.write_table(
            pa.Table.from_pylist([{"series_key": part_id, "status": "ingested", "reason": None}]), f
        )
    part = {
        "id": part_id,
        "shards": len(shards),
        "samples": len(keys),
        "schema_version": SCHEMA_VERSION,
        "index": f"parts/{part_id}/index.json",
        "committed_at": "2026-12-04T00:00:00Z",
        "archive_id": "archive",
        "config_hash": "0" * 16,
        "manifest": manifest,
        "series": 1,
        "series_ingested": 1,
    }
    append_part(root, part, root_index_max_shards=root_index_max_shards)
    return shards


def make_dataset(
    root: Location | str, parts: dict[str, int], *, prefix: str = "", **options: Any
) -> dict[str, list[str]]:
    """A dataset of ``parts`` (part id -> samples), keys ``<prefix><part>/<i>``; returns each part's keys."""
    out = {}
    for pid, n in parts.items():
        keys = [f"{prefix}{pid}/{i:04d}" for i in range(n)]
        commit_part(root, pid, keys, **options)
        out[pid] = keys
    return out


def part_id(i: int) -> str:
    return f"p-{i:016x}"
