"""What one commit and one catalog open cost as a dataset grows: the commit log vs the root index it replaced.

A simulation with radforge's own writer functions and no pixel data: one real shard entry (from
:class:`radforge.sharder.mds.ShardWriter` on one small sample, zstd + xxh64 like ingest writes)
is copied under new names to make synthetic catalogs of N shards, in parts of ``--part-shards``
shards (the files themselves are never written: commits and catalog reads never open a shard).

- ``log`` (after): every part has its own ``index.json`` (``write_part_index``) and is committed
  by ``commit_log.append_part``, checkpoints included, exactly as ingest commits;
- ``root_index`` (before): the same part indexes, and the root ``index.json`` listing every shard
  written once by ``catalog.commit`` (the layout before the log; ``commit_part(layout="root_index")``
  is the old commit path).

Then, per size and layout, in a fresh process each: one more commit of a part of
``--commit-shards`` shards through ``commit_part`` (seconds, bytes written by the process's
``write`` calls from /proc/self/io, peak RSS from VmHWM), and one catalog open (``load_catalog``: seconds,
peak RSS). The log's checkpoint (written by one commit in CHECKPOINT_EVERY) is measured apart.

Loader open (what a training process does before it can read its first batch), also in a fresh
process each, after the imports a trainer has anyway (torch, numpy):

- ``table_cold``: the trainer's loader (``open_sources`` + ``MixSamples``) as the first process of a
  node meets a new dataset version: it builds the version's shard table from the parts' tables and
  stores it; then epoch 0 is planned and rank 0 of 8 locates its first batch of 32 (shard files named);
- ``table_warm``: the same in any other process (the table exists: it is memory-mapped);
- ``streaming`` (before): ``StreamingDataset(local=root)`` over the root index (root-index layout,
  up to ``--streaming-max`` shards: the issue measured 84 s and 4.1 GB at 10^6).

Per process: seconds, peak RSS (VmHWM), the loader's own share of it (``loader_own_mb``: the peak
over the RSS after the imports every trainer process has), private memory (RssAnon) and
file-backed memory (RssFile: shared libraries and the memory-mapped table, in the page cache once
per node) at the end.
Figures are fitted linearly in N and extrapolated to 3x10^6 shards. Ends with one JSON line.

    .venv/bin/python -m bench.catalog_scale [--sizes 1000,10000,100000,1000000] [--before-max 100000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PART_ID = "p-{:016x}"
MEASURES = ("commit", "open", "checkpoint")
LOADERS = ("table_cold", "table_warm", "streaming")


def shard_template() -> dict[str, Any]:
    """One shard entry as ingest writes it (zstd, xxh64), from a real ShardWriter."""
    import numpy as np

    from radforge.sharder.mds import SampleEncoder, ShardWriter
    from radforge.sharder.schema import COLUMNS

    with tempfile.TemporaryDirectory() as d:
        writer = ShardWriter(d, encoder=SampleEncoder(COLUMNS), compression="zstd:1", hashes=["xxh64"])
        sample = {"key": "k", "image": np.zeros((8, 8), np.int16), "fg": np.zeros((1, 1), np.uint8)}
        sample["meta"] = {}
        writer.add(SampleEncoder(COLUMNS).encode(sample))
        entry = writer.finish()[0]
    entry["samples"], entry["raw_data"]["bytes"], entry["zip_data"]["bytes"] = 1000, 64 << 20, 40 << 20
    return dict(entry)


def part_shards(template: dict[str, Any], part: str, n: int) -> list[dict[str, Any]]:
    """``n`` shard entries of ``part``, named like the datasink names them (root-relative paths)."""
    out = []
    for i in range(n):
        e = json.loads(json.dumps(template))
        e["raw_data"]["basename"] = f"parts/{part}/{i // 64:016x}/shard.{i % 64:05d}.mds"
        e["zip_data"]["basename"] = e["raw_data"]["basename"] + ".zstd"
        e["raw_data"]["hashes"]["xxh64"] = e["zip_data"]["hashes"]["xxh64"] = f"{i:016x}"
        out.append(e)
    return out


def part_entry(part: str, shards: list[dict[str, Any]]) -> dict[str, Any]:
    """The catalog entry of a part as ``commit_part`` makes it (a config of ingest's size)."""
    return {
        "id": part,
        "archive_id": f"archive-{part[-6:]}",
        "config_hash": "0" * 16,
        "config": {"planes": "auto", "windows": ["raw"], "shards": {"size_limit": 64 << 20}, "x": "x" * 600},
        "committed_at": "2026-12-04T00:00:00Z",
        "samples": sum(s["samples"] for s in shards),
        "shards": len(shards),
        "bytes": sum(s["zip_data"]["bytes"] for s in shards),
        "series": 100,
        "series_ingested": 100,
        "manifest": f"manifests/{part}.parquet",
        "counts": {"CT|axial|raw|-": 1000},
        "schema_version": "1.0",
        "index": f"parts/{part}/index.json",
    }


def build(root: Path, *, shards: int, part_shards_n: int, layout: str) -> None:
    """A synthetic dataset of ``shards`` shards in ``layout`` ("log" or "root_index")."""
    from radforge.sharder.catalog import Catalog, commit
    from radforge.sharder.commit_log import append_part, write_part_index
    from radforge.storage import resolve

    loc = resolve(str(root))
    template = shard_template()
    parts, all_shards = [], []
    for p in range(max(1, shards // part_shards_n)):
        pid = PART_ID.format(p)
        entries = part_shards(template, pid, min(part_shards_n, shards))
        write_part_index(loc, pid, entries)
        if layout == "log":
            append_part(loc, part_entry(pid, entries))
        else:
            parts.append(part_entry(pid, entries))
            all_shards += entries
    if layout == "root_index":
        commit(loc, Catalog(all_shards, parts))


def _peak_rss_kb() -> int:
    """This process's peak RSS (VmHWM): unlike ``ru_maxrss``, not inherited from the parent across exec."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        return round(next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024, 1)


def measure_loader(root: str, how: str, cache_dir: str) -> dict[str, Any]:
    """One loader open in this (fresh) process: the trainer's (``table_*``) or streaming's."""
    import os

    import numpy as np
    from streaming import StreamingDataset

    from radforge.sharder.mixing import MixSpec, SourceSpec, open_sources
    from radforge.trainer.data import MixSamples
    from radforge.trainer.sampling import batch_positions

    base = _status_mb("VmRSS")  # after the imports every trainer process has (torch, streaming, views)
    if how == "streaming":
        for k, v in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "LOCAL_RANK": "0"}.items():
            os.environ.setdefault(k, v)
        t0 = time.perf_counter()
        dataset = StreamingDataset(local=root, batch_size=32, shuffle=True)
        seconds, shards = time.perf_counter() - t0, dataset.num_shards
    else:
        t0 = time.perf_counter()
        sources = open_sources(MixSpec(sources=[SourceSpec(uri=root)]), cache_dir=cache_dir)
        samples = MixSamples(
            sources,
            make_item=dict,
            collate=list,
            per_rank=32,
            rank=0,
            world=8,
            seed=0,
            shuffle=True,
            cache_dir=cache_dir,
            cache_limit=None,
        )
        samples.begin(0, 0)
        assert samples.order is not None
        rows, _ = samples.order.locate(batch_positions(0, rank=0, world=8, per_rank=32))
        files = {sources[0].table.stored_path(int(r)) for r in np.unique(rows)}  # the first batch's shards
        seconds, shards = time.perf_counter() - t0, len(sources[0].table)
        assert files
    return {
        "s": round(seconds, 4),
        "shards": shards,
        "rss_mb": round(_peak_rss_kb() / 1024, 1),
        "base_mb": base,
        "private_mb": _status_mb("RssAnon"),
        "shared_mb": _status_mb("RssFile"),
    }


def _io_written() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("wchar"))


def measure(root: str, what: str, layout: str, commit_shards: int) -> dict[str, Any]:
    """One measurement in this (fresh) process: seconds, bytes written, peak RSS (MB)."""
    from radforge.sharder.catalog import load_catalog
    from radforge.sharder.commit_log import read_tail, write_checkpoint
    from radforge.sharder.datasink import commit_part
    from radforge.storage import resolve

    loc = resolve(root)
    w0, t0 = _io_written(), time.perf_counter()
    if what == "commit":
        pid = "p-ffffffffffffffff"
        shards = part_shards(shard_template(), pid, commit_shards)
        w0, t0 = _io_written(), time.perf_counter()  # the part's shard entries exist before the commit
        series = [{"series_key": f"s{i}", "status": "ingested", "reason": None} for i in range(100)]
        task = {"shards": shards, "series": series, "samples": 1000, "bytes": 1 << 30, "counts": {"x": 1}}
        commit_part(loc, part_id=pid, part_info={"archive_id": "new"}, task_returns=[task], layout=layout)
    elif what == "checkpoint":
        write_checkpoint(loc, read_tail(loc, full=False)[0].seq)
    else:
        catalog = load_catalog(loc)
        if layout == "root_index":
            assert catalog.shards  # the old layout parses every shard entry to open
    seconds = time.perf_counter() - t0
    written = _io_written() - w0
    return {"s": round(seconds, 4), "bytes": written, "rss_mb": round(_peak_rss_kb() / 1024, 1)}


def fresh(root: Path, what: str, layout: str, commit_shards: int) -> dict[str, Any]:
    """:func:`measure` (or :func:`measure_loader`) in a fresh Python process (no memory of earlier work)."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.catalog_scale", "--measure", what, "--layout", layout, str(root)]
        + ["--commit-shards", str(commit_shards), "--workdir", str(root.parent / f"cache-{root.name}")],
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def extrapolate(points: dict[int, float], n: int) -> float:
    """Least-squares line through ``points`` (size -> value), evaluated at ``n``."""
    xs, ys = list(points), list(points.values())
    if len(xs) == 1:
        return ys[0]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    return my + slope * (n - mx)


def _fit_points(name: str, series: dict[str, float]) -> dict[int, float]:
    """The sizes a line is fitted through: for the log, those above the root-index threshold.

    Below it a log commit also rewrites the (bounded) root index, so its cost there says nothing
    about large datasets.
    """
    from radforge.sharder.commit_log import ROOT_INDEX_MAX_SHARDS

    points = {int(n): v for n, v in series.items()}
    above = {n: v for n, v in points.items() if n > ROOT_INDEX_MAX_SHARDS}
    return above if name == "after" and above else points


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000,100000", help="dataset sizes in shards, comma-separated")
    ap.add_argument("--before-max", type=int, default=100000, help="largest size built in the old layout")
    ap.add_argument("--part-shards", type=int, default=1000, help="shards per part of the synthetic catalog")
    ap.add_argument("--commit-shards", type=int, default=100, help="shards of the measured commit's part")
    ap.add_argument("--streaming-max", type=int, default=100000, help="largest size StreamingDataset opens")
    ap.add_argument("--workdir", help="where to build (default: a temporary folder, removed after)")
    ap.add_argument("--measure", choices=[*MEASURES, *LOADERS], help=argparse.SUPPRESS)
    ap.add_argument("--layout", default="log", help=argparse.SUPPRESS)
    ap.add_argument("root", nargs="?", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure in LOADERS:
        print(json.dumps(measure_loader(args.root, args.measure, args.workdir)))
        return
    if args.measure:
        print(json.dumps(measure(args.root, args.measure, args.layout, args.commit_shards)))
        return
    work = Path(args.workdir or tempfile.mkdtemp(prefix="catalog-scale-"))
    results: dict[str, dict[str, dict[str, Any]]] = {}
    try:
        for n in (int(s) for s in args.sizes.split(",")):
            for layout in ("log", "root_index"):
                if layout == "root_index" and n > args.before_max:
                    continue
                root = work / f"{layout}-{n}"
                t0 = time.perf_counter()
                build(root, shards=n, part_shards_n=args.part_shards, layout=layout)
                built = time.perf_counter() - t0
                row: dict[str, Any] = {"build_s": round(built, 1)}
                loaders = ["table_cold", "table_warm"] if layout == "log" else []
                if layout == "root_index" and n <= args.streaming_max:
                    loaders = ["streaming"]
                for what in ["open", *loaders, "commit"] + (["checkpoint"] if layout == "log" else []):
                    row[what] = fresh(root, what, layout, args.commit_shards)
                results.setdefault(layout, {})[str(n)] = row
                print(f"{layout:>10} {n:>8} shards: {json.dumps(row)}", file=sys.stderr)
                shutil.rmtree(root)
                shutil.rmtree(work / f"cache-{root.name}", ignore_errors=True)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)

    def metric(layout: str, what: str, key: str) -> dict[str, float]:
        return {n: r[what][key] for n, r in results.get(layout, {}).items()}

    names = {"after": "log", "before": "root_index"}
    line: dict[str, Any] = {"bench": "catalog_scale", "part_shards": args.part_shards}
    line["commit_shards"] = args.commit_shards
    for key, what, field in (
        ("commit_s", "commit", "s"),
        ("commit_bytes", "commit", "bytes"),
        ("commit_rss_mb", "commit", "rss_mb"),
        ("catalog_open_s", "open", "s"),
        ("catalog_open_rss_mb", "open", "rss_mb"),
        ("checkpoint_s", "checkpoint", "s"),
        ("checkpoint_bytes", "checkpoint", "bytes"),
    ):
        layouts = {"after": "log"} if what == "checkpoint" else names
        line[key] = {name: metric(layout, what, field) for name, layout in layouts.items()}
    loader_rows = {"table_cold": "log", "table_warm": "log", "streaming": "root_index"}
    for key, field in (
        ("loader_open_s", "s"),
        ("loader_rss_mb", "rss_mb"),
        ("loader_private_mb", "private_mb"),
        ("loader_shared_mb", "shared_mb"),
    ):
        line[key] = {how: metric(layout, how, field) for how, layout in loader_rows.items()}
    # the loader's own memory: its process's peak over what the imports left (torch, streaming, views)
    line["loader_own_mb"] = {
        how: {
            n: round(r[how]["rss_mb"] - r[how]["base_mb"], 1)
            for n, r in results.get(layout, {}).items()
            if how in r
        }
        for how, layout in loader_rows.items()
    }
    line["loader_base_mb"] = metric("log", "table_warm", "base_mb")
    line["extrapolated_3m"] = {
        key: {
            name: round(extrapolate(_fit_points(name, series), 3_000_000), 3)
            for name, series in line[key].items()
            if series
        }
        for key in ("commit_s", "commit_bytes", "commit_rss_mb", "catalog_open_s", "catalog_open_rss_mb")
        + ("loader_open_s", "loader_rss_mb", "loader_own_mb", "loader_private_mb", "loader_shared_mb")
    }
    print(json.dumps(line))


if __name__ == "__main__":
    main()
