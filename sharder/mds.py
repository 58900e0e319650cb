"""A fast writer of MDS shards, byte-compatible with MosaicML Streaming's reader.

Samples are encoded with streaming's own column encoders (:func:`encode_sample`) where they are
produced, so the write side only concatenates, compresses, hashes and stores. Compared to
``streaming.MDSWriter`` this writer

- takes already-encoded samples (no decode/encode round trip between pipeline stages);
- compresses with zstandard at any level, including the fast negative levels that streaming's
  writer refuses: the shard is an ordinary zstd frame, which the stock reader decompresses
  whatever the level (the index records the family, ``zstd``, when the level is not 1-22);
- writes the same joint-shard layout and index entries (``samples``, ``raw_data``, ``zip_data``,
  format config), so a stock ``StreamingDataset`` reads its shards.

Shard layout (MDS "joint" shard): uint32 sample count, uint32 offsets (count + 1), the JSON format
config, then the samples; each sample is uint32 sizes of its variable-size columns followed by the
column payloads, columns in sorted name order.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np


class ShardFormatError(ValueError):
    """An invalid shard-writing setting; the message names it and what is valid."""


# Codecs MosaicML Streaming's reader decompresses, with the levels its index names accept.
CODEC_LEVELS: dict[str, range | None] = {
    "br": range(0, 12),
    "bz2": range(1, 10),
    "gz": range(0, 10),
    "snappy": None,
    "zstd": range(1, 23),
}


def parse_compression(spec: str | None) -> tuple[str | None, int | None, str | None]:
    """``'zstd:-3'`` -> (family, level, label recorded in the index).

    zstd also accepts its fast negative levels (-100..-1): the frame format does not depend on the
    level, so the index records the family alone (``zstd``) and the stock reader decompresses it.
    """
    if spec is None:
        return None, None, None
    family, sep, level_text = spec.partition(":")
    valid = ", ".join(sorted(CODEC_LEVELS))
    if family not in CODEC_LEVELS:
        raise ShardFormatError(f"unknown compression {spec!r}; valid codecs: {valid} (with ':level')")
    levels = CODEC_LEVELS[family]
    if not sep:
        return family, None, spec
    try:
        level = int(level_text)
    except ValueError:
        raise ShardFormatError(f"compression {spec!r}: the level must be an integer") from None
    if family == "zstd" and -100 <= level <= -1:
        return family, level, "zstd"
    if levels is None or level not in levels:
        allowed = "no level" if levels is None else f"levels {levels.start}..{levels.stop - 1}"
        extra = " (or -100..-1)" if family == "zstd" else ""
        raise ShardFormatError(f"compression {spec!r}: {family} takes {allowed}{extra}")
    return family, level, spec


def _hashers() -> dict[str, Callable[..., Any]]:
    """Hash constructors the stock reader can validate (as streaming.base.hashing computes them).

    Each returns a hash object with ``update`` and ``hexdigest``.
    """
    import hashlib

    import xxhash

    return {
        "blake2b": hashlib.blake2b,
        "blake2s": hashlib.blake2s,
        "md5": hashlib.md5,
        "sha1": hashlib.sha1,
        "sha224": hashlib.sha224,
        "sha256": hashlib.sha256,
        "sha384": hashlib.sha384,
        "sha512": hashlib.sha512,
        "xxh32": xxhash.xxh32,
        "xxh64": xxhash.xxh64,
        "xxh128": xxhash.xxh128,
        "xxh3_64": xxhash.xxh3_64,
        "xxh3_128": xxhash.xxh3_128,
    }


HASHES = tuple(sorted(_hashers()))


def file_hash(algo: str, data: bytes | bytearray | memoryview | Iterable[bytes | memoryview]) -> str:
    """Hex digest under ``algo`` of ``data``, as streaming records it in index entries.

    ``data`` is one buffer or an iterable of pieces hashed as if laid end to end.
    """
    make = _hashers().get(algo)
    if make is None:
        raise ShardFormatError(f"unknown hash {algo!r}; valid: {', '.join(HASHES)}")
    h = make()
    for piece in [data] if isinstance(data, bytes | bytearray | memoryview) else data:
        h.update(piece)
    return str(h.hexdigest())


# ---- column encodings: the MDS layout (see streaming.base.format.mds.encodings) -------------------
# ndarray with per-sample dtype and shape: dtype code byte, (ndim << 2 | shape dtype code) byte,
# the shape in the smallest unsigned dtype that holds it, then the values.
_NDARRAY_DTYPE_CODE = {
    "uint8": 8,
    "int8": 9,
    "uint16": 16,
    "int16": 17,
    "float16": 18,
    "uint32": 32,
    "int32": 33,
    "float32": 34,
    "uint64": 64,
    "int64": 65,
    "float64": 66,
}
_SHAPE_DTYPES: tuple[tuple[int, type[np.unsignedinteger[Any]], int], ...] = (
    (1 << 8, np.uint8, 0),
    (1 << 16, np.uint16, 1),
    (1 << 32, np.uint32, 2),
)


def _ndarray_parts(arr: np.ndarray) -> list[bytes | memoryview]:
    """The MDS ndarray encoding as two pieces: a small head and a view of the values.

    No copy is made when ``arr`` is C-contiguous, as a slice of a canonical volume is.
    """
    code = _NDARRAY_DTYPE_CODE.get(arr.dtype.name)
    if code is None:
        raise ShardFormatError(
            f"ndarray dtype {arr.dtype.name} cannot be stored; valid: {', '.join(_NDARRAY_DTYPE_CODE)}"
        )
    if arr.size == 0 or arr.ndim == 0 or arr.ndim >= 64:
        raise ShardFormatError(f"ndarray of shape {arr.shape} cannot be stored (1-63 axes, none empty)")
    biggest = max(arr.shape)
    shape_dtype: type[np.unsignedinteger[Any]] = np.uint64
    shape_code = 3
    for bound, dtype, c in _SHAPE_DTYPES:
        if biggest < bound:
            shape_dtype, shape_code = dtype, c
            break
    head = bytes([code, (arr.ndim << 2) | shape_code]) + np.asarray(arr.shape, shape_dtype).tobytes()
    return [head, memoryview(np.ascontiguousarray(arr)).cast("B")]  # type: ignore[arg-type]


_ENCODERS: dict[str, Callable[[Any], list[bytes | memoryview]]] = {
    "str": lambda v: [v.encode("utf-8")],
    "json": lambda v: [json.dumps(v).encode("utf-8")],
    "bytes": lambda v: [bytes(v)],
    "ndarray": _ndarray_parts,
}


class SampleEncoder:
    """Encodes sample dicts into MDS sample bytes for a fixed set of variable-size columns.

    Implements the MDS layout of the encodings radforge stores (``str``, ``json``, ``bytes`` and
    ``ndarray`` with per-sample dtype and shape) without importing streaming, whose import pulls in
    torch: ingest workers stay light. Byte equality with streaming's own encoder is tested.
    """

    def __init__(self, columns: Mapping[str, str]) -> None:
        for name, encoding in columns.items():
            if encoding not in _ENCODERS:
                raise ShardFormatError(
                    f"column {name!r}: encoding {encoding!r} is not supported; "
                    f"valid: {', '.join(sorted(_ENCODERS))}"
                )
        self.names = sorted(columns)
        self.encodings = [columns[n] for n in self.names]
        self.sizes: list[int | None] = [None for _ in self.names]
        self._fns = [_ENCODERS[e] for e in self.encodings]

    def encode(self, sample: Mapping[str, Any]) -> bytes:
        """The MDS bytes of one sample."""
        return b"".join(self.encode_parts(sample))

    def encode_parts(self, sample: Mapping[str, Any]) -> list[bytes | memoryview]:
        """The MDS bytes of one sample as pieces to lay end to end.

        Array values stay views of the sample's arrays, so whoever concatenates the pieces makes
        the only copy.
        """
        columns = [fn(sample[name]) for name, fn in zip(self.names, self._fns, strict=True)]
        sizes = np.asarray([sum(len(p) for p in col) for col in columns], np.uint32).tobytes()
        return [sizes, *(p for col in columns for p in col)]

    def format_config(self, *, compression: str | None, hashes: list[str], size_limit: int) -> dict[str, Any]:
        return {
            "version": 2,
            "format": "mds",
            "compression": compression,
            "hashes": hashes,
            "size_limit": size_limit,
            "column_names": self.names,
            "column_encodings": self.encodings,
            "column_sizes": self.sizes,
        }


class ShardWriter:
    """Accumulates encoded samples and writes MDS shards plus an ``index.json`` into a local folder."""

    EXTRA_BYTES_PER_SAMPLE = 4  # one offset per sample

    def __init__(
        self,
        folder: str,
        *,
        encoder: SampleEncoder,
        compression: str | None = "zstd:1",
        hashes: list[str] | None = None,
        size_limit: int = 64 << 20,
    ) -> None:
        self.folder = folder
        self.encoder = encoder
        self.family, self.level, self.label = parse_compression(compression)
        self.hashes = sorted(hashes or [])
        for algo in self.hashes:
            file_hash(algo, b"")  # refuses unknown algorithms early
        self.size_limit = size_limit
        self.config = encoder.format_config(compression=self.label, hashes=self.hashes, size_limit=size_limit)
        self._config_bytes = json.dumps(self.config, sort_keys=True).encode()
        self._samples: list[bytes | memoryview] = []
        self._size = 0
        self.shards: list[dict[str, Any]] = []
        self._compressor: Any = None
        if self.family == "zstd":
            import zstandard

            self._compressor = zstandard.ZstdCompressor(level=self.level or 3, write_content_size=True)
        os.makedirs(folder, exist_ok=True)

    def add(self, encoded: bytes | memoryview) -> None:
        """Add one encoded sample (see :class:`SampleEncoder`); flushes a shard at the size limit."""
        size = len(encoded) + self.EXTRA_BYTES_PER_SAMPLE
        fixed = 4 + 4 + len(self._config_bytes)
        if self._samples and fixed + self._size + size > self.size_limit:
            self.flush()
        self._samples.append(encoded)
        self._size += size

    def _file_info(self, pieces: list[bytes | memoryview], basename: str, *, size: int) -> dict[str, Any]:
        return {"basename": basename, "bytes": size, "hashes": {a: file_hash(a, pieces) for a in self.hashes}}

    def flush(self) -> None:
        if not self._samples:
            return
        n = len(self._samples)
        offsets = np.zeros(n + 1, np.uint32)
        np.cumsum([len(s) for s in self._samples], out=offsets[1:])
        offsets += 4 + 4 * (n + 1) + len(self._config_bytes)
        # The shard is streamed piece by piece into the hash, the compressor and the file: no
        # shard-sized buffer is built (a 64 MiB join costs fresh pages, not just a memcpy).
        pieces = [np.uint32(n).tobytes(), offsets.tobytes(), self._config_bytes, *self._samples]
        raw_size = int(offsets[-1])
        index = len(self.shards)
        raw_name = f"shard.{index:05d}.mds"
        raw_info = self._file_info(pieces, raw_name, size=raw_size)
        zip_info = None
        name, data = raw_name, pieces
        if self.family is not None:
            data = [self._compress(pieces, raw_size)]
            name = f"{raw_name}.{self.family}"
            zip_info = self._file_info(data, name, size=len(data[0]))
        with open(os.path.join(self.folder, name), "wb") as f:
            f.writelines(data)
        self.shards.append({"samples": n, "raw_data": raw_info, "zip_data": zip_info, **self.config})
        self._samples, self._size = [], 0

    def _compress(self, pieces: list[bytes | memoryview], size: int) -> bytes:
        if self._compressor is not None:
            stream = self._compressor.compressobj(size=size)  # the frame records the content size
            return b"".join([*(stream.compress(p) for p in pieces), stream.flush()])
        from streaming.base.compression import compress

        return bytes(compress(self.label, b"".join(pieces)))

    def finish(self) -> list[dict[str, Any]]:
        """Flush the last shard, write ``index.json`` into the folder, return the shard entries."""
        self.flush()
        with open(os.path.join(self.folder, "index.json"), "w") as f:
            json.dump({"version": 2, "shards": self.shards}, f, sort_keys=True)
        return self.shards
