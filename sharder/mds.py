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
from collections.abc import Mapping
from typing import Any

import numpy as np

_ZSTD_STREAMING_LEVELS = range(1, 23)


class ShardFormatError(ValueError):
    """An invalid shard-writing setting; the message names it and what is valid."""


def parse_compression(spec: str | None) -> tuple[str | None, int | None, str | None]:
    """``'zstd:-3'`` -> (family, level, label recorded in the index). Only zstd levels are free-form."""
    if spec is None:
        return None, None, None
    from streaming.base.compression import get_compressions

    family, _, level_text = spec.partition(":")
    if family == "zstd" and level_text:
        try:
            level = int(level_text)
        except ValueError:
            raise ShardFormatError(f"compression {spec!r}: zstd level must be an integer") from None
        if not -100 <= level <= 22 or level == 0:
            raise ShardFormatError(f"compression {spec!r}: zstd level must be in -100..-1 or 1..22")
        return family, level, spec if level in _ZSTD_STREAMING_LEVELS else "zstd"
    if spec not in get_compressions():
        codecs = sorted({c.split(":")[0] for c in get_compressions()})
        raise ShardFormatError(
            f"unknown compression {spec!r}; valid codecs: {', '.join(codecs)} (with ':level')"
        )
    return family, None, spec


class SampleEncoder:
    """Encodes sample dicts into MDS sample bytes for a fixed set of columns."""

    def __init__(self, columns: Mapping[str, str]) -> None:
        from streaming.base.format.mds.encodings import get_mds_encoded_size, is_mds_encoding

        for name, encoding in columns.items():
            if not is_mds_encoding(encoding):
                raise ShardFormatError(f"column {name!r}: unknown MDS encoding {encoding!r}")
        self.names = sorted(columns)
        self.encodings = [columns[n] for n in self.names]
        self.sizes = [get_mds_encoded_size(e) for e in self.encodings]

    def encode(self, sample: Mapping[str, Any]) -> bytes:
        from streaming.base.format.mds.encodings import mds_encode

        sizes: list[int] = []
        parts: list[bytes] = []
        for name, encoding, size in zip(self.names, self.encodings, self.sizes, strict=True):
            datum = mds_encode(encoding, sample[name])
            if size is None:
                sizes.append(len(datum))
            elif size != len(datum):
                raise ShardFormatError(
                    f"column {name!r}: {len(datum)} bytes, encoding {encoding} needs {size}"
                )
            parts.append(datum)
        return np.asarray(sizes, np.uint32).tobytes() + b"".join(parts)

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
        from streaming.base.hashing import is_hash

        self.folder = folder
        self.encoder = encoder
        self.family, self.level, self.label = parse_compression(compression)
        self.hashes = sorted(hashes or [])
        for algo in self.hashes:
            if not is_hash(algo):
                raise ShardFormatError(f"unknown hash {algo!r}")
        self.size_limit = size_limit
        self.config = encoder.format_config(compression=self.label, hashes=self.hashes, size_limit=size_limit)
        self._config_bytes = json.dumps(self.config, sort_keys=True).encode()
        self._samples: list[bytes] = []
        self._size = 0
        self.shards: list[dict[str, Any]] = []
        self._compressor: Any = None
        if self.family == "zstd":
            import zstandard

            self._compressor = zstandard.ZstdCompressor(level=self.level or 3, write_content_size=True)
        os.makedirs(folder, exist_ok=True)

    def add(self, encoded: bytes) -> None:
        """Add one encoded sample (see :class:`SampleEncoder`); flushes a shard at the size limit."""
        size = len(encoded) + self.EXTRA_BYTES_PER_SAMPLE
        fixed = 4 + 4 + len(self._config_bytes)
        if self._samples and fixed + self._size + size > self.size_limit:
            self.flush()
        self._samples.append(encoded)
        self._size += size

    def _file_info(self, data: bytes, basename: str) -> dict[str, Any]:
        from streaming.base.hashing import get_hash

        return {
            "basename": basename,
            "bytes": len(data),
            "hashes": {a: get_hash(a, data) for a in self.hashes},
        }

    def flush(self) -> None:
        if not self._samples:
            return
        n = len(self._samples)
        offsets = np.zeros(n + 1, np.uint32)
        np.cumsum([len(s) for s in self._samples], out=offsets[1:])
        offsets += 4 + 4 * (n + 1) + len(self._config_bytes)
        raw = b"".join([np.uint32(n).tobytes(), offsets.tobytes(), self._config_bytes, *self._samples])
        index = len(self.shards)
        raw_name = f"shard.{index:05d}.mds"
        raw_info = self._file_info(raw, raw_name)
        zip_info = None
        data, name = raw, raw_name
        if self.family is not None:
            data = self._compress(raw)
            name = f"{raw_name}.{self.family}"
            zip_info = self._file_info(data, name)
        with open(os.path.join(self.folder, name), "wb") as f:
            f.write(data)
        self.shards.append({"samples": n, "raw_data": raw_info, "zip_data": zip_info, **self.config})
        self._samples, self._size = [], 0

    def _compress(self, raw: bytes) -> bytes:
        if self._compressor is not None:
            out: bytes = self._compressor.compress(raw)
            return out
        from streaming.base.compression import compress

        return bytes(compress(self.label, raw))

    def finish(self) -> list[dict[str, Any]]:
        """Flush the last shard, write ``index.json`` into the folder, return the shard entries."""
        self.flush()
        with open(os.path.join(self.folder, "index.json"), "w") as f:
            json.dump({"version": 2, "shards": self.shards}, f, sort_keys=True)
        return self.shards
