"""The dataset on storage: root index, parts, manifests, and the catalog inside the root index.

Layout of a dataset at ``DATASET_URI``::

    index.json                       MDS root index (stock StreamingDataset reads it) + "radforge" catalog
    parts/<part>/<task>/shard.*.mds[.zstd]   shards of one committed ingest run (one folder per write task)
    manifests/<part>.parquet         series manifest of that run (status, reason, counts per series)

The root ``index.json`` is the single commit point: it is replaced atomically, and lists shards
with their path relative to the root, so a stock reader finds every part. Its ``radforge``
section is the catalog (schema version, and per part: archive, time, counts, config hash,
manifest). A part folder under ``parts/`` that the index does not reference is an orphan of a
run that died before commit; it is never read and is removed by the next run. Only folders named
like a part (:data:`PART_ID_RE`) are radforge's: anything else under ``parts/`` is left alone.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from radforge.sharder.schema import SCHEMA_VERSION, check_compatible
from radforge.storage import Location, exists, read_bytes, write_bytes_atomic

INDEX = "index.json"
PARTS = "parts"
MANIFESTS = "manifests"
# The name of a part folder (``radforge.ingest.pipeline.part_id_for``): "p-" and 16 hex digits.
PART_ID_RE = re.compile(r"p-[0-9a-f]{16}")


def is_part_id(name: str) -> bool:
    """Whether ``name`` is a part id radforge makes (so a folder of that name is radforge's)."""
    return PART_ID_RE.fullmatch(name) is not None


class DatasetError(RuntimeError):
    """A dataset on storage is missing, corrupt or incompatible; the message names it."""


@dataclass
class Catalog:
    """The committed state of a dataset: MDS shard entries and the radforge catalog section."""

    shards: list[dict[str, Any]] = field(default_factory=list)
    parts: list[dict[str, Any]] = field(default_factory=list)
    schema_version: str = SCHEMA_VERSION

    @property
    def part_ids(self) -> set[str]:
        return {p["id"] for p in self.parts}

    def to_index(self) -> dict[str, Any]:
        return {
            "version": 2,
            "shards": self.shards,
            "radforge": {"schema_version": self.schema_version, "parts": self.parts},
        }


def load_catalog(root: Location, *, must_exist: bool = False, check_schema: bool = True) -> Catalog:
    """Read the committed catalog of the dataset at ``root`` (empty if none and not ``must_exist``)."""
    loc = root.join(INDEX)
    if not exists(loc):
        if must_exist:
            raise DatasetError(f"no dataset at {root.uri}: {INDEX} is missing")
        return Catalog()
    try:
        obj = json.loads(read_bytes(loc))
        shards = obj["shards"]
    except (ValueError, KeyError, TypeError):
        raise DatasetError(f"{loc.uri} is not a valid MDS index (corrupt or truncated JSON)") from None
    section = obj.get("radforge")
    if section is None:
        if check_schema:
            check_compatible(None, where=root.uri)
        return Catalog(shards=shards, parts=[], schema_version="")
    version = section.get("schema_version")
    if check_schema:
        check_compatible(version, where=root.uri)
    return Catalog(shards=shards, parts=list(section.get("parts", [])), schema_version=version)


def commit(root: Location, catalog: Catalog) -> None:
    """Atomically replace the root index with ``catalog``: the dataset's single commit point."""
    data = json.dumps(catalog.to_index(), sort_keys=True).encode()
    write_bytes_atomic(root.join(INDEX), data)


def shard_files(shard: dict[str, Any]) -> list[str]:
    """Relative paths of the stored files of one index entry (the compressed one when compressed)."""
    info = shard.get("zip_data") or shard["raw_data"]
    return [info["basename"]]
