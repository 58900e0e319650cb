"""Mixing datasets (or single parts of them) for training, mapped onto streaming's ``Stream``.

A mix is a list of sources, each a dataset URI (optionally one committed part of it) with a
weight. Weights map onto MosaicML Streaming's per-stream sampling controls:

- ``proportion``: share of each epoch drawn from this source (all sources give one, or none do);
- ``repeat``: how many times the source's samples are seen per epoch (up- or down-sampling);
- ``choose``: an absolute number of samples per epoch.

For a CT:MR = 3:1 mix, ingest CT and MR into separate datasets (``--set modalities=[CT]`` /
``[MR]``) and give them proportions 0.75 and 0.25 (see docs/data-format.md).

The trainer reads a mix through shard tables (:func:`open_sources`: one row range of a dataset's
table per source, the weights applied by :mod:`radforge.trainer.sampling` with the same meaning);
:func:`build_streams` maps it onto streaming's ``Stream`` objects for stock readers.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from radforge.sharder.catalog import INDEX, PARTS, Catalog, load_catalog
from radforge.sharder.shard_table import ShardTable, load_table
from radforge.storage import Location, exists, read_versioned, resolve


class SourceSpec(BaseModel):
    """One source of a mix."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    uri: str = Field(description="dataset root (path, file://, s3://)")
    part: str | None = Field(None, description="one committed part id of the dataset (default: all parts)")
    proportion: float | None = Field(None, gt=0, description="share of each epoch from this source")
    repeat: float | None = Field(None, gt=0, description="times each sample is seen per epoch")
    choose: int | None = Field(None, gt=0, description="samples drawn from this source per epoch")

    @model_validator(mode="after")
    def _one_weight(self) -> SourceSpec:
        given = [n for n in ("proportion", "repeat", "choose") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(
                f"give at most one of proportion, repeat, choose per source (got {', '.join(given)})"
            )
        return self


class MixSpec(BaseModel):
    """Several sources; proportions are all-or-none, as streaming requires."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sources: list[SourceSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _proportions_all_or_none(self) -> MixSpec:
        with_p = [s.proportion is not None for s in self.sources]
        if any(with_p) and not all(with_p):
            raise ValueError("either every source gives a proportion or none does")
        return self


def source_roots(source: SourceSpec, catalog: Catalog) -> list[tuple[str, int]]:
    """The URIs whose ``index.json`` streams read for ``source``, each with its sample count.

    A part is always one stock MDS dataset. A whole dataset is its root when the root index is
    current (a dataset below the root-index threshold, or in the root-index layout); otherwise
    (no root index above the threshold, or one that lags the log) one URI per committed part.
    ``catalog`` is the dataset's, read once per dataset by the caller.
    """
    root = resolve(source.uri)
    if source.part is None:
        if catalog.layout != "log" or _root_index_seq(root) == catalog.seq:
            return [(root.uri, sum(int(p.get("samples", 0)) for p in catalog.parts))]
        return [(root.join(PARTS, p["id"]).uri, int(p.get("samples", 0))) for p in catalog.parts]
    part = _committed_part(root, source.part, catalog)
    loc = root.join(PARTS, source.part)
    if not exists(loc.join(INDEX)):
        raise ValueError(f"part {source.part!r} of {root.uri} has no {INDEX} (written by an older radforge)")
    return [(loc.uri, int(part.get("samples", 0)))]


def _committed_part(root: Location, part_id: str, catalog: Catalog) -> dict[str, Any]:
    part = next((p for p in catalog.parts if p["id"] == part_id), None)
    if part is None:
        raise ValueError(
            f"{root.uri} has no committed part {part_id!r}; parts: {', '.join(sorted(catalog.part_ids))}"
        )
    return part


def _root_index_seq(root: Location) -> int | None:
    """The log entry the root index was written at (``None`` if there is none)."""
    got = read_versioned(root.join(INDEX))
    if got is None:
        return None
    seq = json.loads(got[0]).get("radforge", {}).get("log_seq")
    return None if seq is None else int(seq)


def build_streams(spec: MixSpec, *, cache_dir: str) -> list[Any]:
    """``streaming.Stream``s for the mix: one per source, or one per part of a dataset without a root index.

    Each dataset's catalog is read once, however many sources name it (linear in sources). A source
    read as several part streams has its weight split by sample counts: ``proportion`` and
    ``choose`` in proportion to each part's samples, ``repeat`` unchanged. Remote sources cache
    under ``cache_dir``; local ones are read in place.
    """
    from streaming import Stream

    catalogs: dict[str, Catalog] = {}
    streams = []
    for source in spec.sources:
        root = resolve(source.uri)
        if root.uri not in catalogs:
            catalogs[root.uri] = load_catalog(root, must_exist=True)
        roots = source_roots(source, catalogs[root.uri])
        total = sum(n for _, n in roots) or 1
        for uri, n in roots:
            share = n / total if len(roots) > 1 else 1.0
            loc = resolve(uri)
            remote = None if loc.is_local else uri
            local = (
                loc.path
                if loc.is_local
                else os.path.join(cache_dir, hashlib.sha256(uri.encode()).hexdigest()[:16])
            )
            streams.append(
                Stream(
                    remote=remote,
                    local=local,
                    proportion=None if source.proportion is None else source.proportion * share,
                    repeat=source.repeat,
                    choose=None if source.choose is None else max(1, round(source.choose * share)),
                )
            )
    return streams


@dataclass(frozen=True)
class SourceShards:
    """One source of a mix: rows ``[start, stop)`` of its dataset's shard table."""

    spec: SourceSpec
    root: Location
    table: ShardTable
    start: int
    stop: int

    @property
    def samples(self) -> int:
        return int(self.table.samples[self.start : self.stop].sum())


def open_sources(spec: MixSpec, *, cache_dir: str) -> list[SourceShards]:
    """Each source's shards, from its dataset's shard table (catalog and table read once per dataset).

    A whole dataset is every row of its table (any number of parts, with or without a root
    index); a part is its rows. Raises ``DatasetError`` / ``SchemaVersionError`` naming the dataset,
    ``ValueError`` naming a part that is not committed.
    """
    opened: dict[str, tuple[Catalog, ShardTable]] = {}
    out = []
    for source in spec.sources:
        root = resolve(source.uri)
        if root.uri not in opened:
            catalog = load_catalog(root, must_exist=True)
            opened[root.uri] = (catalog, load_table(catalog, cache_dir=cache_dir))
        catalog, table = opened[root.uri]
        if source.part is None:
            start, stop = 0, len(table)
        else:
            _committed_part(root, source.part, catalog)
            start, stop = table.rows_of(source.part)
        out.append(SourceShards(spec=source, root=root, table=table, start=start, stop=stop))
    return out
