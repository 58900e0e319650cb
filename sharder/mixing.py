"""Mixing datasets (or single parts of them) for training, mapped onto streaming's ``Stream``.

A mix is a list of sources, each a dataset URI (optionally one committed part of it) with a
weight. Weights map onto MosaicML Streaming's per-stream sampling controls:

- ``proportion``: share of each epoch drawn from this source (all sources give one, or none do);
- ``repeat``: how many times the source's samples are seen per epoch (up- or down-sampling);
- ``choose``: an absolute number of samples per epoch.

For a CT:MR = 3:1 mix, ingest CT and MR into separate datasets (``--set modalities=[CT]`` /
``[MR]``) and give them proportions 0.75 and 0.25 (see docs/data-format.md).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from radforge.sharder.catalog import INDEX, PARTS, load_catalog
from radforge.storage import exists, resolve


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


def source_root(source: SourceSpec) -> str:
    """The URI whose ``index.json`` the stream reads: the dataset root or one of its parts."""
    root = resolve(source.uri)
    catalog = load_catalog(root, must_exist=True)
    if source.part is None:
        return root.uri
    if source.part not in catalog.part_ids:
        raise ValueError(
            f"{root.uri} has no committed part {source.part!r}; parts: {', '.join(sorted(catalog.part_ids))}"
        )
    part = root.join(PARTS, source.part)
    if not exists(part.join(INDEX)):
        raise ValueError(f"part {source.part!r} of {root.uri} has no {INDEX} (written by an older radforge)")
    return part.uri


def build_streams(spec: MixSpec, *, cache_dir: str) -> list[Any]:
    """One ``streaming.Stream`` per source.

    Remote sources cache under ``cache_dir``; local ones are read in place.
    """
    from streaming import Stream

    streams = []
    for source in spec.sources:
        uri = source_root(source)
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
                proportion=source.proportion,
                repeat=source.repeat,
                choose=source.choose,
            )
        )
    return streams
