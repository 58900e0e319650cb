"""A Ray Data datasink that writes MDS shards to any fsspec URI, exactly once.

Lifecycle (Ray Data calls these hooks):

- ``on_write_start`` (driver): removes orphans of runs that died before their commit (radforge's
  part folders only, in a marked dataset: see :mod:`radforge.sharder.marker`; never a part a live
  writer holds the lease of: see :func:`remove_orphans`);
- ``write`` (one Ray task per group of blocks): writes that task's (already MDS-encoded) samples
  with :class:`radforge.sharder.mds.ShardWriter` into a staging folder, then publishes them under a
  folder named after a hash of the task's sample keys, so a retried task overwrites its own
  output rather than adding a copy;
  returns its shard entries and the series records it carried;
- ``on_write_complete`` (driver, only after every task succeeded): writes the part's series
  manifest and index and commits the part as the next entry of the dataset's commit log (see
  :mod:`radforge.sharder.commit_log`), after renewing the write leases it was given (its
  archive's and its part's: :mod:`radforge.sharder.lease`).

A job that dies before ``on_write_complete`` leaves the committed dataset untouched: its shards
are unreferenced and the next run removes them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pyarrow as pa
from ray.data import Datasink
from ray.data.block import Block, BlockAccessor
from ray.data.datasource.datasink import WriteResult

from radforge.sharder.catalog import (
    MANIFESTS,
    PARTS,
    Catalog,
    DatasetError,
    commit,
    is_part_id,
    load_catalog,
    shard_files,
)
from radforge.sharder.commit_log import ROOT_INDEX_MAX_SHARDS, append_part, part_index_path, write_part_index
from radforge.sharder.lease import ORPHAN_GRACE_S, DatasetBusyError, Lease, PartLease
from radforge.sharder.marker import is_marked
from radforge.sharder.mds import SampleEncoder, ShardWriter
from radforge.sharder.schema import COLUMNS, SCHEMA_VERSION
from radforge.storage import Location, ensure_dir, resolve

log = logging.getLogger(__name__)

STAGING_PREFIX = "_staging-"
TASK_NAME_LENGTH = 16


def task_folder_name(keys: Iterable[str]) -> str:
    """Deterministic folder name of a write task: a hash of its (sorted) sample keys."""
    h = hashlib.sha256()
    for k in sorted(keys):
        h.update(k.encode())
        h.update(b"\n")
    return h.hexdigest()[:TASK_NAME_LENGTH]


# Every row crossing from the series stage to the datasink has these columns. Samples arrive
# already MDS-encoded (``sample``), so the write side only concatenates, compresses and stores.
ROW_COLUMNS = (
    "record",  # "sample" | "series"
    "key",
    "sample",  # MDS-encoded sample bytes (b"" for series rows)
    "count",  # count_key of the sample's meta
    "series",  # series record JSON (record == "series")
)


# Below glibc's largest mmap threshold (32 MiB): a chunk's buffer comes from the heap, whose freed
# pages the next chunk reuses (tuned workers keep them, see radforge.runtime). One buffer per 128 MiB
# series was a fresh mapping each time: in one process, kernel time per 1,024 slices 0.47 -> 0.36 s.
ROWS_CHUNK_BYTES = 16 << 20


def rows_block(rows: list[dict[str, Any]], *, chunk_bytes: int = ROWS_CHUNK_BYTES) -> pa.Table:
    """The rows of one series stage task as one Arrow table, the block the datasink reads.

    ``sample`` is bytes or a list of pieces (:meth:`SampleEncoder.encode_parts`: views of the
    slice arrays). They are laid end to end (the only copy) behind a ``large_binary`` column, in
    record batches of at most ``chunk_bytes`` of samples each (a bigger sample is a batch of its
    own): Ray Data then neither converts a pandas frame to Arrow row by row nor re-grows a binary
    builder, and :func:`iter_rows` reads each sample back as a zero-copy view.
    """
    batches: list[pa.RecordBatch] = []
    pieces: list[Any] = []  # bytes-like
    sizes: list[int] = []
    start = held = 0
    for i, r in enumerate(rows):  # a sample is bytes, or the pieces of SampleEncoder.encode_parts
        parts = [r["sample"]] if isinstance(r["sample"], bytes | bytearray | memoryview) else r["sample"]
        size = sum(len(p) for p in parts)
        if sizes and held + size > chunk_bytes:
            batches.append(_rows_batch(rows[start:i], pieces, sizes))
            start, pieces, sizes, held = i, [], [], 0
        pieces.extend(parts)
        sizes.append(size)
        held += size
    batches.append(_rows_batch(rows[start:], pieces, sizes))
    return pa.Table.from_batches(batches)


def _rows_batch(rows: list[dict[str, Any]], pieces: list[Any], sizes: list[int]) -> pa.RecordBatch:
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    payload = pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), len(rows), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(pieces))]
    )
    columns = [
        payload if c == "sample" else pa.array([r[c] for r in rows], type=pa.string()) for c in ROW_COLUMNS
    ]
    return pa.RecordBatch.from_arrays(columns, names=list(ROW_COLUMNS))


def _binary_views(chunk: pa.Array) -> list[memoryview]:
    """Zero-copy views of the values of a (large_)binary Arrow array (no nulls)."""
    offset_type = np.int64 if pa.types.is_large_binary(chunk.type) else np.int32
    _, offsets_buf, data_buf = chunk.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=offset_type)[chunk.offset : chunk.offset + len(chunk) + 1]
    data = memoryview(data_buf) if data_buf is not None else memoryview(b"")
    return [data[int(a) : int(b)] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]


def iter_rows(block: Block) -> Iterable[tuple[str, str, memoryview | bytes, str, str]]:
    """``(record, key, sample, count, series)`` per row of a block of :data:`ROW_COLUMNS`.

    Arrow blocks (see :func:`rows_block`) give their samples as views into the block's buffer;
    other block types (pandas) go through Arrow first.
    """
    table = BlockAccessor.for_block(block).to_arrow()
    for batch in table.to_batches():
        text = {c: batch.column(c).to_pylist() for c in ROW_COLUMNS if c != "sample"}
        sample_col = batch.column("sample")
        if not (pa.types.is_binary(sample_col.type) or pa.types.is_large_binary(sample_col.type)):
            raise TypeError(f"column 'sample' must hold bytes, got Arrow type {sample_col.type}")
        if sample_col.null_count:
            raise ValueError("column 'sample' has nulls: use b'' for series rows")
        views = _binary_views(sample_col)
        yield from zip(text["record"], text["key"], views, text["count"], text["series"], strict=True)


COUNT_FIELDS = ("modality", "plane", "window", "body_part")


def count_key(meta: dict[str, Any]) -> str:
    """The '|'-joined (modality, plane, window, body part) a sample is counted under in the catalog."""
    return "|".join(str(meta.get(f) or "-") for f in COUNT_FIELDS)


class MDSDatasink(Datasink[dict[str, Any]]):
    """Write rows of ``record == 'sample'`` as MDS shards; collect ``record == 'series'`` rows."""

    def __init__(
        self,
        dataset_uri: str,
        *,
        part_id: str,
        part_info: dict[str, Any],
        compression: str | None = "zstd:1",
        hashes: list[str] | None = None,
        size_limit: int = 64 << 20,
        samples_per_task: int | None = None,
        known_records: frozenset[tuple[str, str, str | None]] = frozenset(),
        on_commit: Callable[[dict[str, Any]], None] | None = None,
        leases: tuple[Lease, ...] = (),
        base_seq: int | None = None,
        root_index_max_shards: int = ROOT_INDEX_MAX_SHARDS,
    ) -> None:
        self.dataset_uri = dataset_uri
        self.part_id = part_id
        self.part_info = part_info
        self.compression = compression
        self.hashes = sorted(hashes if hashes is not None else ["xxh64"])
        self.size_limit = size_limit
        self.samples_per_task = samples_per_task
        self.known_records = known_records
        self.on_commit = on_commit
        self.leases = leases  # held by the driver (archive, part): each renewed before the commit
        self.base_seq = base_seq  # the log entry the run planned against (concurrent claims after it refuse)
        self.root_index_max_shards = root_index_max_shards
        self.result: dict[str, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["leases"] = ()  # write tasks get a copy of the sink; the leases stay on the driver
        return state

    # ---- driver: before any task -------------------------------------------------------------
    def on_write_start(self, schema: Any = None) -> None:
        root = resolve(self.dataset_uri)
        ensure_dir(root)
        remove_orphans(root, load_catalog(root), keep={self.part_id})

    @property
    def min_rows_per_write(self) -> int | None:
        return self.samples_per_task

    # ---- one Ray task ------------------------------------------------------------------------
    def write(self, blocks: Iterable[Block], ctx: Any) -> dict[str, Any]:
        root = resolve(self.dataset_uri)
        part = root.join(PARTS, self.part_id)
        staging_local = part.join(f"{STAGING_PREFIX}{uuid.uuid4().hex}").path if part.is_local else None
        staging = staging_local or tempfile.mkdtemp(prefix="radforge-mds-")
        series: list[dict[str, Any]] = []
        keys: list[str] = []
        counts: Counter[str] = Counter()
        writer = None
        try:
            for block in blocks:
                for record, key, sample, count, series_json in iter_rows(block):
                    if record == "series":
                        series.append(json.loads(series_json))
                        continue
                    if writer is None:
                        writer = ShardWriter(
                            staging,
                            encoder=SampleEncoder(COLUMNS),
                            compression=self.compression,
                            hashes=self.hashes,
                            size_limit=self.size_limit,
                        )
                    writer.add(sample)
                    keys.append(key)
                    counts[count] += 1
            if writer is None:
                return {"task": None, "shards": [], "series": series, "samples": 0, "bytes": 0, "counts": {}}
            writer.finish()
            name = task_folder_name(keys)
            shards = self._publish(staging, part, name)
            nbytes = sum((s.get("zip_data") or s["raw_data"])["bytes"] for s in shards)
            return {
                "task": name,
                "shards": shards,
                "series": series,
                "samples": len(keys),
                "bytes": nbytes,
                "counts": dict(counts),
            }
        finally:
            if os.path.isdir(staging):
                shutil.rmtree(staging, ignore_errors=True)

    def _publish(self, staging: str, part: Location, name: str) -> list[dict[str, Any]]:
        """Move staged shards to ``part/name`` (replacing an earlier attempt) and rebase their paths."""
        with open(os.path.join(staging, "index.json")) as f:
            shards = json.load(f)["shards"]
        prefix = f"{PARTS}/{self.part_id}/{name}/"
        target = part.join(name)
        if target.is_local:
            if os.path.isdir(target.path):
                shutil.rmtree(target.path)
            os.remove(os.path.join(staging, "index.json"))
            os.makedirs(os.path.dirname(target.path), exist_ok=True)
            os.replace(staging, target.path)
        else:  # one batched put: fsspec's async filesystems (s3fs, gcsfs) upload the files concurrently
            rels = [rel for shard in shards for rel in shard_files(shard)]
            target.fs.put([os.path.join(staging, r) for r in rels], [target.join(r).path for r in rels])
        for shard in shards:
            for kind in ("raw_data", "zip_data"):
                if shard.get(kind):
                    shard[kind]["basename"] = prefix + shard[kind]["basename"]
        return shards

    # ---- driver: after every task succeeded ----------------------------------------------------
    def on_write_complete(self, write_result: WriteResult[dict[str, Any]]) -> None:
        returns = [r for r in write_result.write_returns if r is not None]
        for lease in self.leases:
            lease.fence()  # refuses if another writer took this archive or this part over
        self.result = commit_part(
            resolve(self.dataset_uri),
            part_id=self.part_id,
            part_info=self.part_info,
            task_returns=returns,
            known_records=self.known_records,
            base_seq=self.base_seq,
            root_index_max_shards=self.root_index_max_shards,
        )
        if self.on_commit is not None:
            self.on_commit(self.result)

    def on_write_failed(self, error: Exception) -> None:
        log.error(
            "ingest write failed before commit; the committed dataset is unchanged (%s)", type(error).__name__
        )


def commit_part(
    root: Location,
    *,
    part_id: str,
    part_info: dict[str, Any],
    task_returns: list[dict[str, Any]],
    known_records: frozenset[tuple[str, str, str | None]] = frozenset(),
    base_seq: int | None = None,
    root_index_max_shards: int = ROOT_INDEX_MAX_SHARDS,
    layout: str = "log",
) -> dict[str, Any]:
    """Write the part's manifest and index and commit it as the next log entry. Returns its catalog entry.

    The manifest records the series this run decided anew: series already ingested by an earlier
    part, and skip/quarantine records identical to ones already committed, are left out. Nothing is
    committed when the part adds no samples and no new records, so re-ingesting an unchanged
    archive changes nothing. ``all_series`` in the result lists every record, for the summary.

    ``base_seq`` is the log entry the run planned against: a concurrent commit after it that
    ingested one of this part's series refuses this one (:class:`SeriesClaimedError`; see
    :mod:`radforge.sharder.commit_log`). ``layout="root_index"`` commits the way radforge did
    before the log (rewriting the whole root index), for the benchmark's "before" figures.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if layout not in ("log", "root_index"):
        raise ValueError(f"layout must be 'log' or 'root_index', got {layout!r}")
    all_series = [s for r in task_returns for s in r["series"]]
    series = [
        s
        for s in all_series
        if s["reason"] != "already_ingested"
        and (s["series_key"], s["status"], s["reason"]) not in known_records
    ]
    shards = sorted((s for r in task_returns for s in r["shards"]), key=lambda s: s["raw_data"]["basename"])
    samples = sum(r["samples"] for r in task_returns)
    counts: Counter[str] = Counter()
    for r in task_returns:
        counts.update(r.get("counts", {}))
    entry = dict(part_info)
    entry.update(
        id=part_id,
        committed_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        samples=samples,
        shards=len(shards),
        bytes=sum(r["bytes"] for r in task_returns),
        series=len(series),
        series_ingested=sum(1 for s in series if s["status"] == "ingested"),
        manifest=f"{MANIFESTS}/{part_id}.parquet",
        counts=dict(sorted(counts.items())),
        schema_version=SCHEMA_VERSION,
    )
    if samples == 0 and not series:
        return {**entry, "committed": False, "all_series": all_series}
    series.sort(key=lambda s: s["series_key"])
    table = pa.Table.from_pylist(series)
    manifest = root.join(entry["manifest"])
    ensure_dir(root.join(MANIFESTS))
    with manifest.fs.open(manifest.path, "wb") as f:
        pq.write_table(table, f)
    write_part_index(root, part_id, shards)
    if layout == "root_index":
        catalog = load_catalog(root)
        catalog.shards = [
            s for s in catalog.shards if not s["raw_data"]["basename"].startswith(f"{PARTS}/{part_id}/")
        ] + shards
        catalog.parts = [p for p in catalog.parts if p["id"] != part_id] + [entry]
        commit(root, catalog)
    else:
        entry["index"] = part_index_path(part_id)
        ingested = frozenset(s["series_key"] for s in series if s["status"] == "ingested")
        entry["log_seq"] = append_part(
            root, entry, base_seq=base_seq, ingested=ingested, root_index_max_shards=root_index_max_shards
        )
    _remove_unreferenced(root, part_id, shards)
    return {**entry, "committed": True, "all_series": all_series}


def _remove_unreferenced(root: Location, part_id: str, shards: list[dict[str, Any]]) -> None:
    """Delete files of ``part_id`` that its committed index does not reference (failed attempts)."""
    part = root.join(PARTS, part_id)
    if not part.fs.exists(part.path):
        return
    referenced = {f for s in shards for f in shard_files(s)} | {part_index_path(part_id)}
    for path in part.fs.find(part.path):
        rel = root.relative(path)
        if rel not in referenced:
            part.fs.rm_file(path)


def remove_orphans(
    root: Location, catalog: Catalog, *, keep: set[str], grace_s: float = ORPHAN_GRACE_S
) -> list[str]:
    """Remove parts that no commit references and no live writer writes (left by runs that died).

    Returns their ids. Only in a marked dataset, and only part folders and manifests named like a
    radforge part (:func:`is_part_id`): anything else under ``parts/`` is someone else's and stays.
    Other writers may be writing parts right now: each candidate is removed only after taking its
    part lease (:class:`radforge.sharder.lease.PartLease`) itself, which succeeds only when nobody
    holds it or its holder is gone (its pid is gone on this node, or its heartbeat is older than
    ``grace_s``), and only if the log, read again after every such claim, still does not list it:
    a writer commits before it lets go of its part lease, so a committed part is never removed.
    """
    if not is_marked(root):
        return []
    found = _part_names(root.join(PARTS), suffix="") | _part_names(root.join(MANIFESTS), suffix=".parquet")
    claims: list[tuple[str, PartLease]] = []
    removed = []
    try:
        for part_id in sorted(found - catalog.part_ids - catalog.replaced - keep):  # replaced: vacuum's
            claim = PartLease(root, part_id)
            try:
                claim.acquire(grace_s=grace_s)
            except DatasetBusyError:
                continue  # a live writer's part
            except DatasetError as e:  # an unreadable lease: left alone, for a person to look at
                log.warning("orphan cleanup left part %s alone: %s", part_id, e)
                continue
            claim.start_heartbeat()  # removing a large part can outlast a ttl
            claims.append((part_id, claim))
        latest = load_catalog(root) if claims else None  # read after the claims
        committed = latest.part_ids | latest.replaced if latest else set()
        for part_id, _ in claims:
            if part_id not in committed:
                _remove_part(root, part_id)
                removed.append(part_id)
    finally:
        for _, claim in claims:
            claim.release()
    if removed:
        log.info("removed %d uncommitted part(s) left by interrupted runs", len(removed))
    return removed


def _part_names(folder: Location, *, suffix: str) -> set[str]:
    """Part ids named by the entries of ``folder`` (``<part><suffix>``), listed afresh."""
    fs = folder.fs
    try:
        entries = fs.ls(folder.path, detail=False, refresh=True)  # other writers' objects too
    except FileNotFoundError:
        return set()
    names = [str(p).rstrip("/").rsplit("/", 1)[-1] for p in entries]
    return {
        n.removesuffix(suffix) for n in names if n.endswith(suffix) and is_part_id(n.removesuffix(suffix))
    }


def _remove_part(root: Location, part_id: str) -> None:
    """Delete an uncommitted part's folder and manifest (whichever exist)."""
    folder, manifest = root.join(PARTS, part_id), root.join(MANIFESTS, f"{part_id}.parquet")
    folder.fs.invalidate_cache(folder.path)
    if folder.fs.exists(folder.path):
        folder.fs.rm(folder.path, recursive=True)
    try:
        manifest.fs.rm_file(manifest.path)
    except FileNotFoundError:
        pass
