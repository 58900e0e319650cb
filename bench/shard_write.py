"""Shard writing speed on the same in-memory samples: raw bytes (floor), bare MDSWriter, radforge's datasink.

One run, identical samples (512x512 int16 CT slices from the project's phantom, with their fg map
and metadata), the same compression for both MDS writers:

  floor:    the encoded payload written as one raw file (no format, no compression, no hashing);
  bare:     ``streaming.MDSWriter`` in a loop (one core), same compression and hashes;
  radforge: the same samples through Ray Data -> encode -> ``MDSDatasink`` (commit included),
            with Ray limited to 1 CPU (per-core comparison) and with ``--cpus`` CPUs (scaling);
  s3:       bare MDSWriter (local write + upload via fsspec) vs the datasink straight to s3:// on a
            moto server on 127.0.0.1.

MB/s counts the uncompressed payload. ``ratio`` is radforge (1 CPU) over bare. Ends with one JSON line.

    .venv/bin/python -m bench.shard_write [--samples 384] [--compression zstd:1] [--cpus 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _samples(n: int) -> list[dict[str, Any]]:
    from radforge.synthetic import ct_phantom

    vol = ct_phantom(shape=(min(n, 64), 512, 512), seed=0).array.astype(np.int16)
    fg = np.full((32, 32), 200, np.uint8)
    return [
        {
            "key": f"bench/axial/{i:05d}/raw",
            "image": vol[i % vol.shape[0]],
            "fg": fg,
            "meta": {
                "modality": "CT",
                "plane": "axial",
                "window": "raw",
                "slice_index": i,
                "body_part": "CHEST",
            },
        }
        for i in range(n)
    ]


def _encode_batch(batch: dict[str, Any]) -> Any:
    from radforge.ingest.pipeline import _encoder
    from radforge.sharder.datasink import count_key, rows_block

    enc = _encoder()
    rows = []
    for key, image, fg, meta in zip(batch["key"], batch["image"], batch["fg"], batch["meta"], strict=True):
        sample = {"key": key, "image": image, "fg": fg, "meta": json.loads(meta)}
        rows.append(
            {
                "record": "sample",
                "key": key,
                "sample": enc.encode(sample),
                "count": count_key(sample["meta"]),
                "series": "",
            }
        )
    return rows_block(rows)


def floor(samples: list[dict[str, Any]], out: Path) -> float:
    from radforge.sharder.mds import SampleEncoder
    from radforge.sharder.schema import COLUMNS

    enc = SampleEncoder(COLUMNS)
    t = time.perf_counter()
    with open(out, "wb") as f:
        for s in samples:
            f.write(enc.encode(s))
    return time.perf_counter() - t


def bare(
    samples: list[dict[str, Any]], out: str, compression: str | None, upload_to: str | None = None
) -> float:
    from streaming import MDSWriter

    from radforge.sharder.schema import COLUMNS

    t = time.perf_counter()
    with MDSWriter(columns=COLUMNS, out=out, compression=compression, hashes=["xxh64"], exist_ok=True) as w:
        for s in samples:
            w.write(s)
    if upload_to:
        import fsspec

        fs = fsspec.filesystem("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL_S3"])
        fs.put(out, upload_to.removeprefix("s3://"), recursive=True)
    return time.perf_counter() - t


def radforge(samples: list[dict[str, Any]], uri: str, compression: str | None, cpus: int) -> float:
    import ray

    from radforge.sharder.datasink import MDSDatasink

    items = [
        {"key": s["key"], "image": s["image"], "fg": s["fg"], "meta": json.dumps(s["meta"])} for s in samples
    ]
    ds = ray.data.from_items(items).materialize()  # in the object store before the clock starts
    sink = MDSDatasink(uri, part_id="p-bench", part_info={}, compression=compression, samples_per_task=64)
    t = time.perf_counter()
    ds.map_batches(_encode_batch, batch_size=64, num_cpus=1, concurrency=cpus).write_datasink(
        sink, concurrency=cpus
    )
    assert sink.result and sink.result["samples"] == len(samples)
    return time.perf_counter() - t


def _moto() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = str(Path(sys.executable).parent / "moto_server")
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, f"http://127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=384)
    parser.add_argument("--compression", default="zstd:1")
    parser.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args()
    compression = None if args.compression == "none" else args.compression
    proc, endpoint = _moto()
    os.environ.update(
        AWS_ENDPOINT_URL_S3=endpoint,
        S3_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        RAY_DATA_DISABLE_PROGRESS_BARS="1",
    )
    logging.basicConfig(level=logging.WARNING)
    import boto3
    import ray

    from radforge.runtime import ensure_ray

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
    work = Path(tempfile.mkdtemp(prefix="radforge-bench-shards-"))
    try:
        samples = _samples(args.samples)
        mb = sum(s["image"].nbytes + s["fg"].nbytes for s in samples) / 1e6
        results: dict[str, float] = {}
        results["floor"] = floor(samples, work / "raw.bin")
        results["bare"] = bare(samples, str(work / "bare"), compression)
        for cpus in (1, args.cpus):
            ensure_ray(num_cpus=cpus)
            logging.getLogger("ray.data").setLevel(logging.WARNING)
            radforge(samples, str(work / f"warm{cpus}"), compression, cpus)  # start every worker first
            results[f"radforge_{cpus}cpu"] = radforge(samples, str(work / f"rf{cpus}"), compression, cpus)
            if cpus == 1:
                results["bare_s3"] = bare(
                    samples, str(work / "bare-s3"), compression, upload_to="s3://bench/bare"
                )
                results["radforge_s3"] = radforge(samples, "s3://bench/rf", compression, 1)
            ray.shutdown()
        rate = {k: mb / v for k, v in results.items()}
        print(
            json.dumps(
                {
                    "bench": "shard_write",
                    "samples": args.samples,
                    "payload_mb": round(mb, 1),
                    "compression": compression,
                    "floor_mb_per_s": round(rate["floor"], 1),
                    "bare_mb_per_s": round(rate["bare"], 1),
                    "radforge_mb_per_s": round(rate["radforge_1cpu"], 1),
                    f"radforge_{args.cpus}cpu_mb_per_s": round(rate[f"radforge_{args.cpus}cpu"], 1),
                    "bare_s3_mb_per_s": round(rate["bare_s3"], 1),
                    "radforge_s3_mb_per_s": round(rate["radforge_s3"], 1),
                    "ratio": round(rate["radforge_1cpu"] / rate["bare"], 3),
                    "scaling": round(rate[f"radforge_{args.cpus}cpu"] / rate["radforge_1cpu"], 3),
                    "ratio_s3": round(rate["radforge_s3"] / rate["bare_s3"], 3),
                }
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
        proc.terminate()


if __name__ == "__main__":
    main()
