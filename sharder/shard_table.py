"""The shard table: a dataset version's shards as a few flat arrays, memory-mapped and shared per node.

A reader of a dataset of millions of shards needs, per shard, its path, sample count, sizes and
format, and nothing per sample. Parsing every part's ``index.json`` into one Python object per
shard (what MosaicML Streaming does) costs minutes and gigabytes per process at that scale; this
module keeps the same facts as numpy arrays in one binary file per dataset version::

    parts/<part>/shards.rft        a part's shards (written with its index.json, or by the first reader)
    _tables/<seq>-<key>.rft        the dataset at log entry ``seq``: its parts' tables laid end to end

A table file is a small JSON header (parts and the rows of each, the distinct MDS shard formats,
array dtypes and offsets) followed by 64-byte-aligned arrays: ``samples``, ``raw_bytes``,
``zip_bytes``, ``format`` (index into the formats), ``raw_hash``/``zip_hash`` (the format's first
hash algorithm, hex) and the raw basenames relative to the dataset root (``path_offsets`` into
``path_blob``; a compressed file is the raw name plus its format's ``zip_suffix``). Its content is a
pure function of the committed log state, so writers that race to create it write the same bytes.

:func:`load_table` opens the table of a dataset's current version with ``mmap``: every rank and
loader process of a node maps the same file, so the operating system's page cache holds it once per
node, and a forked loader worker shares the parent's mapping (nothing to copy, no per-shard objects
for its garbage collector to touch). The first process of a node to need a version builds it, under
a file lock, from the parts' tables (one small file per part; a part without one gets it from its
index once), stores it in the dataset for other nodes when it can write there, and in its local
cache. :class:`ShardFiles` reads samples from a table's shards, opening each shard when first used.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import mmap
import os
import tempfile
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from radforge.sharder.catalog import PARTS, Catalog, DatasetError
from radforge.sharder.mds import _NDARRAY_DTYPE_CODE, _SHAPE_DTYPES
from radforge.storage import Location, read_versioned

log = logging.getLogger(__name__)

TABLES = "_tables"
PART_TABLE = "shards.rft"
MAGIC = b"RFSHARD1"
TABLE_VERSION = 1
ALIGN = 64
FETCH_THREADS = 16  # parallel reads of part tables (object stores answer many small GETs at once)
OPEN_SHARDS = 16  # shard files a process keeps open (an LRU)
FETCH_ATTEMPTS = 4  # a cached shard evicted under us is fetched again, at most this many times
_FORMAT_KEYS = ("version", "format", "compression", "hashes", "size_limit")
_FORMAT_LISTS = ("column_names", "column_encodings", "column_sizes")
_ARRAYS = ("samples", "raw_bytes", "zip_bytes", "format", "path_offsets", "path_blob", "raw_hash", "zip_hash")


@dataclass
class ShardTable:
    """The shards of one dataset version (or one part) as arrays; rows of a part are contiguous.

    ``part_rows[i]:part_rows[i + 1]`` are the rows of ``parts[i]``. Arrays are read-only views of a
    memory-mapped file when opened with :func:`open_table`.
    """

    seq: int
    parts: list[str]
    part_rows: np.ndarray  # int64, len(parts) + 1
    formats: list[dict[str, Any]]
    samples: np.ndarray  # int64 per shard
    raw_bytes: np.ndarray  # int64 per shard
    zip_bytes: np.ndarray  # int64 per shard, 0 when the shard is stored uncompressed
    format: np.ndarray  # int32 per shard, index into ``formats``
    path_offsets: np.ndarray  # int64, shards + 1
    path_blob: np.ndarray  # uint8: raw basenames relative to the dataset root, utf-8
    raw_hash: np.ndarray  # S<n> per shard: hex digest of the format's first hash algorithm ("" if none)
    zip_hash: np.ndarray

    def __len__(self) -> int:
        return len(self.samples)

    def raw_path(self, row: int) -> str:
        """The shard's uncompressed file, relative to the dataset root."""
        return bytes(self.path_blob[self.path_offsets[row] : self.path_offsets[row + 1]]).decode()

    def stored_path(self, row: int) -> str:
        """The file the dataset stores for the shard (its compressed form when compressed)."""
        raw = self.raw_path(row)
        return raw + self.formats[int(self.format[row])]["zip_suffix"] if self.zip_bytes[row] else raw

    def rows_of(self, part_id: str) -> tuple[int, int]:
        """The rows ``[start, stop)`` of one part."""
        try:
            i = self.parts.index(part_id)
        except ValueError:
            raise DatasetError(f"part {part_id!r} is not in this shard table") from None
        return int(self.part_rows[i]), int(self.part_rows[i + 1])

    def entry(self, row: int) -> dict[str, Any]:
        """The stock MDS index entry of one shard (basenames relative to the dataset root)."""
        fmt = dict(self.formats[int(self.format[row])])
        suffix, algo = fmt.pop("zip_suffix"), fmt.pop("hash")

        def info(name: str, size: int, digest: bytes) -> dict[str, Any]:
            return {"basename": name, "bytes": size, "hashes": {algo: digest.decode()} if algo else {}}

        raw = self.raw_path(row)
        zipped = int(self.zip_bytes[row])
        return {
            **fmt,
            "samples": int(self.samples[row]),
            "raw_data": info(raw, int(self.raw_bytes[row]), self.raw_hash[row]),
            "zip_data": info(raw + suffix, zipped, self.zip_hash[row]) if zipped else None,
        }


def _format_of(entry: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The shard's MDS format (what every shard of a writer shares) and its hash algorithm."""
    raw, zipped = entry["raw_data"], entry.get("zip_data")
    suffix = ""
    if zipped:
        if not zipped["basename"].startswith(raw["basename"]):
            raise DatasetError(
                f"shard {raw['basename']}: compressed file {zipped['basename']} is not named after it"
            )
        suffix = zipped["basename"][len(raw["basename"]) :]
    hashes = sorted(entry.get("hashes") or [])
    algo = hashes[0] if hashes else None
    fmt = {k: entry.get(k) for k in _FORMAT_KEYS} | {k: list(entry.get(k) or []) for k in _FORMAT_LISTS}
    return fmt | {"zip_suffix": suffix, "hash": algo}, algo


def table_from_entries(entries: Sequence[dict[str, Any]], *, part_id: str, seq: int = -1) -> ShardTable:
    """The table of one part from its index entries (basenames relative to the dataset root)."""
    n = len(entries)
    samples = np.empty(n, np.int64)
    raw_bytes = np.empty(n, np.int64)
    zip_bytes = np.zeros(n, np.int64)
    fmt_ids = np.empty(n, np.int32)
    names: list[bytes] = []
    raw_hash: list[str] = []
    zip_hash: list[str] = []
    formats: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    last_key: tuple[Any, ...] | None = None
    fid = -1
    for i, e in enumerate(entries):
        raw, zipped = e["raw_data"], e.get("zip_data")
        # one writer's shards share their format: compare a cheap key before building the dict
        key: tuple[Any, ...] = (e.get("compression"), tuple(e.get("column_names") or ()), bool(zipped))
        key += (e.get("size_limit"), tuple(e.get("column_encodings") or ()), tuple(e.get("hashes") or ()))
        if key != last_key:
            fmt, _ = _format_of(e)
            text = json.dumps(fmt, sort_keys=True)
            if text not in seen:
                seen[text] = len(formats)
                formats.append(fmt)
            fid, last_key = seen[text], key
        algo = formats[fid]["hash"]
        samples[i] = e["samples"]
        raw_bytes[i] = raw["bytes"]
        fmt_ids[i] = fid
        names.append(raw["basename"].encode())
        raw_hash.append(raw.get("hashes", {}).get(algo, "") if algo else "")
        if zipped:
            zip_bytes[i] = zipped["bytes"]
            zip_hash.append(zipped.get("hashes", {}).get(algo, "") if algo else "")
        else:
            zip_hash.append("")
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum([len(b) for b in names], out=offsets[1:])
    return ShardTable(
        seq=seq,
        parts=[part_id],
        part_rows=np.array([0, n], np.int64),
        formats=formats,
        samples=samples,
        raw_bytes=raw_bytes,
        zip_bytes=zip_bytes,
        format=fmt_ids,
        path_offsets=offsets,
        path_blob=np.frombuffer(b"".join(names), np.uint8),
        raw_hash=np.array(raw_hash, dtype=np.bytes_) if n else np.empty(0, "S1"),
        zip_hash=np.array(zip_hash, dtype=np.bytes_) if n else np.empty(0, "S1"),
    )


def _merge_formats(tables: Sequence[ShardTable]) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    """The tables' distinct formats, and per table the map from its format ids to theirs."""
    formats: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    remaps = []
    for t in tables:
        remap = np.empty(max(1, len(t.formats)), np.int32)
        for i, fmt in enumerate(t.formats):
            text = json.dumps(fmt, sort_keys=True)
            if text not in seen:
                seen[text] = len(formats)
                formats.append(fmt)
            remap[i] = seen[text]
        remaps.append(remap)
    return formats, remaps


def _pieces(
    tables: Sequence[ShardTable], name: str, remaps: list[np.ndarray], dtype: Any
) -> Iterator[np.ndarray]:
    """Array ``name`` of the tables laid end to end, one table's piece at a time."""
    if name == "path_offsets":
        yield np.zeros(1, np.int64)
        base = 0
        for t in tables:
            yield t.path_offsets[1:] + base
            base += int(t.path_offsets[-1])
        return
    for t, remap in zip(tables, remaps, strict=True):
        piece = remap[t.format] if name == "format" and len(t) else getattr(t, name)
        yield np.asarray(piece).astype(dtype, copy=False)


def _concat_spec(
    tables: Sequence[ShardTable], *, seq: int
) -> tuple[dict[str, Any], dict[str, Any], list[np.ndarray]]:
    """Header fields, array dtypes and format maps of the tables laid end to end."""
    formats, remaps = _merge_formats(tables)
    width = max([t.raw_hash.dtype.itemsize for t in tables] + [1])
    dtypes: dict[str, np.dtype[Any]] = {
        n: np.dtype(np.int64) for n in ("samples", "raw_bytes", "zip_bytes", "path_offsets")
    }
    dtypes |= {"format": np.dtype(np.int32), "path_blob": np.dtype(np.uint8)}
    dtypes |= {"raw_hash": np.dtype(f"S{width}"), "zip_hash": np.dtype(f"S{width}")}
    part_sizes = [int(n) for t in tables for n in np.diff(t.part_rows)]
    header = {
        "seq": seq,
        "parts": [p for t in tables for p in t.parts],
        "part_rows": [0, *np.cumsum(part_sizes, dtype=np.int64).tolist()],
        "formats": formats,
    }
    return header, dtypes, remaps


def concat_tables(tables: Sequence[ShardTable], *, seq: int) -> ShardTable:
    """Tables laid end to end (formats deduplicated), in memory."""
    header, dtypes, remaps = _concat_spec(tables, seq=seq)
    arrays = {
        name: np.concatenate([np.empty(0, dtype), *_pieces(tables, name, remaps, dtype)])
        for name, dtype in dtypes.items()
    }
    return ShardTable(
        seq=seq,
        parts=header["parts"],
        part_rows=np.asarray(header["part_rows"], np.int64),
        formats=header["formats"],
        **arrays,
    )


def write_table(table: ShardTable, path: str) -> None:
    """Write ``table`` to the local file ``path`` atomically (a temporary sibling renamed over it)."""
    write_concat([table], path, seq=table.seq)


def write_concat(tables: Sequence[ShardTable], path: str, *, seq: int) -> int:
    """Write the tables laid end to end to ``path`` (atomically), one table's piece at a time.

    A dataset's table is written from its parts' memory-mapped tables without ever being whole in
    this process's memory. Returns its number of shards.
    """
    header, dtypes, remaps = _concat_spec(tables, seq=seq)
    n = sum(len(t) for t in tables)
    counts = {name: n for name in dtypes} | {"path_offsets": n + 1}
    counts["path_blob"] = sum(int(t.path_offsets[-1]) for t in tables)
    layout: dict[str, dict[str, Any]] = {}
    offset = 0
    for name in _ARRAYS:
        layout[name] = {"dtype": dtypes[name].str, "shape": [counts[name]], "offset": offset}
        offset += -(-counts[name] * dtypes[name].itemsize // ALIGN) * ALIGN
    head = json.dumps({"version": TABLE_VERSION, **header, "arrays": layout}, sort_keys=True).encode()
    start = -(-(len(MAGIC) + 8 + len(head)) // ALIGN) * ALIGN
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with open(tmp, "wb") as f:
        f.write(MAGIC + np.uint64(len(head)).tobytes() + head)
        for name in _ARRAYS:
            f.seek(start + layout[name]["offset"])
            for piece in _pieces(tables, name, remaps, dtypes[name]):
                piece.tofile(f)
        f.truncate(start + offset)
    os.replace(tmp, path)
    return n


def parse_table(buf: Any, *, where: str) -> ShardTable:
    """A table over ``buf`` (bytes, or an ``mmap`` of a table file): arrays are views, nothing is copied."""
    view = memoryview(buf)
    if bytes(view[: len(MAGIC)]) != MAGIC:
        raise DatasetError(f"{where} is not a radforge shard table (bad magic)")
    size = int(np.frombuffer(view[len(MAGIC) : len(MAGIC) + 8], np.uint64)[0])
    try:
        header = json.loads(bytes(view[len(MAGIC) + 8 : len(MAGIC) + 8 + size]))
    except ValueError:
        raise DatasetError(f"{where}: corrupt shard table header") from None
    if header.get("version") != TABLE_VERSION:
        raise DatasetError(
            f"{where}: shard table version {header.get('version')} (this radforge reads {TABLE_VERSION})"
        )
    start = -(-(len(MAGIC) + 8 + size) // ALIGN) * ALIGN
    arrays = {}
    for name, spec in header["arrays"].items():
        dtype = np.dtype(spec["dtype"])
        count = int(np.prod(spec["shape"]))
        arrays[name] = np.frombuffer(buf, dtype, count=count, offset=start + spec["offset"]).reshape(
            spec["shape"]
        )
    return ShardTable(
        seq=int(header["seq"]),
        parts=list(header["parts"]),
        part_rows=np.asarray(header["part_rows"], np.int64),
        formats=list(header["formats"]),
        **arrays,
    )


def open_table(path: str) -> ShardTable:
    """Memory-map the table file at ``path`` (read-only; its pages are shared by every process mapping it)."""
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return parse_table(mapped, where=path)


def part_table_loc(root: Location, part_id: str) -> Location:
    return root.join(PARTS, part_id, PART_TABLE)


def write_part_table(root: Location, part_id: str, entries: Sequence[dict[str, Any]]) -> None:
    """Store a part's table next to its index (entries' basenames relative to the dataset root)."""
    _store(table_from_entries(entries, part_id=part_id), part_table_loc(root, part_id))


def _store(table: ShardTable, loc: Location) -> None:
    """Write ``table`` to ``loc`` (local: atomic rename; object store: one PUT of a local file)."""
    if loc.is_local:
        write_table(table, loc.path)
        return
    with tempfile.TemporaryDirectory(prefix="radforge-table-") as tmp:
        path = os.path.join(tmp, "t.rft")
        write_table(table, path)
        loc.fs.put_file(path, loc.path)


def _read_part_table(root: Location, part: dict[str, Any]) -> ShardTable:
    """A committed part's table: its stored one when it matches the log entry, else built from its index."""
    from radforge.sharder.commit_log import part_shards

    loc = part_table_loc(root, part["id"])
    got = _map_local(loc) if loc.is_local else read_versioned(loc)
    if got is not None:
        try:
            table = parse_table(got[0], where=loc.uri)
        except DatasetError as err:
            log.warning("%s; rebuilding it from the part's index", err)
        else:
            if len(table) == int(part.get("shards", -1)) and int(table.samples.sum()) == int(
                part.get("samples", -1)
            ):
                return table
            log.warning("%s does not match its log entry; rebuilding it from the part's index", loc.uri)
    table = table_from_entries(part_shards(root, part["id"]), part_id=part["id"])
    _store_best_effort(table, loc)
    return table


def _map_local(loc: Location) -> tuple[Any, str] | None:
    """A local file memory-mapped (its pages stay the page cache's, not this process's), or None."""
    try:
        with open(loc.path, "rb") as f:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), ""
    except (FileNotFoundError, ValueError):  # ValueError: an empty file cannot be mapped
        return None


def _store_best_effort(table: ShardTable, loc: Location) -> None:
    """Store a table for later readers; a reader without write access goes on without it."""
    try:
        _store(table, loc)
    except Exception as err:  # noqa: BLE001 - any storage refusal (permissions, read-only mounts) is fine here
        log.info("could not store shard table %s (%s); later readers rebuild it", loc.uri, type(err).__name__)


def state_key(parts: Sequence[dict[str, Any]]) -> str:
    """A digest of the committed parts (ids, shard and sample counts, commit times), in catalog order.

    Names a dataset table together with its log seq, so a dataset deleted and re-created under the
    same URI never reuses another's table.
    """
    ident = [[p["id"], p.get("shards"), p.get("samples"), p.get("committed_at")] for p in parts]
    return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:16]


def table_name(catalog: Catalog) -> str:
    return f"{catalog.seq:020d}-{state_key(catalog.parts)}.rft"


def _uri_key(uri: str) -> str:
    return hashlib.sha256(uri.encode()).hexdigest()[:16]


@contextlib.contextmanager
def _node_lock(path: str) -> Iterator[None]:
    """An exclusive lock between the processes of this node (``flock`` on ``path``)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def load_table(catalog: Catalog, *, cache_dir: str) -> ShardTable:
    """The shard table of ``catalog``'s dataset version, memory-mapped from this node's copy.

    A local dataset keeps its tables in its own ``_tables/`` (this node's cache when it is not
    writable); a remote one is copied into ``cache_dir``. The first process of the node builds a
    missing version (under a lock, from the parts' tables) and stores it in the dataset too, so other
    nodes download one file. A dataset in the root-index layout (no log: small, old) is read from its
    root index into memory.
    """
    root = catalog.root
    if root is None:
        raise DatasetError("a catalog without a root has no shard table")
    if catalog.layout != "log":
        return _legacy_table(catalog)
    name = table_name(catalog)
    remote = root.join(TABLES, name)
    node_dir = os.path.join(cache_dir, "tables", _uri_key(root.uri))
    local = (
        remote.path
        if root.is_local and _writable(os.path.dirname(remote.path))
        else os.path.join(node_dir, name)
    )
    if not os.path.exists(local):
        with _node_lock(os.path.join(node_dir, name + ".lock")):
            if not os.path.exists(local):
                _materialise(catalog, remote, local)
    return open_table(local)


def _writable(folder: str) -> bool:
    """Whether this process may create files in ``folder`` (made if missing, when its parent allows)."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


def _materialise(catalog: Catalog, remote: Location, local: str) -> None:
    """Make the table file at ``local``: download the dataset's copy, or build it from the parts' tables."""
    root = catalog.root
    assert root is not None
    if not remote.is_local:
        os.makedirs(os.path.dirname(local), exist_ok=True)
        tmp = f"{local}.tmp-{uuid.uuid4().hex}"
        try:
            remote.fs.get_file(remote.path, tmp)  # streamed to disk: never whole in this process
        except FileNotFoundError:
            pass  # no reader has stored this version yet: build it
        else:
            os.replace(tmp, local)
            return
    parts = catalog.parts
    with ThreadPoolExecutor(max_workers=min(FETCH_THREADS, max(1, len(parts)))) as pool:
        tables = list(pool.map(lambda p: _read_part_table(root, p), parts))
    n = write_concat(tables, local, seq=catalog.seq)
    del tables
    if remote.path != local:
        try:
            remote.fs.put_file(local, remote.path)
        except Exception as err:  # noqa: BLE001 - a reader without write access keeps its local copy
            log.info("could not store shard table %s (%s)", remote.uri, type(err).__name__)
    log.info("dataset %s: shard table of log entry %d built (%d shards)", root.uri, catalog.seq, n)


def _legacy_table(catalog: Catalog) -> ShardTable:
    """The table of a dataset in the root-index layout (its parts' rows by shard path; in memory)."""
    shards = catalog.shards
    by_part: OrderedDict[str, list[dict[str, Any]]] = OrderedDict((p["id"], []) for p in catalog.parts)
    for s in shards:
        pieces = s["raw_data"]["basename"].split("/")
        pid = pieces[1] if len(pieces) > 2 and pieces[0] == PARTS else ""
        by_part.setdefault(pid, []).append(s)
    return concat_tables(
        [table_from_entries(entries, part_id=pid) for pid, entries in by_part.items()], seq=catalog.seq
    )


class ShardFiles:
    """Samples of one dataset's shards, each shard opened when first read (an LRU of open files).

    An uncompressed shard of a local dataset is read in place. A compressed or remote one is
    decompressed into ``cache_dir`` (one process per shard, under a node lock; other processes wait
    and use it); above ``cache_limit`` bytes the least recently opened cached shards are removed
    (a process that has one open keeps reading it). Safe to fork: a process opens its own files.
    """

    def __init__(self, root: Location, table: ShardTable, *, cache_dir: str, cache_limit: int | None) -> None:
        self.root, self.table = root, table
        self.shard_dir = os.path.join(cache_dir, "shards")
        self.cache = os.path.join(self.shard_dir, _uri_key(root.uri))
        self.cache_limit = cache_limit
        self._open: OrderedDict[int, tuple[int, int]] = OrderedDict()  # row -> (fd, pid)
        self._fs: tuple[Any, int] | None = None  # (filesystem, pid of the process that made it)

    def close(self) -> None:
        """Close the shard files this process opened (a forked child's copies stay with their owner)."""
        pid = os.getpid()
        for fd, owner in self._open.values():
            if owner == pid:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._open.clear()

    def __del__(self) -> None:  # raw descriptors are not closed by the garbage collector
        with contextlib.suppress(Exception):
            self.close()

    def sample(self, row: int, index: int) -> dict[str, Any]:
        """Sample ``index`` of the shard in ``row``, decoded (column name -> value)."""
        fd = self._fd(row)
        offsets = np.frombuffer(os.pread(fd, 8, 4 + 4 * index), np.uint32)
        begin, end = int(offsets[0]), int(offsets[1])
        data = os.pread(fd, end - begin, begin)
        if len(data) != end - begin:
            raise DatasetError(f"{self.table.raw_path(row)} of {self.root.uri} is truncated (sample {index})")
        return self._decode(int(self.table.format[row]), data)

    def _decode(self, fid: int, data: bytes) -> dict[str, Any]:
        fmt = self.table.formats[fid]
        names, encodings, sizes = fmt["column_names"], fmt["column_encodings"], fmt["column_sizes"]
        n_var = sum(1 for s in sizes if not s)
        var = iter(np.frombuffer(data[: 4 * n_var], np.uint32).tolist())
        idx = 4 * n_var
        sample = {}
        for name, encoding, size in zip(names, encodings, sizes, strict=True):
            n = size or next(var)
            sample[name] = decode_column(encoding, data[idx : idx + n])
            idx += n
        return sample

    def prepare(self, row: int) -> None:
        """Make the shard in ``row`` local (downloaded or decompressed into the cache) without opening it."""
        self._local_file(row)

    def _fd(self, row: int) -> int:
        pid = os.getpid()
        got = self._open.get(row)
        if got is not None and got[1] == pid:
            self._open.move_to_end(row)
            return got[0]
        if got is not None:  # inherited across fork: the parent's descriptor is left to the parent
            del self._open[row]
        self._open = OrderedDict((r, v) for r, v in self._open.items() if v[1] == pid)
        for attempt in range(FETCH_ATTEMPTS):
            try:
                fd = os.open(self._local_file(row), os.O_RDONLY)
                break
            except FileNotFoundError:  # evicted by another process between its check and our open
                if attempt == FETCH_ATTEMPTS - 1:
                    raise
        self._open[row] = (fd, pid)
        while len(self._open) > OPEN_SHARDS:
            _, (old, _) = self._open.popitem(last=False)
            os.close(old)
        return fd

    def _local_file(self, row: int) -> str:
        """A local path of the shard's uncompressed file (decompressed or downloaded into the cache)."""
        raw = self.table.raw_path(row)
        if self.root.is_local and not self.table.zip_bytes[row]:
            return self.root.join(raw).path
        path = os.path.join(self.cache, raw)
        if os.path.exists(path):
            with contextlib.suppress(FileNotFoundError):  # evicted meanwhile: fetched again below
                os.utime(path)
                return path
        with _node_lock(path + ".lock"):
            if not os.path.exists(path):
                self._fetch(row, path)
        self._evict(keep=path)
        return path

    def _fetch(self, row: int, path: str) -> None:
        src = self.root.join(self.table.stored_path(row))
        try:
            data = self._filesystem().cat_file(src.path)
        except FileNotFoundError:
            raise DatasetError(
                f"shard {src.uri} is missing (removed by a vacuum after a compaction? reopen the dataset)"
            ) from None
        if self.table.zip_bytes[row]:
            data = decompress(self.table.formats[int(self.table.format[row])]["compression"], data)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)

    def _filesystem(self) -> Any:
        """The dataset's filesystem in this process (a forked loader makes its own: s3fs is not fork-safe)."""
        if self._fs is None or self._fs[1] != os.getpid():
            fs = self.root.fs
            if not self.root.is_local:
                fs = type(fs)(**fs.storage_options, skip_instance_cache=True)
            self._fs = (fs, os.getpid())
        return self._fs[0]

    def _evict(self, *, keep: str) -> None:
        """Remove the least recently opened cached shards (every dataset's) above the cache limit."""
        if not self.cache_limit:
            return
        files = []
        for folder, _, names in os.walk(self.shard_dir):
            for n in names:
                if n.endswith(".mds"):
                    p = os.path.join(folder, n)
                    with contextlib.suppress(FileNotFoundError):
                        st = os.stat(p)
                        files.append((st.st_mtime_ns, st.st_size, p))
        total = sum(f[1] for f in files)
        for _, size, p in sorted(files):
            if total <= self.cache_limit:
                break
            if p == keep:
                continue
            with contextlib.suppress(FileNotFoundError):
                os.remove(p)
                total -= size


_NDARRAY_DTYPES = {code: np.dtype(name) for name, code in _NDARRAY_DTYPE_CODE.items()}
_SHAPE_DTYPE = {code: dtype for _, dtype, code in _SHAPE_DTYPES} | {3: np.uint64}


def decode_column(encoding: str, data: bytes) -> Any:
    """One MDS column value, as streaming's ``mds_decode`` gives it.

    radforge's encodings are decoded here (importing streaming costs seconds per process); any other
    is left to streaming's decoder.
    """
    if encoding == "ndarray":  # dynamic dtype and shape: [dtype][ndim << 2 | shape dtype][shape][values]
        dtype, ndim = _NDARRAY_DTYPES[data[0]], data[1] >> 2
        shape_dtype = np.dtype(_SHAPE_DTYPE[data[1] & 3])
        shape = np.frombuffer(data, shape_dtype, count=ndim, offset=2)
        return np.frombuffer(data, dtype, offset=2 + ndim * shape_dtype.itemsize).reshape(shape)
    if encoding == "str":
        return data.decode("utf-8")
    if encoding == "json":
        return json.loads(data)
    if encoding == "bytes":
        return data
    from streaming.base.format.mds.encodings import mds_decode

    return mds_decode(encoding, data)


def decompress(compression: str, data: bytes) -> bytes:
    """A shard file's content from its compressed form (zstd here; other codecs through streaming)."""
    if compression.split(":")[0] == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().decompress(data)
    from streaming.base.compression import decompress as stock

    return bytes(stock(compression, data))
