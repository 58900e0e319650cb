"""The radforge datasets under a prefix (``radforge dataset list``), read from their commit logs.

A folder counts as a dataset when its marker (or, for datasets made before markers, a radforge root
index) says so; totals come from the catalog's part entries, so listing reads no shard index.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from radforge.sharder.catalog import load_catalog
from radforge.sharder.marker import DestinationState, destination_state
from radforge.storage import Location


@dataclass(frozen=True)
class DatasetSummary:
    """One dataset: where it is and what its committed parts hold."""

    uri: str
    parts: int
    shards: int
    samples: int
    bytes: int
    archives: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarise(root: Location) -> DatasetSummary:
    """Totals of the dataset at ``root`` from its catalog's part entries (no shard index is read)."""
    parts = load_catalog(root, must_exist=True).parts
    return DatasetSummary(
        uri=root.uri,
        parts=len(parts),
        shards=sum(int(p.get("shards", 0)) for p in parts),
        samples=sum(int(p.get("samples", 0)) for p in parts),
        bytes=sum(int(p.get("bytes", 0)) for p in parts),
        archives=len({p.get("archive_id") for p in parts}),
    )


def list_datasets(prefix: Location) -> list[DatasetSummary]:
    """The datasets at ``prefix`` itself or in the folders directly below it, by URI."""
    datasets = (DestinationState.DATASET, DestinationState.UNMARKED_DATASET)
    if destination_state(prefix) in datasets:
        return [summarise(prefix)]
    out = []
    for path in sorted(prefix.fs.ls(prefix.path, detail=False)):
        name = str(path).rstrip("/").rsplit("/", 1)[-1]
        child = prefix.join(name)
        if child.fs.isdir(child.path) and destination_state(child) in datasets:
            out.append(summarise(child))
    return out
