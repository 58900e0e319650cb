"""Compaction: rewrite the small shards of committed parts into large shards, as one commit per run of parts.

Ingest tasks write their own shards, so archives of many short series give many small shards (the
demo's dataset: 18 shards for 270 samples). A compaction reads the shards of a run of consecutive
small parts (commit order, one archive), copies every sample's MDS bytes unchanged, in order, into
new shards of about ``target_shard_bytes`` (before compression, as ingest's ``shards.size_limit``)
with :class:`radforge.sharder.mds.ShardWriter`, and commits them as a new part that replaces the
old ones in one log entry::

    {"seq", "op": "compact", "commit_id", "at": <Unix time>, "replaces": [part ids],
     "replaced_shards": n, "total_shards", "part": <the new part's catalog entry>}

Folding it (:class:`radforge.sharder.commit_log.LogState`) puts the new part where the first
replaced part was, so the dataset's sample order is unchanged; the new part's manifest is the
replaced manifests laid end to end, so the series they claimed stay claimed. The replaced parts'
files stay for readers that opened an older version until ``vacuum`` removes them
(:mod:`radforge.sharder.vacuum`).

Exactly once and crash-safe:

- the new part is written under a fresh random id while its writer holds the part's lease (the
  liveness record of :class:`radforge.sharder.lease.PartLease`, taken before its first file):
  orphan cleanup leaves it alone while the writer lives, and the next ingest or compaction removes
  it once the writer is gone (its pid is dead on this node, or its heartbeat is old);
- every input shard is checked against its index hashes, and the written shards are read back and
  compared with the input (sample count and a digest of every sample's bytes, in order) before the
  commit;
- the commit is the exclusive create of the next log entry. A writer that lost the race reads the
  entries it lost to: if none of them touches the replaced parts (a concurrent ingest's new part,
  say) it retries on top (rebase); if one replaced or re-committed any of them, this compaction is
  dropped (its files removed) and the run plans again from the new log state, so a part is never
  compacted twice and a concurrent commit is never lost.
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
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from radforge.sharder.catalog import MANIFESTS, PARTS, DatasetError
from radforge.sharder.commit_log import (
    CHECKPOINT_EVERY,
    COMMIT_ATTEMPTS,
    COMPACT,
    ROOT_INDEX_MAX_SHARDS,
    LogState,
    _is_ours,
    entry_loc,
    has_log,
    part_index_path,
    part_shards,
    read_state,
    read_tail_from,
    refresh_root_index,
    write_checkpoint,
)
from radforge.sharder.lease import PartLease
from radforge.sharder.mds import SampleEncoder, ShardWriter, file_hash
from radforge.sharder.schema import COLUMNS, SCHEMA_VERSION
from radforge.sharder.shard_table import write_part_table
from radforge.storage import Location, create_exclusive, resolve

log = logging.getLogger(__name__)

MIB = 1 << 20
DEFAULT_TARGET_SHARD_MB = 256  # training reads large shards: fewer objects, fewer index entries
PLAN_ATTEMPTS = 8  # re-plans after losing parts to a concurrent compaction before giving up


class CompactionError(DatasetError):
    """A shard cannot be compacted (corrupt, or in another sample format); the message names it."""


class CompactionConflict(DatasetError):
    """A concurrent commit replaced or re-committed a part this compaction replaces: plan again."""


# ---- planning (pure) ----------------------------------------------------------------------------
def is_small(part: dict[str, Any], *, min_shard_bytes: int) -> bool:
    """Whether ``part``'s shards are small: its mean stored (compressed) shard size is below the bound.

    Read from the catalog alone (bytes / shards), so planning never opens a part index.
    """
    shards = int(part.get("shards", 0))
    return shards > 0 and int(part.get("bytes", 0)) / shards < min_shard_bytes


def plan_groups(parts: list[dict[str, Any]], *, min_shard_bytes: int) -> list[list[dict[str, Any]]]:
    """Runs of consecutive small parts (commit order) of one archive and schema, worth rewriting.

    Only consecutive parts are merged, so the new part can take their place without changing the
    dataset's sample order; a run of a single one-shard part is left alone (nothing to gain).
    """
    groups: list[list[dict[str, Any]]] = []
    run: list[dict[str, Any]] = []

    def close() -> None:
        if sum(int(p["shards"]) for p in run) > 1:
            groups.append(list(run))
        run.clear()

    for part in parts:
        if not is_small(part, min_shard_bytes=min_shard_bytes):
            close()
            continue
        if run and _group_key(run[0]) != _group_key(part):
            close()
        run.append(part)
    close()
    return groups


def _group_key(part: dict[str, Any]) -> tuple[str, str]:
    """Parts merged into one must share what the catalog records once per part."""
    return str(part.get("archive_id")), str(part.get("schema_version", SCHEMA_VERSION))


# ---- removing parts ---------------------------------------------------------------------------------
def remove_part_files(root: Location, part_id: str) -> None:
    """Delete ``parts/<id>/`` and ``manifests/<id>.parquet`` (whichever exist), as orphan cleanup does."""
    from radforge.sharder.datasink import _remove_part

    _remove_part(root, part_id)


def remove_dead_writers(root: Location) -> list[str]:
    """Remove uncommitted parts whose writer is gone (an ingest or a compaction killed before its commit).

    :func:`radforge.sharder.datasink.remove_orphans`: only parts whose part lease nobody live holds,
    never a committed or a replaced part.
    """
    from radforge.sharder.catalog import load_catalog
    from radforge.sharder.datasink import remove_orphans

    return remove_orphans(root, load_catalog(root), keep=set())


# ---- reading the samples of committed shards --------------------------------------------------------
def _check_hashes(data: bytes, info: dict[str, Any], where: str) -> None:
    for algo, expected in (info.get("hashes") or {}).items():
        if file_hash(algo, data) != expected:
            raise CompactionError(f"{where}: {algo} hash differs from its index entry (corrupt shard)")


def _decompress(label: str, data: bytes, raw_size: int) -> bytes:
    if label.split(":")[0] == "zstd":
        import zstandard

        return bytes(zstandard.ZstdDecompressor().decompress(data, max_output_size=raw_size))
    from streaming.base.compression import decompress

    return bytes(decompress(label, data))


def shard_samples(root: Location, shard: dict[str, Any], encoder: SampleEncoder) -> list[memoryview]:
    """The MDS bytes of every sample of one shard (basename relative to ``root``), hashes checked."""
    zip_info, raw_info = shard.get("zip_data"), shard["raw_data"]
    stored = zip_info or raw_info
    where = f"{root.uri}/{stored['basename']}"
    if shard.get("column_names") != encoder.names or shard.get("column_encodings") != encoder.encodings:
        raise CompactionError(
            f"{where}: columns {shard.get('column_names')} / {shard.get('column_encodings')} differ "
            f"from this radforge's schema ({encoder.names} / {encoder.encodings}); re-ingest or compact "
            "with the radforge that wrote it"
        )
    loc = root.join(stored["basename"])
    data = bytes(loc.fs.cat_file(loc.path))
    _check_hashes(data, stored, where)
    if zip_info:
        data = _decompress(str(shard["compression"]), data, int(raw_info["bytes"]))
        _check_hashes(data, raw_info, where + " (decompressed)")
    n = int(np.frombuffer(data, np.uint32, 1)[0])
    if n != int(shard["samples"]):
        raise CompactionError(f"{where}: holds {n} samples, its index entry says {shard['samples']}")
    offsets = np.frombuffer(data, np.uint32, n + 1, offset=4)
    view = memoryview(data)
    return [view[int(a) : int(b)] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]


# ---- one run -----------------------------------------------------------------------------------------
@dataclass
class CompactionSummary:
    """What a compaction run did (counts and ids only)."""

    dataset_uri: str
    shards_before: int = 0
    shards_after: int = 0
    parts_before: int = 0
    parts_after: int = 0
    compactions: list[dict[str, Any]] = field(default_factory=list)  # one per new part
    cleaned: list[str] = field(default_factory=list)  # dead compactions' outputs removed first
    conflicts: int = 0  # compactions dropped because a concurrent commit took their parts
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Compactor:
    """One compaction run over the dataset at ``uri`` (:meth:`run`).

    ``target_shard_bytes`` is the size new shards fill up to before compression (as ingest's
    ``shards.size_limit``); parts whose mean stored shard size is below ``min_shard_bytes``
    (default: a quarter of the target) are rewritten. ``compression`` and ``hashes`` default to
    those of the first shard of each run of parts. Tests subclass it to inject faults at its steps
    (:meth:`write`, :meth:`commit`).
    """

    def __init__(
        self,
        uri: str,
        *,
        target_shard_bytes: int = DEFAULT_TARGET_SHARD_MB * MIB,
        min_shard_bytes: int | None = None,
        compression: str | None = None,
        hashes: list[str] | None = None,
        root_index_max_shards: int = ROOT_INDEX_MAX_SHARDS,
    ) -> None:
        if target_shard_bytes < 1:
            raise ValueError(f"target_shard_bytes must be positive, got {target_shard_bytes}")
        self.root = resolve(uri)
        self.target_shard_bytes = int(target_shard_bytes)
        self.min_shard_bytes = int(
            min_shard_bytes if min_shard_bytes is not None else target_shard_bytes // 4
        )
        self.compression = compression
        self.hashes = hashes
        self.root_index_max_shards = root_index_max_shards
        self.encoder = SampleEncoder(COLUMNS)

    def run(self) -> CompactionSummary:
        """Compact every run of small parts; each becomes one commit. Returns what was done."""
        t0 = time.perf_counter()
        root = self.root
        if not has_log(root):
            raise DatasetError(
                f"{root.uri} has no commit log (an empty dataset, or one written before the log: "
                "its next ingest upgrades it); nothing to compact"
            )
        state = read_state(root)
        summary = CompactionSummary(root.uri, shards_before=state.total_shards, parts_before=len(state.parts))
        summary.cleaned = remove_dead_writers(root)
        for _ in range(PLAN_ATTEMPTS):
            groups = plan_groups(list(state.parts.values()), min_shard_bytes=self.min_shard_bytes)
            try:
                for group in groups:
                    summary.compactions.append(self._compact(state, group))
                break
            except CompactionConflict as e:
                summary.conflicts += 1
                log.info("compaction of %s planned again: %s", root.uri, e)
                state = read_state(root)
        else:
            raise DatasetError(f"{root.uri}: gave up compacting after {PLAN_ATTEMPTS} conflicting commits")
        summary.shards_after, summary.parts_after = state.total_shards, len(state.parts)
        summary.seconds = round(time.perf_counter() - t0, 3)
        return summary

    def _compact(self, state: LogState, group: list[dict[str, Any]]) -> dict[str, Any]:
        """Write and commit one run of parts; on any failure before the commit its files are removed."""
        part_id = f"p-{uuid.uuid4().hex[:16]}"  # fresh: two compactions of one run never share a folder
        committed = False
        try:
            with PartLease(self.root, part_id):  # orphan cleanup spares a part whose writer is live
                part = self.write(group, part_id)
                seq = self.commit(state, group, part)
                committed = True
        finally:
            if not committed:
                remove_part_files(self.root, part_id)
        log.info("compacted %d parts of %s into %s (log entry %d)", len(group), self.root.uri, part_id, seq)
        return {
            "part": part_id,
            "replaces": [p["id"] for p in group],
            "shards_before": sum(int(p["shards"]) for p in group),
            "shards_after": int(part["shards"]),
            "samples": int(part["samples"]),
            "log_seq": seq,
        }

    # ---- steps (subclassed by tests) ----------------------------------------------------------------
    def write(self, group: list[dict[str, Any]], part_id: str) -> dict[str, Any]:
        """Write the new part's shards, index and manifest (not yet committed); returns its catalog entry."""
        root = self.root
        folder = root.join(PARTS, part_id)
        staging = folder.path if folder.is_local else tempfile.mkdtemp(prefix="radforge-compact-")
        try:
            first = part_shards(root, group[0]["id"])[0]
            writer = ShardWriter(
                staging,
                encoder=self.encoder,
                compression=self.compression if self.compression is not None else first.get("compression"),
                hashes=self.hashes if self.hashes is not None else list(first.get("hashes") or []),
                size_limit=self.target_shard_bytes,
            )
            digest, samples = hashlib.blake2b(), 0
            for part in group:
                for shard in part_shards(root, part["id"]):
                    for sample in shard_samples(root, shard, self.encoder):
                        digest.update(sample)
                        writer.add(sample)
                        samples += 1
            shards = writer.finish()  # also the part's own index.json
            self._check_written(
                folder if folder.is_local else resolve(staging), shards, samples, digest.hexdigest()
            )
            if not folder.is_local:
                names = [(s.get("zip_data") or s["raw_data"])["basename"] for s in shards] + ["index.json"]
                folder.fs.put([os.path.join(staging, n) for n in names], [folder.join(n).path for n in names])
        finally:
            if not folder.is_local:
                shutil.rmtree(staging, ignore_errors=True)
        expected = sum(int(p["samples"]) for p in group)
        if samples != expected:
            raise CompactionError(
                f"{root.uri}: read {samples} samples from parts whose catalog says {expected}"
            )
        self._write_manifest(group, part_id)
        # the part's shard table beside its index, as an ingest's commit writes it: the trainer's
        # loader reads tables, not indexes (radforge.sharder.shard_table)
        write_part_table(root, part_id, [_rooted(shard, part_id) for shard in shards])
        return self._part_entry(group, part_id, shards, samples)

    def _check_written(
        self, staged: Location, shards: list[dict[str, Any]], samples: int, digest: str
    ) -> None:
        """Read the new shards back: same sample count and the same bytes, in order, as the input."""
        check, n = hashlib.blake2b(), 0
        for shard in shards:
            for sample in shard_samples(staged, shard, self.encoder):
                check.update(sample)
                n += 1
        if n != samples or check.hexdigest() != digest:
            raise CompactionError(f"{self.root.uri}: compacted shards read back differently from their input")

    def _write_manifest(self, group: list[dict[str, Any]], part_id: str) -> None:
        """The replaced parts' manifests laid end to end: the series they claimed stay claimed."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        tables = []
        for part in group:
            loc = self.root.join(part["manifest"])
            with loc.fs.open(loc.path, "rb") as f:
                tables.append(pq.read_table(f))
        out = self.root.join(MANIFESTS, f"{part_id}.parquet")
        if out.is_local:
            os.makedirs(os.path.dirname(out.path), exist_ok=True)
        with out.fs.open(out.path, "wb") as f:
            pq.write_table(pa.concat_tables(tables, promote_options="default"), f)

    def _part_entry(
        self, group: list[dict[str, Any]], part_id: str, shards: list[dict[str, Any]], samples: int
    ) -> dict[str, Any]:
        first = group[0]
        same_config = all(p.get("config_hash") == first.get("config_hash") for p in group)
        counts: Counter[str] = Counter()
        for p in group:
            counts.update(p.get("counts", {}))
        entry: dict[str, Any] = {
            "id": part_id,
            "archive_id": first.get("archive_id"),
            "config_hash": first.get("config_hash") if same_config else None,
            "committed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "samples": samples,
            "shards": len(shards),
            "bytes": sum((s.get("zip_data") or s["raw_data"])["bytes"] for s in shards),
            "series": sum(int(p.get("series", 0)) for p in group),
            "series_ingested": sum(int(p.get("series_ingested", 0)) for p in group),
            "manifest": f"{MANIFESTS}/{part_id}.parquet",
            "index": part_index_path(part_id),
            "counts": dict(sorted(counts.items())),
            "schema_version": first.get("schema_version", SCHEMA_VERSION),
            "compacted_from": [p["id"] for p in group],
        }
        if same_config and "config" in first:
            entry["config"] = first["config"]
        return entry

    def commit(self, state: LogState, group: list[dict[str, Any]], part: dict[str, Any]) -> int:
        """Commit ``part`` as the next log entry replacing ``group``, folded into ``state``; returns its seq.

        Entries that won the race are folded in and the commit retried on top, unless one of them
        replaced or re-committed a part of ``group`` (:class:`CompactionConflict`).
        """
        root = self.root
        replaces = [p["id"] for p in group]
        gone = set(replaces)
        replaced_shards = sum(int(p["shards"]) for p in group)
        commit_id = uuid.uuid4().hex
        for _ in range(COMMIT_ATTEMPTS):
            seq = state.seq + 1
            entry: dict[str, Any] = {
                "seq": seq,
                "op": COMPACT,
                "commit_id": commit_id,
                "at": time.time(),
                "replaces": replaces,
                "replaced_shards": replaced_shards,
                "total_shards": state.total_shards + int(part["shards"]) - replaced_shards,
                "part": part,
            }
            try:
                create_exclusive(entry_loc(root, seq), json.dumps(entry, sort_keys=True).encode())
                if _is_ours(root, seq, commit_id):
                    break
                raise FileExistsError(entry_loc(root, seq).uri)  # a store whose create is checked, not atomic
            except FileExistsError:  # another writer took seq: rebase on what it committed, or give up
                _, lost = read_tail_from(root, seq)
                if lost and lost[0].get("commit_id") == commit_id:
                    entry = lost[0]  # our own put, retried by the client after its answer was lost
                    break
                for e in lost:
                    if _conflicts(e, gone):
                        raise CompactionConflict(
                            f"log entry {e['seq']} ({e.get('op', 'add_part')}) committed or replaced "
                            "part(s) this compaction replaces"
                        ) from None
                    state.fold(e)
        else:
            raise DatasetError(
                f"{root.uri}: gave up committing a compaction after {COMMIT_ATTEMPTS} lost races"
            )
        state.fold(entry)
        if seq % CHECKPOINT_EVERY == 0:
            write_checkpoint(root, seq)
        refresh_root_index(
            root, seq=seq, total_shards=int(entry["total_shards"]), max_shards=self.root_index_max_shards
        )
        return seq


def _conflicts(entry: dict[str, Any], parts: set[str]) -> bool:
    """Whether a concurrent log entry re-committed or replaced one of ``parts``."""
    if entry["part"]["id"] in parts:
        return True
    return entry.get("op") == COMPACT and bool(parts & set(entry["replaces"]))


def compact_dataset(
    uri: str,
    *,
    target_shard_bytes: int = DEFAULT_TARGET_SHARD_MB * MIB,
    min_shard_bytes: int | None = None,
    compression: str | None = None,
    root_index_max_shards: int = ROOT_INDEX_MAX_SHARDS,
) -> CompactionSummary:
    """Compact the dataset at ``uri`` (see :class:`Compactor`); ``radforge dataset compact``."""
    return Compactor(
        uri,
        target_shard_bytes=target_shard_bytes,
        min_shard_bytes=min_shard_bytes,
        compression=compression,
        root_index_max_shards=root_index_max_shards,
    ).run()


def _rooted(shard: dict[str, Any], part_id: str) -> dict[str, Any]:
    """A shard entry of a part's own index with its files' basenames relative to the dataset root."""
    entry = json.loads(json.dumps(shard))
    for kind in ("raw_data", "zip_data"):
        if entry.get(kind):
            entry[kind]["basename"] = f"{PARTS}/{part_id}/{entry[kind]['basename']}"
    return entry
