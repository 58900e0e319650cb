"""Training throughput: `radforge train` on real shards vs the same step fed from in-memory tensors.

CPU (always): a phantom archive (``--series`` CT/MR series of ``--slices`` slices at ``--size`` px)
is ingested into a local MDS dataset, then

- radforge: ``radforge train``'s loop on it, on a Ray Train CPU worker (``--mode ray``, default)
  or in this process (``--mode process``), views built in ``--loader-workers`` loader processes;
  steady-state images/s and data-wait fraction (time blocked on the loader / step time) from the
  run's own JSONL metrics, the first ``--warmup`` steps dropped (loader and worker start-up);
- floor: the same ``train_step`` with the same recipe, on micro-batches taken from the same loader
  and held in memory: what the step alone allows, with the same torch thread count as the worker
  (Ray gives a 1-CPU worker one thread).

Also the loader's own rate (``loader_images_per_s``: views built, no step), which tells a slow data
path from one that merely competes with the step for the same cores.

Target: data-wait fraction under 0.10, i.e. the data path hides behind the step.

GPU (when CUDA is available; no Ray needed): the loop in this process on ``--gpu-dataset`` (an
MDS dataset, e.g. carried to the GPU machine) with the ViT-L recipe in bf16, global batch
``--gpu-batch`` in micro-batches of ``--gpu-micro``: images/s, MFU (analytic FLOPs, trainer/flops.py),
data-wait fraction and peak memory, against the same steps on in-memory batches.

    .venv/bin/python -m bench.train_throughput [--mode ray|process] [--steps 30] [--size 128]

Ends with one JSON line: {"bench": "train_throughput", "images_per_s", "floor_images_per_s",
"data_wait_fraction", ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def make_dataset(root: Path, *, series: int, slices: int, size: int) -> str:
    """Ingest ``series`` phantom series (CT and MR alternating) into ``root``/ds; returns its path."""
    from radforge.ingest.config import load_config
    from radforge.ingest.pipeline import run_ingest
    from radforge.synthetic.dicom import write_dicom_series
    from radforge.synthetic.phantom import ct_phantom, mr_phantom

    archive = root / "archive"
    for i in range(series):
        phantom = (ct_phantom if i % 2 == 0 else mr_phantom)(shape=(slices, size, size), seed=i)
        write_dicom_series(phantom, archive / f"s{i}", seed=i)
    summary = run_ingest(str(archive), str(root / "ds"), load_config())
    assert summary.committed
    return str(root / "ds")


def steady(records: list[dict[str, Any]], *, warmup: int) -> dict[str, float]:
    """Images/s and data-wait fraction over the records after ``warmup`` steps (time-weighted)."""
    timed = records[warmup:] or records
    total = sum(r["step_time_s"] for r in timed)
    return {
        "images_per_s": sum(r["global_batch"] for r in timed) / total,
        "data_wait_fraction": sum(r["data_wait_fraction"] * r["step_time_s"] for r in timed) / total,
        "steps_timed": len(timed),
    }


def loader_rate(cfg: Any, *, batches: int) -> float:
    """Images/s the loader alone delivers (views built in ``data.loader_workers`` processes, no step)."""
    from radforge.trainer.build import build_run_loader

    plan = cfg.batch.plan(1)
    loader = build_run_loader(cfg, plan)
    n, start = 0, 0.0
    while n <= batches:
        for _ in loader:
            if n == 0:
                start = time.perf_counter()  # after start-up and the first batch
            n += 1
            if n > batches:
                break
    return plan.per_worker * batches / (time.perf_counter() - start)


def floor(cfg: Any, *, steps: int, warmup: int, threads: int, device: str = "cpu") -> float:
    """Images/s of ``train_step`` alone on micro-batches from ``cfg``'s loader, held in memory."""
    from radforge.trainer.build import build_run_loader, build_train_state
    from radforge.trainer.step import train_step

    plan = cfg.batch.plan(1)
    loader = build_run_loader(cfg, plan, num_workers=0)
    batches = []
    for item in loader:
        batches.append([mb.to(device) for mb in item["micro"]])
        if len(batches) == 4:
            break
    del loader
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        state = build_train_state(cfg.recipe, global_batch_size=cfg.batch.global_size, device=device, seed=0)
        times = []
        for i in range(steps):
            start = time.perf_counter()
            train_step(state, batches[i % len(batches)])
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    timed = times[warmup:] or times
    return cfg.batch.global_size * len(timed) / sum(timed)


def cpu_run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from radforge.trainer.loop import read_metrics, run_training
    from radforge.trainer.run_config import load_train_config

    dataset = make_dataset(tmp, series=args.series, slices=args.slices, size=args.size)
    cfg = load_train_config(
        CONFIGS / "tiny-cpu.yaml",
        overrides=[
            f"data.mix.sources=[{{uri: '{dataset}'}}]",
            f"data.cache_dir={tmp / 'cache'}",
            f"data.loader_workers={args.loader_workers}",
            f"output={tmp / 'run'}",
            f"batch.global_size={args.batch}",
            f"batch.micro_size={args.micro}",
            f"steps={args.steps}",
            f"checkpoint.every={args.steps}",
            "workers=1",
        ],
    )
    if args.mode == "ray":
        from radforge.trainer.ray_launcher import launch

        result = launch(cfg, max_failures=0, storage_path=str(tmp / "ray"))
        if result.error is not None:
            raise result.error
        threads = 1  # Ray gives a 1-CPU worker OMP_NUM_THREADS=1
    else:
        run_training(cfg)
        threads = torch.get_num_threads()
    records = read_metrics(str(tmp / "run"))
    measured = steady(records, warmup=args.warmup)
    floor_ips = floor(cfg, steps=args.floor_steps, warmup=2, threads=threads)
    loader_ips = loader_rate(cfg, batches=20)
    return {
        "setup": (
            f"tiny-cpu recipe, {args.series} phantom series x {args.slices} slices at {args.size} px, "
            f"global batch {args.batch} (micro {args.micro}), {args.steps} steps, mode {args.mode}, "
            f"{args.loader_workers} loader process(es), step threads {threads}"
        ),
        **{k: round(v, 4) if isinstance(v, float) else v for k, v in measured.items()},
        "floor_images_per_s": round(floor_ips, 2),
        "ratio_vs_floor": round(measured["images_per_s"] / floor_ips, 3),
        "loader_images_per_s": round(loader_ips, 1),
    }


def gpu_run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """ViT-L steps on real shards in this process (no Ray): images/s, MFU, data wait, memory."""
    from radforge.trainer.loop import run_training
    from radforge.trainer.run_config import load_train_config

    cfg = load_train_config(
        CONFIGS / "vit-l.yaml",
        overrides=[
            f"data.mix.sources=[{{uri: '{args.gpu_dataset}'}}]",
            f"data.cache_dir={tmp / 'gpu-cache'}",
            f"data.loader_workers={args.gpu_loader_workers}",
            f"output={tmp / 'gpu-run'}",
            f"batch.global_size={args.gpu_batch}",
            f"batch.micro_size={args.gpu_micro}",
            f"steps={args.gpu_steps}",
            f"checkpoint.every={args.gpu_steps + 1}",  # no checkpoint: the end one only
            "parallel=replicate",
            "workers=1",
            "recipe.compute.fused_optimizer=true",
        ],
    )
    summary = run_training(cfg)
    measured = steady(summary.metrics, warmup=args.warmup)
    mfu = [r["mfu"] for r in summary.metrics[args.warmup :] if r["mfu"] is not None]
    return {
        "size": "vit_large",
        "global_batch": args.gpu_batch,
        "micro_batch": args.gpu_micro,
        **{k: round(v, 4) if isinstance(v, float) else v for k, v in measured.items()},
        "mfu": round(statistics.median(mfu), 3) if mfu else None,
        "gpu_memory_gib": round(summary.metrics[-1]["gpu_memory_gib"], 2),
        "floor_images_per_s": round(floor(cfg, steps=10, warmup=2, threads=1, device="cuda"), 1),
        "device": torch.cuda.get_device_name(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--mode", choices=["ray", "process"], default="ray")
    parser.add_argument("--series", type=int, default=16)  # one epoch spans the run (see BENCHMARKS)
    parser.add_argument("--slices", type=int, default=32)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--micro", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--floor-steps", type=int, default=12)
    parser.add_argument("--loader-workers", type=int, default=1)
    parser.add_argument("--gpu-dataset", help="MDS dataset for the GPU part (default: the CPU part's)")
    parser.add_argument("--gpu-batch", type=int, default=256)
    parser.add_argument("--gpu-micro", type=int, default=64)
    parser.add_argument("--gpu-steps", type=int, default=20)
    parser.add_argument("--gpu-loader-workers", type=int, default=8)
    args = parser.parse_args()

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RADFORGE_SALT", "bench-train-throughput")  # phantom data, no real identities
    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        result: dict[str, Any] = {"bench": "train_throughput"}
        if not args.gpu_dataset or not torch.cuda.is_available():
            result |= cpu_run(args, tmp)
        if torch.cuda.is_available():
            args.gpu_dataset = args.gpu_dataset or str(tmp / "ds")
            result["gpu"] = gpu_run(args, tmp)
            for key in ("images_per_s", "floor_images_per_s", "data_wait_fraction"):
                result.setdefault(key, result["gpu"][key])  # GPU-only run: its figures on top
        print(json.dumps(result))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
