"""Sharder: MDS shards written exactly once, and the dataset's commit log and catalog that list them.

The public surface is below; names are imported on first use, so ``import radforge.sharder`` does
not import Ray (the datasink) or streaming (the mixer).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from radforge.exports import lazy_exports

if TYPE_CHECKING:
    from radforge.sharder.catalog import Catalog, DatasetError, load_catalog
    from radforge.sharder.commit_log import SeriesClaimedError, export_index
    from radforge.sharder.compact import CompactionError, CompactionSummary, Compactor, compact_dataset
    from radforge.sharder.datasink import MDSDatasink, commit_part
    from radforge.sharder.listing import DatasetSummary, list_datasets
    from radforge.sharder.mds import SampleEncoder, ShardFormatError, ShardWriter
    from radforge.sharder.mixing import MixSpec, SourceSpec, build_streams
    from radforge.sharder.schema import COLUMNS, SCHEMA_VERSION, SchemaVersionError
    from radforge.sharder.stats import dataset_stats, format_stats
    from radforge.sharder.stream_memory import release_stream
    from radforge.sharder.torch_dataset import (
        RadforgeDataset,
        RadforgeIterableDataset,
        RadforgeMonaiDataset,
        RadforgeMonaiIterableDataset,
    )
    from radforge.sharder.vacuum import VacuumSummary, vacuum_dataset
    from radforge.sharder.verify import VerifyReport, verify_dataset

__all__ = [
    "COLUMNS",
    "SCHEMA_VERSION",
    "Catalog",
    "CompactionError",
    "CompactionSummary",
    "Compactor",
    "DatasetError",
    "DatasetSummary",
    "MDSDatasink",
    "MixSpec",
    "RadforgeDataset",
    "RadforgeIterableDataset",
    "RadforgeMonaiDataset",
    "RadforgeMonaiIterableDataset",
    "SampleEncoder",
    "SchemaVersionError",
    "SeriesClaimedError",
    "ShardFormatError",
    "ShardWriter",
    "SourceSpec",
    "VacuumSummary",
    "VerifyReport",
    "build_streams",
    "commit_part",
    "compact_dataset",
    "dataset_stats",
    "export_index",
    "format_stats",
    "list_datasets",
    "load_catalog",
    "release_stream",
    "vacuum_dataset",
    "verify_dataset",
]

__getattr__ = lazy_exports(
    __name__,
    {
        "Catalog": "catalog",
        "DatasetError": "catalog",
        "load_catalog": "catalog",
        "SeriesClaimedError": "commit_log",
        "export_index": "commit_log",
        "CompactionError": "compact",
        "CompactionSummary": "compact",
        "Compactor": "compact",
        "compact_dataset": "compact",
        "DatasetSummary": "listing",
        "list_datasets": "listing",
        "MDSDatasink": "datasink",
        "commit_part": "datasink",
        "SampleEncoder": "mds",
        "ShardFormatError": "mds",
        "ShardWriter": "mds",
        "MixSpec": "mixing",
        "SourceSpec": "mixing",
        "build_streams": "mixing",
        "COLUMNS": "schema",
        "SCHEMA_VERSION": "schema",
        "SchemaVersionError": "schema",
        "dataset_stats": "stats",
        "format_stats": "stats",
        "release_stream": "stream_memory",
        "RadforgeDataset": "torch_dataset",
        "RadforgeIterableDataset": "torch_dataset",
        "RadforgeMonaiDataset": "torch_dataset",
        "RadforgeMonaiIterableDataset": "torch_dataset",
        "VacuumSummary": "vacuum",
        "vacuum_dataset": "vacuum",
        "VerifyReport": "verify",
        "verify_dataset": "verify",
    },
)
