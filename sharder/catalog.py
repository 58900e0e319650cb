"""The dataset on storage: parts, manifests, the commit log, and the catalog folded from it.

Layout of a dataset at ``DATASET_URI`` (see docs/data-format.md)::

    _log/<seq>.json                  one immutable entry per commit (:mod:`radforge.sharder.commit_log`)
    _log/<seq>.checkpoint.json       the folded log every CHECKPOINT_EVERY entries
    parts/<part>/index.json          the part's own stock MDS index
    parts/<part>/<task>/shard.*.mds[.zstd]   shards of one committed ingest run (one folder per write task)
    manifests/<part>.parquet         series manifest of that run (status, reason, counts per series)
    index.json                       root MDS index for stock readers, kept only below a shard threshold

The log is the commit point: a part is committed when its log entry exists. The catalog (schema
version, and per part: archive, time, counts, config hash, manifest) is the newest checkpoint
folded with the entries after it; shard entries are read from the part indexes only when asked
for (:attr:`Catalog.shards`). A dataset written before the log (a root ``index.json`` with a
``radforge`` section and no ``_log``) is read from its root index, and its first commit with a log
turns that catalog into checkpoint 0. A part folder under ``parts/`` that no commit references is
an orphan of a run that died before commit; it is never read and is removed by the next run. Only
folders named like a part (:data:`PART_ID_RE`) are radforge's: anything else under ``parts/`` is
left alone.
"""

from __future__ import annotations

import json
import re
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


class Catalog:
    """The committed state of a dataset: its parts, and (read on first use) their MDS shard entries.

    ``seq`` is the log entry the state was read at (0 for an empty dataset or one in the root-index
    layout: its first log commit is entry 1, on top of checkpoint 0); ``layout`` says which of
    "log", "root_index" or "empty" it was read from. ``shards`` lists every shard with its path
    relative to the root; for a dataset with a log they are read from the part indexes on first
    access (O(shards): verify and export need them, planning and mixing do not).
    """

    def __init__(
        self,
        shards: list[dict[str, Any]] | None = None,
        parts: list[dict[str, Any]] | None = None,
        schema_version: str = SCHEMA_VERSION,
        *,
        root: Location | None = None,
        seq: int = 0,
        layout: str = "empty",
        replaced: set[str] | None = None,
    ) -> None:
        self._shards = shards
        self.replaced = replaced or set()  # parts a compaction replaced, kept until vacuum
        self.parts = parts if parts is not None else []
        self.schema_version = schema_version
        self.root = root
        self.seq = seq
        self.layout = layout

    @property
    def shards(self) -> list[dict[str, Any]]:
        if self._shards is None:
            from radforge.sharder.commit_log import part_shards

            if self.root is None:
                self._shards = []
            else:
                self._shards = [s for p in self.parts for s in part_shards(self.root, p["id"])]
        return self._shards

    @shards.setter
    def shards(self, value: list[dict[str, Any]]) -> None:
        self._shards = value

    @property
    def part_ids(self) -> set[str]:
        return {p["id"] for p in self.parts}

    def to_index(self) -> dict[str, Any]:
        section: dict[str, Any] = {"schema_version": self.schema_version, "parts": self.parts}
        if self.layout == "log":
            section["log_seq"] = self.seq
        return {"version": 2, "shards": self.shards, "radforge": section}


def load_catalog(root: Location, *, must_exist: bool = False, check_schema: bool = True) -> Catalog:
    """Read the committed catalog of the dataset at ``root`` (empty if none and not ``must_exist``).

    A dataset with a commit log is read from its newest checkpoint and the entries after it; one
    in the root-index layout from its root ``index.json``.
    """
    from radforge.sharder.commit_log import has_log, read_state

    if has_log(root):
        state = read_state(root)
        parts = list(state.parts.values())
        version = parts[-1].get("schema_version", SCHEMA_VERSION) if parts else SCHEMA_VERSION
        if check_schema:
            for p in parts:
                check_compatible(p.get("schema_version"), where=root.uri)
        return Catalog(
            None, parts, version, root=root, seq=state.seq, layout="log", replaced=set(state.replaced)
        )
    catalog = load_root_index(root, check_schema=check_schema)
    if catalog is None:
        if must_exist:
            raise DatasetError(f"no dataset at {root.uri}: {INDEX} is missing and there is no commit log")
        return Catalog(root=root)
    return catalog


def load_root_index(root: Location, *, check_schema: bool = True) -> Catalog | None:
    """The catalog of a dataset in the root-index layout (``None`` if there is no root index)."""
    loc = root.join(INDEX)
    if not exists(loc):
        return None
    try:
        obj = json.loads(read_bytes(loc))
        shards = obj["shards"]
    except (ValueError, KeyError, TypeError):
        raise DatasetError(f"{loc.uri} is not a valid MDS index (corrupt or truncated JSON)") from None
    section = obj.get("radforge")
    if section is None:
        if check_schema:
            check_compatible(None, where=root.uri)
        return Catalog(shards=shards, parts=[], schema_version="", root=root, layout="root_index")
    version = section.get("schema_version")
    if check_schema:
        check_compatible(version, where=root.uri)
    return Catalog(shards, list(section.get("parts", [])), version, root=root, layout="root_index")


def commit(root: Location, catalog: Catalog) -> None:
    """Atomically replace the root index with ``catalog``: the commit of the root-index layout.

    The layout before the commit log (every commit rewrote the whole index: O(shards)); kept for
    datasets made that way in tests and for the benchmark's "before" figures.
    """
    data = json.dumps(catalog.to_index(), sort_keys=True).encode()
    write_bytes_atomic(root.join(INDEX), data)


def shard_files(shard: dict[str, Any]) -> list[str]:
    """Relative paths of the stored files of one index entry (the compressed one when compressed)."""
    info = shard.get("zip_data") or shard["raw_data"]
    return [info["basename"]]
