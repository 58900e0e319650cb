"""The MDS shard writer against MosaicML Streaming's own encoder, hashes and stock reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from radforge.sharder.mds import (
    HASHES,
    SampleEncoder,
    ShardFormatError,
    ShardWriter,
    file_hash,
    parse_compression,
)
from radforge.sharder.schema import COLUMNS
from tests.support import read_all


def _samples(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    dtypes = [np.int16, np.uint8, np.uint16, np.float32]
    out = []
    for i in range(n):
        shape = (int(rng.integers(1, 300)), int(rng.integers(1, 70000 if i == 3 else 300)))
        image = rng.integers(0, 200, size=shape).astype(dtypes[i % len(dtypes)])
        out.append(
            {
                "key": f"series-é/axial/{i:05d}/raw",
                "image": image,
                "fg": rng.integers(0, 255, size=(4, 5), dtype=np.uint8),
                "meta": {"i": i, "spacing": [0.5, 0.5], "box": None, "text": "日本"},
            }
        )
    return out


def test_sample_bytes_equal_streamings_own_encoder(tmp_path: Path) -> None:
    from streaming import MDSWriter

    writer = MDSWriter(columns=COLUMNS, out=str(tmp_path / "ref"))
    ours = SampleEncoder(COLUMNS)
    for sample in _samples(8):
        assert ours.encode(sample) == writer.encode_sample(sample)
    assert ours.format_config(compression=None, hashes=[], size_limit=1 << 26) == writer.get_config()


def test_hashes_equal_streamings() -> None:
    from streaming.base.hashing import get_hash

    data = b"radforge" * 1000
    for algo in HASHES:
        assert file_hash(algo, data) == get_hash(algo, data)


@pytest.mark.parametrize("compression", [None, "zstd:1", "zstd:-5", "zstd", "gz:1"])
def test_stock_reader_reads_every_sample(tmp_path: Path, compression: str | None) -> None:
    samples = _samples(40, seed=1)
    encoder = SampleEncoder(COLUMNS)
    writer = ShardWriter(
        str(tmp_path / "ds"),
        encoder=encoder,
        compression=compression,
        hashes=["sha1", "xxh64"],
        size_limit=1 << 16,
    )
    for s in samples:
        writer.add(encoder.encode(s))
    shards = writer.finish()
    assert len(shards) > 1 and sum(s["samples"] for s in shards) == 40
    got = read_all(tmp_path / "ds")
    assert list(got) == [s["key"] for s in samples]
    for s in samples:
        g = got[s["key"]]
        assert g["image"].dtype == s["image"].dtype and np.array_equal(g["image"], s["image"])
        assert np.array_equal(g["fg"], s["fg"]) and g["meta"] == s["meta"]


def test_invalid_settings_name_what_is_valid() -> None:
    assert parse_compression("zstd:-3") == ("zstd", -3, "zstd")
    assert parse_compression("zstd:7") == ("zstd", 7, "zstd:7")
    with pytest.raises(ShardFormatError, match="valid codecs: br, bz2, gz, snappy, zstd"):
        parse_compression("lz4")
    with pytest.raises(ShardFormatError, match="levels 1..9"):
        parse_compression("bz2:12")
    with pytest.raises(ShardFormatError, match="valid: "):
        file_hash("crc99", b"")
    with pytest.raises(ShardFormatError, match="complex64 cannot be stored"):
        SampleEncoder({"x": "ndarray"}).encode({"x": np.zeros((2, 2), dtype=np.complex64)})
