"""The dataset's commit log: one small immutable record per commit, so a commit costs the same at any size.

Layout (see docs/data-format.md)::

    _log/00000000000000000001.json              one entry per commit (the part's catalog entry)
    _log/00000000000000000100.checkpoint.json   every CHECKPOINT_EVERY entries: the folded state
    _log/_last_checkpoint.json                  a hint: the newest checkpoint's seq (may lag)
    parts/<part>/index.json                     the part's own stock MDS index (its shards)

A commit appends entry ``head + 1`` with an exclusive create (``link`` locally, ``If-None-Match: *``
on S3): of several writers racing for one sequence number exactly one wins; the others read the
entries they lost to and retry on top (optimistic concurrency). A writer that planned against
log head ``base_seq`` checks every entry committed after it: if one of them ingested a series this
writer ingested too, the commit is refused (:class:`SeriesClaimedError`), nothing of it becomes
visible, and the writer re-plans against the log tail (its series now count as already ingested).

A commit reads only the entries since the newest checkpoint (at most about CHECKPOINT_EVERY small
objects) and writes the part index, the manifest and one entry: its cost does not depend on the
dataset's size. Every entry carries the dataset's shard count after it (``total_shards``), so the
commit knows without reading the catalog whether the dataset is small enough for a root
``index.json`` (see :func:`refresh_root_index`). The writer of entry ``k * CHECKPOINT_EVERY`` also
writes checkpoint ``k * CHECKPOINT_EVERY`` (O(parts), not O(shards): parts are listed, shards stay
in the part indexes). Reading the catalog is the newest checkpoint plus the entries after it.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from radforge.sharder.catalog import INDEX, PARTS, DatasetError
from radforge.storage import (
    ConditionFailed,
    Location,
    create_exclusive,
    read_versioned,
    replace_if_match,
    write_bytes_atomic,
)

log = logging.getLogger(__name__)

LOG = "_log"
SEQ_DIGITS = 20
CHECKPOINT_EVERY = 100  # entries between checkpoints: a reader reads at most about this many entries
ROOT_INDEX_MAX_SHARDS = 10_000  # above this many shards no root index.json is kept (export-index makes one)
LAST_CHECKPOINT = "_last_checkpoint.json"
COMPACT = "compact"  # the op of an entry that replaces parts by one compacted part (sharder/compact.py)
COMMIT_ATTEMPTS = 1000  # lost races before a commit gives up (each loss means another writer committed)
ROOT_INDEX_ATTEMPTS = 8  # conditional replaces of the root index lost to other writers before giving up


class SeriesClaimedError(DatasetError):
    """A concurrent writer committed series this part ingested too: re-plan against the log tail."""


def entry_loc(root: Location, seq: int) -> Location:
    return root.join(LOG, f"{seq:0{SEQ_DIGITS}d}.json")


def checkpoint_loc(root: Location, seq: int) -> Location:
    return root.join(LOG, f"{seq:0{SEQ_DIGITS}d}.checkpoint.json")


def part_index_path(part_id: str) -> str:
    """The part's own MDS index, relative to the dataset root."""
    return f"{PARTS}/{part_id}/{INDEX}"


@dataclass
class LogState:
    """The folded log up to entry ``seq``: committed parts by id (commit order; a re-commit moves last).

    ``replaced`` records the parts a compaction replaced (id -> the replacing part, entry and Unix
    time): their files stay for readers of older versions until ``vacuum`` removes them.
    """

    seq: int = 0
    parts: dict[str, dict[str, Any]] = field(default_factory=dict)
    total_shards: int = 0
    replaced: dict[str, dict[str, Any]] = field(default_factory=dict)

    def fold(self, entry: dict[str, Any]) -> None:
        part = entry["part"]
        if entry.get("op") == COMPACT:
            self._fold_compact(entry)
            return
        old = self.parts.pop(part["id"], None)
        self.parts[part["id"]] = part
        self.replaced.pop(part["id"], None)
        self.total_shards += int(part["shards"]) - (int(old["shards"]) if old else 0)
        self.seq = int(entry["seq"])

    def _fold_compact(self, entry: dict[str, Any]) -> None:
        """The new part takes the place of the first part it replaces; the replaced ones leave."""
        part, gone = entry["part"], set(entry["replaces"])
        ids = list(self.parts)
        at = next((i for i, pid in enumerate(ids) if pid in gone), len(ids))  # tail-only state: none known
        order = [pid for pid in ids[:at] if pid not in gone] + [part["id"]]
        order += [pid for pid in ids[at:] if pid not in gone]
        parts = {**self.parts, part["id"]: part}
        self.parts = {pid: parts[pid] for pid in order}
        for pid in entry["replaces"]:
            self.replaced[pid] = {"by": part["id"], "seq": int(entry["seq"]), "at": float(entry["at"])}
        self.total_shards += int(part["shards"]) - int(entry["replaced_shards"])
        self.seq = int(entry["seq"])

    def to_checkpoint(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "total_shards": self.total_shards,
            "parts": list(self.parts.values()),
            "replaced": self.replaced,
        }


def _read(loc: Location) -> dict[str, Any] | None:
    got = read_versioned(loc)
    if got is None:
        return None
    try:
        obj = json.loads(got[0])
    except ValueError:
        raise DatasetError(f"{loc.uri} is not valid JSON (a log object is never partly written)") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{loc.uri} is not a radforge log object")
    return obj


def has_log(root: Location) -> bool:
    """Whether the dataset at ``root`` has a commit log (else it is in the root-index layout, or empty)."""
    return (
        read_versioned(root.join(LOG, LAST_CHECKPOINT)) is not None
        or read_versioned(checkpoint_loc(root, 0)) is not None
        or read_versioned(entry_loc(root, 1)) is not None
    )


def _newest_checkpoint(root: Location, upto: int | None) -> tuple[int | None, dict[str, Any] | None]:
    """The newest checkpoint's seq (at or before ``upto``) and the hint when it names that checkpoint.

    The hint says where to start; when it is lost, a listing of ``_log`` finds the checkpoints.
    """
    hint = _read(root.join(LOG, LAST_CHECKPOINT))
    if hint is not None and (upto is None or int(hint["seq"]) <= upto):
        return int(hint["seq"]), hint
    logdir = root.join(LOG)
    try:
        names = [str(p).rsplit("/", 1)[-1] for p in logdir.fs.ls(logdir.path, detail=False, refresh=True)]
    except FileNotFoundError:
        return None, None
    seqs = [int(n.split(".")[0]) for n in names if n.endswith(".checkpoint.json")]
    seqs = [s for s in seqs if upto is None or s <= upto]
    return (max(seqs) if seqs else None), None


def read_tail(
    root: Location, *, full: bool, upto: int | None = None
) -> tuple[LogState, list[dict[str, Any]]]:
    """The state at the newest checkpoint (its parts only if ``full``) and the entries after it.

    Without ``full`` the checkpoint's seq and shard count come from the hint, so a commit never
    reads the (O(parts)) checkpoint itself. ``upto`` stops after that entry.
    """
    state = LogState()
    cp, hint = _newest_checkpoint(root, upto)
    if cp is not None:
        if not full and hint is not None:
            state.seq, state.total_shards = cp, int(hint["total_shards"])
        else:
            obj = _read(checkpoint_loc(root, cp))
            if obj is None:
                raise DatasetError(f"{checkpoint_loc(root, cp).uri} is missing (named by the log's hint)")
            state.seq, state.total_shards = int(obj["seq"]), int(obj["total_shards"])
            state.parts = {p["id"]: p for p in obj["parts"]}
            state.replaced = dict(obj.get("replaced", {}))
    entries = []
    while upto is None or state.seq < upto:
        entry = _read(entry_loc(root, state.seq + 1))
        if entry is None:
            break
        entries.append(entry)
        state.fold(entry)
    return state, entries


def read_state(root: Location, *, upto: int | None = None) -> LogState:
    """The committed state: the newest checkpoint (at or before ``upto``) folded with the entries after it."""
    return read_tail(root, full=True, upto=upto)[0]


def append_part(
    root: Location,
    part: dict[str, Any],
    *,
    base_seq: int | None = None,
    ingested: frozenset[str] = frozenset(),
    root_index_max_shards: int = ROOT_INDEX_MAX_SHARDS,
) -> int:
    """Commit ``part`` (its index and manifest already written) as the next log entry; returns its seq.

    ``base_seq`` is the log head the writer planned against and ``ingested`` the series keys this
    part ingested: an entry committed after ``base_seq`` that ingested any of them (or committed
    the same part) refuses this commit with :class:`SeriesClaimedError`.
    """
    commit_id = uuid.uuid4().hex  # tells our own entry from another writer's after an ambiguous put
    state, tail = read_tail(root, full=False)
    if state.seq == 0 and not tail:
        state = _upgrade(root)  # a dataset in the root-index layout: its catalog becomes checkpoint 0
    if base_seq is not None:
        _check_claims(root, [e for e in tail if int(e["seq"]) > base_seq], part["id"], ingested)
    for _ in range(COMMIT_ATTEMPTS):
        seq = state.seq + 1
        # A re-commit of a part replaces its shards. Only the tail is known here: a part re-committed
        # from before the checkpoint is counted twice until the next checkpoint recounts (the count
        # only decides whether a root index is kept).
        same = [e["part"] for e in tail if e["part"]["id"] == part["id"]]
        replaced = int(same[-1]["shards"]) if same else 0
        total = state.total_shards + int(part["shards"]) - replaced
        entry = {"seq": seq, "op": "add_part", "commit_id": commit_id, "total_shards": total, "part": part}
        try:
            create_exclusive(entry_loc(root, seq), json.dumps(entry, sort_keys=True).encode())
            if _is_ours(root, seq, commit_id):
                break
            raise FileExistsError(entry_loc(root, seq).uri)  # a store whose create is checked, not atomic
        except FileExistsError:  # another writer took seq: read what it committed, retry on top
            _, lost = read_tail_from(root, seq)
            if lost and lost[0].get("commit_id") == commit_id:
                break  # our own put, retried by the client after its answer was lost: it did commit
            _check_claims(root, lost, part["id"], ingested)
            for e in lost:
                state.fold(e)
            tail.extend(lost)
    else:
        raise DatasetError(f"{root.uri}: gave up committing after {COMMIT_ATTEMPTS} lost races")
    if seq % CHECKPOINT_EVERY == 0:
        write_checkpoint(root, seq)
    refresh_root_index(root, seq=seq, total_shards=total, max_shards=root_index_max_shards)
    return seq


def _is_ours(root: Location, seq: int, commit_id: str) -> bool:
    """Whether entry ``seq`` reads back as ours.

    On local disks and S3 the exclusive create is atomic and this always holds; on stores where it
    is checked, not atomic (moto under concurrent requests, fsspec stores without conditional
    writes) two creates can both succeed and the later one wins: an earlier writer that reads back
    the other's entry retries on top, as if it had lost the race. This narrows the window there;
    it does not close it (only an atomic conditional create does).
    """
    entry = _read(entry_loc(root, seq))
    return entry is not None and entry.get("commit_id") == commit_id


def read_tail_from(root: Location, seq: int) -> tuple[int, list[dict[str, Any]]]:
    """Entries ``seq``, ``seq + 1``, ... as far as they exist; returns (last seq, entries)."""
    entries = []
    while (entry := _read(entry_loc(root, seq))) is not None:
        entries.append(entry)
        seq += 1
    return seq - 1, entries


def _check_claims(
    root: Location, entries: list[dict[str, Any]], part_id: str, ingested: frozenset[str]
) -> None:
    """Refuse the commit of ``part_id`` if one of ``entries`` committed it or ingested its series."""
    import pyarrow.parquet as pq

    for e in entries:
        other = e["part"]
        if e.get("op") == COMPACT:
            continue  # a compaction rewrites committed parts: it claims no series anew
        if other["id"] == part_id:
            raise SeriesClaimedError(
                f"part {part_id} was committed by another writer meanwhile (log entry {e['seq']})"
            )
        if not ingested or not int(other.get("series_ingested", 0)):
            continue
        loc = root.join(other["manifest"])
        with loc.fs.open(loc.path, "rb") as f:
            table = pq.read_table(f, columns=["series_key", "status"]).to_pydict()
        claimed = {k for k, s in zip(table["series_key"], table["status"], strict=True) if s == "ingested"}
        both = claimed & ingested
        if both:
            raise SeriesClaimedError(
                f"{len(both)} series of part {part_id} were committed first by part {other['id']} "
                f"(log entry {e['seq']}); nothing of {part_id} was committed: "
                "re-plan against the log and retry"
            )


def _create_json(loc: Location, obj: dict[str, Any]) -> None:
    """Create an immutable log object unless it exists (whoever wrote it first wrote the same)."""
    try:
        create_exclusive(loc, json.dumps(obj, sort_keys=True).encode())
    except FileExistsError:
        pass


def write_checkpoint(root: Location, seq: int) -> None:
    """Fold the log up to ``seq`` into checkpoint ``seq`` and point the hint at it (idempotent)."""
    state = read_state(root, upto=seq)
    if state.seq != seq:
        raise DatasetError(f"{root.uri}: log entry {seq} is missing; cannot checkpoint it")
    _create_json(checkpoint_loc(root, seq), state.to_checkpoint())  # racing writers write the same fold
    hint = _read(root.join(LOG, LAST_CHECKPOINT))
    if hint is None or int(hint["seq"]) < seq:  # a lagging hint costs readers time, never correctness
        data = json.dumps({"seq": seq, "total_shards": state.total_shards}).encode()
        write_bytes_atomic(root.join(LOG, LAST_CHECKPOINT), data)


def _upgrade(root: Location) -> LogState:
    """Turn a dataset in the root-index layout into checkpoint 0 of a log (first commit with a log).

    Parts whose folder has no index of its own (older radforge) get one from the root index.
    """
    from radforge.sharder.catalog import load_root_index

    legacy = load_root_index(root)
    state = LogState()
    if legacy is None or not legacy.parts:
        return state
    by_part: dict[str, list[dict[str, Any]]] = {}
    for shard in legacy.shards:
        pid = shard["raw_data"]["basename"].split("/")[1]
        by_part.setdefault(pid, []).append(shard)
    for p in legacy.parts:
        if read_versioned(root.join(part_index_path(p["id"]))) is None:
            write_part_index(root, p["id"], by_part.get(p["id"], []))
        n = len(by_part.get(p["id"], []))
        state.parts[p["id"]] = {**p, "index": part_index_path(p["id"]), "shards": n}
    state.total_shards = sum(int(p["shards"]) for p in state.parts.values())
    _create_json(checkpoint_loc(root, 0), state.to_checkpoint())  # racing upgraders write the same fold
    write_bytes_atomic(
        root.join(LOG, LAST_CHECKPOINT), json.dumps({"seq": 0, "total_shards": state.total_shards}).encode()
    )
    log.info("dataset %s upgraded to a commit log (%d parts in checkpoint 0)", root.uri, len(state.parts))
    return state


def write_part_index(root: Location, part_id: str, shards: list[dict[str, Any]]) -> None:
    """An MDS index inside ``parts/<id>/`` (basenames relative to it): the part is a stock dataset."""
    prefix = f"{PARTS}/{part_id}/"
    local = []
    for shard in shards:
        entry = json.loads(json.dumps(shard))
        for kind in ("raw_data", "zip_data"):
            if entry.get(kind):
                entry[kind]["basename"] = entry[kind]["basename"].removeprefix(prefix)
        local.append(entry)
    data = json.dumps({"version": 2, "shards": local}, sort_keys=True).encode()
    write_bytes_atomic(root.join(part_index_path(part_id)), data)
    from radforge.sharder.shard_table import write_part_table  # the same shards as arrays, for the loader

    write_part_table(root, part_id, shards)


def part_shards(root: Location, part_id: str) -> list[dict[str, Any]]:
    """The shard entries of one committed part, basenames relative to the dataset root."""
    loc = root.join(part_index_path(part_id))
    got = read_versioned(loc)
    if got is None:
        raise DatasetError(f"part {part_id} of {root.uri} has no {INDEX} (its folder was removed?)")
    prefix = f"{PARTS}/{part_id}/"
    shards = json.loads(got[0])["shards"]
    for shard in shards:
        for kind in ("raw_data", "zip_data"):
            if shard.get(kind):
                shard[kind]["basename"] = prefix + shard[kind]["basename"]
    return list(shards)


def root_index(root: Location, state: LogState) -> dict[str, Any]:
    """The stock MDS root index of ``state``: every part's shards, plus the radforge catalog section."""
    from radforge.sharder.schema import SCHEMA_VERSION

    shards = [s for pid in state.parts for s in part_shards(root, pid)]
    return {
        "version": 2,
        "shards": shards,
        "radforge": {
            "schema_version": SCHEMA_VERSION,
            "parts": list(state.parts.values()),
            "log_seq": state.seq,
        },
    }


def refresh_root_index(root: Location, *, seq: int, total_shards: int, max_shards: int) -> None:
    """Keep the root ``index.json`` (for stock readers) at log entry ``seq`` or later, or remove it.

    At most ``max_shards`` shards, the root index is rewritten from the log (O(shards), bounded by
    the threshold); it is only replaced by a newer state (its ``log_seq``), so a slow writer never
    puts an older view back. Above the threshold it is removed: a stale root index would hide
    parts from stock readers; ``radforge dataset export-index`` writes one on demand.
    """
    loc = root.join(INDEX)
    if total_shards > max_shards:
        if read_versioned(loc) is not None:
            try:
                loc.fs.rm_file(loc.path)
            except FileNotFoundError:  # another writer removed it first
                return
            log.info("dataset %s: %d shards (> %d), root index removed", root.uri, total_shards, max_shards)
        return
    state = read_state(root)
    data = json.dumps(root_index(root, state), sort_keys=True).encode()
    for _ in range(ROOT_INDEX_ATTEMPTS):
        current = read_versioned(loc)
        try:
            if current is None:
                create_exclusive(loc, data)
                return
            if int(json.loads(current[0]).get("radforge", {}).get("log_seq", -1)) >= state.seq:
                return  # a newer (or the same) state is already there
            replace_if_match(loc, data, current[1])
            return
        except (FileExistsError, ConditionFailed):
            continue  # another writer replaced it meanwhile: compare again
    log.warning("root %s of %s kept changing; left to the other writers", INDEX, root.uri)


def export_index(root: Location, out: Location | None = None) -> tuple[Location, int]:
    """Write the dataset's whole root MDS index (for a stock reader) to ``out`` (default: the root's).

    Shard paths are relative to the dataset root, so a stock ``StreamingDataset(local=root)`` reads
    the index at the root; elsewhere it is a copy to place there. Any size (O(shards) once, on
    demand); a commit above the threshold removes the root copy again, since it would go stale.
    Returns the location written and its shard count.
    """
    from radforge.sharder.catalog import load_catalog

    catalog = load_catalog(root, must_exist=True)
    target = out if out is not None else root.join(INDEX)
    index = catalog.to_index()
    write_bytes_atomic(target, json.dumps(index, sort_keys=True).encode())
    return target, len(index["shards"])
