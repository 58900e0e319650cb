"""One-call GPU check: precision, memory/MFU, data wait, a learning run, resume, compile — without Ray.

Made for a first, short, unattended session on one GPU (issue 18): every phase runs in its own
try/except with a time limit, results are rewritten to ``OUT/gpu_check.json`` and
``OUT/gpu_check.md`` after every phase (a killed run still leaves what finished), and phases that
no longer fit in ``--budget-s`` are skipped and recorded as such. Phases, most important first:

1. ``precision``  the same weights and batch in fp32, bf16 autocast and FSDP2 bf16 (``fully_shard``
                  on a one-rank group: NCCL on CUDA, gloo on CPU): every loss term, the updated
                  weights, the sharded teacher's EMA identity, whether CLS tokens at init are bitwise
                  identical (KoLeo degenerates then)
2. ``recipes``    ViT-B/16 and ViT-L/16 at 224 in bf16 (the shipped recipes, their multi-crop views):
                  step time, images/s, MFU (analytic FLOPs, ``trainer/flops.py``), peak memory; ViT-g
                  with FSDP2 on one device at a small batch (an OOM is a result, not a crash)
3. ``data_wait``  the real loop and loader (MosaicML Streaming) over a synthetic MDS dataset written
                  to local disk, feeding ViT-B steps: data-wait fraction
4. ``learning``   200 ViT-S steps of the real loop: the loss falls, the teacher does not collapse
5. ``resume``     save at step k, resume, compare losses and weights at k + n with an uninterrupted run
6. ``compile``    ``torch.compile`` per block on vs off, ViT-B step time (last: it is slow)
7. ``profile``    where a ViT-L step's device time goes (torch.profiler: time per kernel family,
                  the top kernels in ``OUT/profile_vit_l.txt``), and ViT-L with compiled blocks at
                  twice the batch: the MFU the recipe reaches once kernels are fused

``--dry-run`` runs every phase on the CPU at tiny sizes (same code paths but the CUDA-only ones);
``tests/bench/test_gpu_check.py`` runs it, so the check cannot rot. On a GPU machine without the
project installed, ``bench/gpu_check.sh OUT_DIR`` sets up the imports (docs/BENCHMARKS.md).

    python -m bench.gpu_check --out OUT [--dry-run] [--budget-s 420] [--phases precision,recipes]

Ends with one JSON line: {"bench": "gpu_check", "device": ..., "phases": {name: {"status": ...}}}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from radforge.trainer import ViewBatch, build_train_state, load_recipe, train_step
from radforge.trainer.flops import PEAK_FLOPS, step_flops
from radforge.trainer.parallel import compile_blocks, compile_heads, scatter_full_state, shard_network
from radforge.trainer.recipe import RecipeConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PHASES = ("precision", "recipes", "data_wait", "learning", "resume", "compile", "profile")
# seconds each phase may take on a GPU (the dry run is far below); the global --budget-s caps the sum
PHASE_LIMIT_S = {
    "precision": 60, "recipes": 120, "data_wait": 90, "learning": 90, "resume": 75, "compile": 150,
    "profile": 150,
}  # fmt: skip
# tiny stand-ins for the dry run: the shipped recipe files, shrunk to a CPU-sized ViT and heads
TINY_MODEL = (
    "model.embed_dim=32", "model.depth=2", "model.num_heads=2", "model.img_size=32", "model.patch_size=8",
    "heads.num_prototypes=64", "heads.hidden_dim=64", "heads.bottleneck_dim=32",
    "crops.global_size=32", "crops.local_size=16", "crops.local_count=2",
)  # fmt: skip


class PhaseTimeout(TimeoutError):
    """A phase ran past its time limit (raised by SIGALRM inside the phase)."""


@dataclass
class Check:
    """What every phase needs: device, sizes, scratch folder, deadline and the results so far."""

    device: torch.device
    dry: bool
    out: Path
    tmp: Path
    budget_s: float
    start: float = field(default_factory=time.perf_counter)
    result: dict[str, Any] = field(default_factory=dict)
    dataset: str | None = None
    # what the running phase has measured so far: kept in the results if the phase fails later
    partial: dict[str, Any] = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def left_s(self) -> float:
        return self.budget_s - (time.perf_counter() - self.start)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def recipe(self, name: str, *overrides: str) -> RecipeConfig:
        """A shipped recipe file in bf16 (tiny model and heads in the dry run)."""
        base = [f"compute.precision={'bf16'}", f"compute.fused_optimizer={self.cuda}"]
        tiny = list(TINY_MODEL) if self.dry else []
        return load_recipe(CONFIGS / name, overrides=[*base, *tiny, *overrides])


# ---- helpers ------------------------------------------------------------------------------------


def _finite(x: Any) -> Any:
    """JSON-safe: non-finite floats become strings ("nan", "inf") so every line parses strictly."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


def ensure_group(device: torch.device) -> None:
    """A one-rank process group (NCCL on CUDA, gloo on CPU) for FSDP2, as ``radforge train`` makes alone."""
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)


def one_rank_shard(device: torch.device, *, param_dtype: torch.dtype | None) -> Callable[[Any], object]:
    """``shard_network`` over a one-device mesh (FSDP2 with ``param_dtype`` compute)."""
    from torch.distributed.device_mesh import init_device_mesh

    ensure_group(device)
    mesh = init_device_mesh(device.type, (1,))
    return partial(shard_network, mesh=mesh, param_dtype=param_dtype, reduce_dtype=torch.float32)


def synthetic_views(cfg: RecipeConfig, batch: int, *, device: torch.device, seed: int = 0) -> ViewBatch:
    """A batch shaped like the recipe's multi-crop views (random pixels, recipe-sized masks)."""
    c, p = cfg.crops, cfg.model.patch_size
    g = torch.Generator().manual_seed(seed)
    glob = torch.randn(c.global_count * batch, 1, c.global_size, c.global_size, generator=g)
    loc = torch.randn(c.local_count * batch, 1, c.local_size, c.local_size, generator=g)
    masks = torch.rand(c.global_count * batch, (c.global_size // p) ** 2, generator=g) < 0.3
    masks[batch:] = False  # half the global crops unmasked, as the recipe does
    views = ViewBatch(
        global_crops=glob, local_crops=loc, masks=masks, n_global=c.global_count, n_local=c.local_count
    )
    return views.to(device)


def peak_flops_of(device: torch.device, *, dry: bool) -> tuple[float | None, str, float]:
    """(peak dense bf16 FLOP/s, where it came from, measured matmul FLOP/s) for MFU.

    The table of ``trainer/flops.py`` by device name; for an unknown device the measured rate of
    a large bf16 matmul stands in (and is always recorded, as a sanity check of the table).
    """
    n = 256 if dry else 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(2):
        a @ b
    reps = 3 if dry else 20
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    measured = 2 * n**3 * reps / (time.perf_counter() - t0)
    if device.type != "cuda":
        return None, "cpu: no table entry", measured
    name = torch.cuda.get_device_name(device)
    table = next((v for k, v in PEAK_FLOPS["bf16"].items() if k in name), None)
    if table is not None:
        return table, f"table ({name})", measured
    return measured, f"measured {n}^3 bf16 matmul ({name} not in the table)", measured


def timed_steps(check: Check, state: Any, views: Any, *, warmup: int, steps: int) -> list[float]:
    """Wall time of ``steps`` train steps after ``warmup`` ones, each ended by a device sync."""
    for _ in range(warmup):
        train_step(state, views)
    check.sync()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        metrics = train_step(state, views)
        check.sync()
        times.append(time.perf_counter() - t0)
    if not math.isfinite(metrics["loss"]):
        raise FloatingPointError(f"non-finite loss {metrics['loss']}")
    return times


def _free(check: Check) -> None:
    import gc

    gc.collect()
    if check.cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(check.device)


def _full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a (possibly FSDP2-sharded) parameter, fp32 on the CPU."""
    full = t.full_tensor() if hasattr(t, "full_tensor") else t
    return full.detach().to("cpu", torch.float32, copy=True)  # a copy: never the live parameter


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a) if a else 0.0


def _weights(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: _full(p) for n, p in net.named_parameters()}


# ---- 1. precision ---------------------------------------------------------------------------------


def _precision_variant(
    check: Check, cfg: RecipeConfig, kind: str, batch: int, *, initial: dict[str, torch.Tensor] | None = None
) -> dict[str, Any]:
    """One step from the common weights in one precision: loss terms, CLS identity, update, EMA identity.

    ``initial`` (the fp32 variant's initial student) is loaded into student and teacher: a sharded
    network initialises from other draws, and only the same weights make the differences a
    measurement of precision.
    """
    shard = one_rank_shard(check.device, param_dtype=torch.bfloat16) if kind == "fsdp2_bf16" else None
    if kind == "fp32":
        cfg = cfg.model_copy(update={"compute": cfg.compute.model_copy(update={"precision": "fp32"})})
    state = build_train_state(cfg, global_batch_size=batch, device=check.device, seed=0, shard=shard)
    if initial is not None:
        buffers = {n: b for n, b in state.student.named_buffers()}
        scatter_full_state(state.student, {**initial, **buffers})
        scatter_full_state(state.teacher, {**initial, **buffers})
    if kind == "bf16_autocast":
        state.autocast_dtype = torch.bfloat16  # build_train_state sets it on CUDA only; CPU autocast works
    state.step = state.schedules.total_steps // 2  # past warm-up and the frozen prototypes: a real update
    views = synthetic_views(cfg, batch, device=check.device)
    before = _weights(state.student)
    with torch.no_grad():  # CLS tokens of the initial student, in this variant's compute precision
        dtype = state.autocast_dtype
        with torch.autocast(check.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            cls = state.student.backbone.forward_features(views.global_crops).cls.float()
    distinct = int(torch.unique(cls, dim=0).shape[0])
    teacher_before = _weights(state.teacher)
    momentum = state.schedules.at(state.step).momentum
    metrics = train_step(state, views)
    student_after, teacher_after = _weights(state.student), _weights(state.teacher)
    expected = {k: momentum * teacher_before[k] + (1 - momentum) * student_after[k] for k in teacher_after}
    out = {
        "terms": {k: metrics[k] for k in ("loss", "dino", "ibot", "koleo", "sigreg")},
        "grad_norm": metrics["grad_norm"],
        "cls_rows": len(cls),
        "cls_distinct_rows": distinct,
        "cls_all_identical": distinct == 1,
        "ema_identity_max_diff": _max_diff(expected, teacher_after),
    }
    return {"out": out, "before": before, "after": student_after}


def phase_precision(check: Check) -> dict[str, Any]:
    """fp32 vs bf16 autocast vs FSDP2 bf16 from the same weights and batch (ViT-B recipe)."""
    batch = 2 if check.dry else 16
    cfg = check.recipe("recipe-vit-b.yaml")
    result = check.partial
    result.update(recipe="recipe-vit-b.yaml", batch=batch)
    variants = {}
    for kind in ("fp32", "bf16_autocast", "fsdp2_bf16"):
        initial = variants["fp32"]["before"] if kind != "fp32" else None
        variants[kind] = _precision_variant(check, cfg, kind, batch, initial=initial)
        result[kind] = variants[kind]["out"]
    ref = variants["fp32"]
    for name, v in variants.items():
        entry = dict(v["out"])
        entry["same_initial_weights_as_fp32"] = _max_diff(ref["before"], v["before"]) == 0.0
        if name != "fp32":
            entry["term_diff_vs_fp32"] = {
                k: abs(entry["terms"][k] - ref["out"]["terms"][k]) for k in entry["terms"]
            }
            entry["update_max_diff_vs_fp32"] = _max_diff(ref["after"], v["after"])
        result[name] = entry
    result["ok"] = all(
        math.isfinite(v["out"]["terms"]["loss"]) and v["out"]["ema_identity_max_diff"] < 1e-5
        for v in variants.values()
    )
    del variants
    _free(check)
    return result


# ---- 2. memory and MFU of the shipped recipes ---------------------------------------------------------


def _recipe_run(
    check: Check, name: str, *, batch: int, steps: int, shard: bool, peak: float | None
) -> dict[str, Any]:
    cfg = check.recipe(name)
    _free(check)
    sharder = one_rank_shard(check.device, param_dtype=torch.bfloat16) if shard else None
    out: dict[str, Any] = {"recipe": name, "batch": batch, "size": cfg.model.size, "fsdp2": shard}
    out["shape"] = (
        f"{cfg.model.size}/{cfg.model.patch_size}, {cfg.crops.global_count}x{cfg.crops.global_size} + "
        f"{cfg.crops.local_count}x{cfg.crops.local_size} crops, {cfg.heads.num_prototypes} prototypes"
    )
    try:
        state = build_train_state(cfg, global_batch_size=batch, device=check.device, seed=0, shard=sharder)
        state.step = state.schedules.total_steps // 2
        views = synthetic_views(cfg, batch, device=check.device)
        times = timed_steps(check, state, views, warmup=1, steps=steps)
    except torch.OutOfMemoryError as err:
        out.update(fits=False, error=f"OOM: {str(err).splitlines()[0]}")
        return out
    finally:
        state = views = None  # type: ignore[assignment]
    t = statistics.median(times)
    flops = step_flops(cfg, images=batch)
    out.update(
        fits=True,
        step_ms=round(1e3 * t, 2),
        images_per_s=round(batch / t, 1),
        tflops_per_step=round(flops / 1e12, 3),
        mfu=round(flops / t / peak, 4) if peak else None,
        peak_mem_gib=round(torch.cuda.max_memory_allocated(check.device) / 2**30, 2) if check.cuda else None,
        steps_timed=len(times),
    )
    return out


def phase_recipes(check: Check) -> dict[str, Any]:
    """ViT-B/16 and ViT-L/16 at 224 in bf16 (replicated), ViT-g memory fit with FSDP2 on one device."""
    peak, source, measured = peak_flops_of(check.device, dry=check.dry)
    result = check.partial
    result.update(
        peak_tflops=round(peak / 1e12, 1) if peak else None,
        peak_source=source,
        measured_matmul_tflops=round(measured / 1e12, 2),
    )
    steps = 1 if check.dry else 8
    runs = [
        ("vit_b", "recipe-vit-b.yaml", 2 if check.dry else 128, False),
        ("vit_l", "recipe-vit-l.yaml", 2 if check.dry else 64, False),
        ("vit_g_fsdp2", "recipe-vit-g.yaml", 2 if check.dry else 16, True),
    ]
    for key, name, batch, shard in runs:
        timed = 1 if check.dry or shard else steps
        result[key] = _recipe_run(check, name, batch=batch, steps=timed, shard=shard, peak=peak)
        _free(check)
    result["ok"] = all(
        result[k].get("fits") is not None and (k == "vit_g_fsdp2" or result[k]["fits"]) for k, *_ in runs
    )
    return result


# ---- 3. data wait with the real loader ------------------------------------------------------------


def write_dataset(root: Path, *, samples: int, size: int) -> str:
    """A committed MDS dataset of CT phantom slices at ``root``, written with the sharder's writer (no Ray).

    Uncompressed shards (zstd decoding would be a cost of the data, not of the loader under test).
    """
    from radforge.sharder.catalog import Catalog, commit
    from radforge.sharder.mds import SampleEncoder, ShardWriter
    from radforge.sharder.schema import COLUMNS, SCHEMA_VERSION
    from radforge.storage import resolve
    from radforge.synthetic.phantom import ct_phantom

    volumes = [ct_phantom(shape=(32, size, size), seed=s).array for s in range(2)]
    part = "p0"
    folder = str(root / "parts" / part / "t0")
    writer = ShardWriter(folder, encoder=SampleEncoder(COLUMNS), compression=None, size_limit=16 << 20)
    cell = 16
    for i in range(samples):
        vol = volumes[i % len(volumes)]
        image = np.ascontiguousarray(vol[2 + (i // len(volumes)) % (len(vol) - 4)]).astype(np.int16)
        h, w = image.shape
        body = (image > -500).astype(np.float32)
        fg = body.reshape(h // cell, cell, w // cell, cell).mean(axis=(1, 3))
        meta = {
            "schema": SCHEMA_VERSION, "modality": "CT", "plane": "axial", "window": "raw",
            "fg_patch": cell, "fg_fraction": float(body.mean()), "body_box": None,
            "slice_index": i, "pixel_spacing": [0.8, 0.8], "slice_spacing": 2.5,
        }  # fmt: skip
        writer.add(writer.encoder.encode({
            "key": f"gpucheck{i % len(volumes)}/axial/{i:05d}/raw",
            "image": image,
            "fg": np.round(fg * 255).astype(np.uint8),
            "meta": meta,
        }))  # fmt: skip
    shards = writer.finish()
    for shard in shards:
        shard["raw_data"]["basename"] = f"parts/{part}/t0/" + shard["raw_data"]["basename"]
    entry = {"id": part, "samples": samples, "shards": len(shards), "archive_id": "gpu-check-synthetic"}
    commit(resolve(str(root)), Catalog(shards=shards, parts=[entry]))
    return str(root)


def train_config(check: Check, config: str, output: Path, *overrides: str) -> Any:
    """A run config for this process alone on the check's dataset (no Ray, no eval, no checkpoint)."""
    from radforge.trainer.run_config import load_train_config

    assert check.dataset is not None
    tiny = [f"recipe.{o}" for o in TINY_MODEL] if check.dry else []
    return load_train_config(
        CONFIGS / config,
        overrides=[
            f"data.mix.sources=[{{uri: '{check.dataset}'}}]",
            f"data.cache_dir={check.tmp / 'cache'}",
            "data.cache_limit=null",
            f"output={output}",
            "workers=1",
            "ray_address=null",
            "eval.every=0",
            "parallel=replicate",
            f"device={check.device.type}",
            "recipe.compute.precision=bf16",
            f"recipe.compute.fused_optimizer={check.cuda}",
            *tiny,
            *overrides,
        ],
    )


def _dataset(check: Check) -> str:
    if check.dataset is None:
        n, size = (64, 64) if check.dry else (2048, 256)
        t0 = time.perf_counter()
        check.dataset = write_dataset(check.tmp / "dataset", samples=n, size=size)
        check.result.setdefault("dataset", {}).update(
            samples=n, size=size, write_s=round(time.perf_counter() - t0, 2)
        )
    return check.dataset


def phase_data_wait(check: Check) -> dict[str, Any]:
    """ViT-B steps of the real loop fed by the real loader: data-wait fraction, images/s."""
    from bench.train_throughput import steady
    from radforge.trainer.loop import run_training

    _dataset(check)
    workers = 1 if check.dry else max(2, min(12, (os.cpu_count() or 4) - 2))
    batch, steps = (4, 4) if check.dry else (64, 24)
    result = check.partial
    for attempt, n in enumerate([workers, 0]):
        output = check.tmp / f"run-data-wait-{attempt}"
        cfg = train_config(
            check, "vit-b.yaml", output,
            f"data.loader_workers={n}", "data.prefetch_factor=4",
            f"batch.global_size={batch}", f"batch.micro_size={batch}",
            f"steps={steps}", f"checkpoint.every={steps + 1}",
        )  # fmt: skip
        try:
            summary = run_training(cfg)
        except Exception as err:  # e.g. a small /dev/shm kills loader processes: measure without them
            result[f"error_with_{n}_workers"] = f"{type(err).__name__}: {err}"
            continue
        finally:
            shutil.rmtree(output, ignore_errors=True)
            _free(check)
        warm = 1 if check.dry else 4
        measured = steady(summary.metrics, warmup=warm)
        mfus = [r["mfu"] for r in summary.metrics[warm:] if r["mfu"] is not None]
        step_only = [r["step_time_s"] * (1 - r["data_wait_fraction"]) for r in summary.metrics[warm:]]
        result.update(
            recipe="vit-b.yaml (recipe-vit-b.yaml)",
            loader_workers=n,
            global_batch=batch,
            steps=steps,
            data_wait_fraction=round(measured["data_wait_fraction"], 4),
            images_per_s=round(measured["images_per_s"], 1),
            step_only_images_per_s=round(batch * len(step_only) / sum(step_only), 1),
            mfu=round(statistics.median(mfus), 4) if mfus else None,
            ok=True,
        )
        return result
    result["ok"] = False
    return result


# ---- 4. learning ------------------------------------------------------------------------------------


def phase_learning(check: Check) -> dict[str, Any]:
    """200 ViT-S steps (the tiny recipe's 200-step schedules, ViT-S/16 at 112 px): loss falls, no collapse."""
    from radforge.trainer.loop import run_training

    _dataset(check)
    steps, batch = (3, 4) if check.dry else (200, 32)
    model = [] if check.dry else [
        "recipe.model.size=vit_small", "recipe.model.embed_dim=null", "recipe.model.depth=null",
        "recipe.model.num_heads=null", "recipe.model.patch_size=16", "recipe.model.img_size=112",
        "recipe.crops.global_size=112", "recipe.crops.local_size=48", "recipe.heads.num_prototypes=1024",
        "recipe.heads.hidden_dim=1024", "recipe.heads.bottleneck_dim=128",
    ]  # fmt: skip
    output = check.tmp / "run-learning"
    cfg = train_config(
        check, "tiny-cpu.yaml", output, *model,
        f"data.loader_workers={1 if check.dry else 8}", "data.prefetch_factor=4",
        f"batch.global_size={batch}", f"batch.micro_size={batch}",
        f"steps={steps}", f"checkpoint.every={steps + 1}",
    )  # fmt: skip
    try:
        records = run_training(cfg).metrics
    finally:
        shutil.rmtree(output, ignore_errors=True)
        _free(check)
    k = max(1, len(records) // 5)
    log_k = math.log(cfg.recipe.heads.num_prototypes)

    def mean(key: str, part: slice) -> float:
        return float(np.mean([r[key] for r in records[part]]))

    first, last = slice(0, k), slice(-k, None)
    keys = ("loss", "dino", "koleo", "sigreg", "cls_std", "teacher_entropy", "prototype_entropy")
    checks = {  # the criteria of tests/trainer/test_learning.py
        "loss_falls": mean("loss", last) < mean("loss", first) - 1.0,
        "cls_std_above_0.5": mean("cls_std", last) > 0.5,
        "teacher_entropy_above_1": mean("teacher_entropy", last) > 1.0,
        "prototypes_in_use": mean("prototype_entropy", last) > 0.5 * log_k,
    }
    return {
        "setup": f"{cfg.recipe.model.size}/{cfg.recipe.model.patch_size} at "
        f"{cfg.recipe.crops.global_size} px, batch {batch}, {steps} steps, tiny-cpu schedules",
        "first": {key: round(mean(key, first), 4) for key in keys},
        "last": {key: round(mean(key, last), 4) for key in keys},
        "log_prototypes": round(log_k, 3),
        "checks": checks,
        "passed": all(checks.values()),
        "images_per_s": round(statistics.median(r["images_per_s"] for r in records), 1),
        "ok": all(math.isfinite(r["loss"]) for r in records),
    }


# ---- 5. bit-exact resume ------------------------------------------------------------------------------


def phase_resume(check: Check) -> dict[str, Any]:
    """k steps, checkpoint, resume to k + n vs k + n uninterrupted: same losses and weights, bit for bit."""
    from radforge.trainer import checkpoint as ckpt
    from radforge.trainer.loop import run_training

    _dataset(check)
    k, n, batch = (2, 2, 4) if check.dry else (3, 3, 16)
    small = [] if check.dry else ["recipe.model.size=vit_small", "recipe.model.embed_dim=null",
                                  "recipe.model.depth=null", "recipe.model.num_heads=null",
                                  "recipe.model.patch_size=16", "recipe.model.img_size=112",
                                  "recipe.crops.global_size=112", "recipe.crops.local_size=48"]  # fmt: skip

    def run(output: Path, steps: int) -> Any:
        cfg = train_config(
            check, "tiny-cpu.yaml", output, *small,
            "data.loader_workers=1", f"batch.global_size={batch}", f"batch.micro_size={batch}",
            f"steps={steps}", f"checkpoint.every={k}", "checkpoint.keep=4",
        )  # fmt: skip
        return run_training(cfg)

    whole, split = check.tmp / "resume-whole", check.tmp / "resume-split"
    try:
        straight = run(whole, k + n).metrics
        run(split, k)
        resumed = run(split, k + n)
        saved = [ckpt.load(ckpt.latest(str(p))) for p in (whole, split)]  # type: ignore[arg-type]
    finally:
        _free(check)
    losses_a = [r["loss"] for r in straight[k:]]
    losses_b = [r["loss"] for r in resumed.metrics]
    weights = {
        part: _max_diff(
            {name: t.float() for name, t in saved[0][part].items() if t.is_floating_point()},
            {name: t.float() for name, t in saved[1][part].items() if t.is_floating_point()},
        )
        for part in ("student", "teacher")
    }
    for p in (whole, split):
        shutil.rmtree(p, ignore_errors=True)
    return {
        "k": k,
        "n": n,
        "resumed_from": resumed.resumed_from,
        "losses_uninterrupted": losses_a,
        "losses_resumed": losses_b,
        "loss_max_diff": max(abs(a - b) for a, b in zip(losses_a, losses_b, strict=True)),
        "weights_max_diff": weights,
        "bit_exact": losses_a == losses_b and all(v == 0.0 for v in weights.values()),
        "ok": resumed.resumed_from == k and len(losses_b) == n,
    }


# ---- 6. torch.compile ------------------------------------------------------------------------------------


def phase_compile(check: Check) -> dict[str, Any]:
    """ViT-B step time with ``torch.compile`` per block vs eager (same weights, same batch)."""
    batch, steps = (2, 1) if check.dry else (128, 8)
    cfg = check.recipe("recipe-vit-b.yaml")
    views = synthetic_views(cfg, batch, device=check.device)
    # the dry run compiles with the eager backend: the same dynamo graph capture, no code generation
    kwargs = {"backend": "eager"} if check.dry else {}
    result = check.partial
    result.update(batch=batch, backend=kwargs.get("backend", "inductor"))
    for mode in ("eager", "compiled"):
        state = build_train_state(cfg, global_batch_size=batch, device=check.device, seed=0)
        state.step = state.schedules.total_steps // 2
        t0 = time.perf_counter()
        if mode == "compiled":
            compile_blocks(state.student, **kwargs)
            compile_blocks(state.teacher, **kwargs)
            train_step(state, views)  # compiles
            check.sync()
            result["compile_s"] = round(time.perf_counter() - t0, 1)
        times = timed_steps(check, state, views, warmup=1, steps=steps)
        result[f"{mode}_step_ms"] = round(1e3 * statistics.median(times), 2)
        del state
        _free(check)
    result["speedup"] = round(result["eager_step_ms"] / result["compiled_step_ms"], 3)
    result["ok"] = True
    return result


# ---- 7. where the time goes -----------------------------------------------------------------------

# kernel families by name (CUDA kernel names on a GPU, aten op names on the CPU)
KERNEL_FAMILIES = (
    ("attention", ("flash", "fmha", "attention", "sdpa", "efficient")),
    ("matmul", ("gemm", "matmul", "addmm", "mm", "linear", "cutlass", "sm90", "nvjet")),
    ("softmax", ("softmax",)),
    ("norm", ("layer_norm", "layernorm", "norm")),
    ("optimizer", ("adam", "foreach", "multi_tensor")),
    ("copy_cast", ("copy", "cast", "to_copy", "cat", "index")),
)


def kernel_family(name: str) -> str:
    low = name.lower()
    return next((fam for fam, keys in KERNEL_FAMILIES if any(k in low for k in keys)), "elementwise_other")


def phase_profile(check: Check) -> dict[str, Any]:
    """ViT-L step time by kernel family (torch.profiler), then ViT-L with compiled blocks at 2x batch."""
    from torch.profiler import ProfilerActivity, profile

    batch = 2 if check.dry else 64
    cfg = check.recipe("recipe-vit-l.yaml")
    result = check.partial
    state = build_train_state(cfg, global_batch_size=batch, device=check.device, seed=0)
    state.step = state.schedules.total_steps // 2
    views = synthetic_views(cfg, batch, device=check.device)
    timed_steps(check, state, views, warmup=1, steps=1)
    activities = [ProfilerActivity.CUDA] if check.cuda else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        timed_steps(check, state, views, warmup=0, steps=2)

    def self_time(e: Any) -> float:
        return e.self_device_time_total if check.cuda else e.self_cpu_time_total

    families: dict[str, float] = {}
    for e in prof.key_averages():
        families[kernel_family(e.key)] = families.get(kernel_family(e.key), 0.0) + self_time(e)
    total = sum(families.values()) or 1.0
    result["batch"] = batch
    ranked = sorted(families.items(), key=lambda kv: -kv[1])
    result["time_share"] = {k: round(v / total, 3) for k, v in ranked}
    result["device_ms_per_step"] = round(total / 2 / 1e3, 1)
    sort = "self_cuda_time_total" if check.cuda else "self_cpu_time_total"
    (check.out / "profile_vit_l.txt").write_text(prof.key_averages().table(sort_by=sort, row_limit=40))
    del state, views, prof
    _free(check)
    # compiled blocks at twice the batch: what the recipe's step reaches once kernels are fused, with
    # the recipe's activation checkpointing and without it (the memory it saves is not needed here)
    peak, _, _ = peak_flops_of(check.device, dry=check.dry)
    big = 2 * batch
    kwargs = {"backend": "eager"} if check.dry else {}
    # compile_blocks switches off inductor's comprehensive padding (torch 2.11 fails its own stride
    # assertion on ViT-L's padded SwiGLU matmul without that): this phase is its check on a GPU
    # "tuned": no checkpointing, the heads and DINO/iBOT losses compiled too (compute.compile_heads)
    # and the fused AdamW kernel; its device time by kernel family shows what is left to win
    variants = (
        ("vit_l_compiled", True, False),
        ("vit_l_compiled_no_checkpointing", False, False),
        ("vit_l_tuned", False, True),
    )
    for key, ckpt, tuned in variants:
        overrides = [f"model.activation_checkpointing={str(ckpt).lower()}"]
        if tuned and check.cuda:
            overrides.append("compute.fused_optimizer=true")
        cfg = check.recipe("recipe-vit-l.yaml", *overrides)
        if check.cuda:
            torch.cuda.reset_peak_memory_stats(check.device)
        state = build_train_state(cfg, global_batch_size=big, device=check.device, seed=0)
        state.step = state.schedules.total_steps // 2
        compile_blocks(state.student, **kwargs)
        compile_blocks(state.teacher, **kwargs)
        if tuned:
            compile_heads(state.student, state.objective, **kwargs)
        views = synthetic_views(cfg, big, device=check.device)
        times = timed_steps(check, state, views, warmup=3 if tuned else 2, steps=1 if check.dry else 5)
        t = statistics.median(times)
        flops = step_flops(cfg, images=big)
        result[key] = {
            "batch": big,
            "activation_checkpointing": ckpt,
            "compiled_heads_and_losses": tuned,
            "fused_optimizer": cfg.compute.fused_optimizer,
            "step_ms": round(1e3 * t, 2),
            "images_per_s": round(big / t, 1),
            "mfu": round(flops / t / peak, 4) if peak else None,
        }
        if check.cuda:
            peak_mem = torch.cuda.max_memory_allocated(check.device)
            result[key]["peak_mem_gib"] = round(peak_mem / 2**30, 2)
        if tuned:
            with profile(activities=activities) as prof:
                timed_steps(check, state, views, warmup=0, steps=1)
            shares: dict[str, float] = {}
            for e in prof.key_averages():
                shares[kernel_family(e.key)] = shares.get(kernel_family(e.key), 0.0) + self_time(e)
            total = sum(shares.values()) or 1.0
            result[key]["time_share"] = {
                k: round(v / total, 3) for k, v in sorted(shares.items(), key=lambda kv: -kv[1])
            }
            (check.out / "profile_vit_l_tuned.txt").write_text(
                prof.key_averages().table(sort_by=sort, row_limit=40)
            )
            del prof
        del state, views
        _free(check)
    result["ok"] = True
    return result


# ---- runner -----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`PhaseTimeout` in this (main) thread after ``seconds``."""

    def expired(signum: int, frame: Any) -> None:
        raise PhaseTimeout(f"phase ran past its limit of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1.0))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


RUNNERS: dict[str, Callable[[Check], dict[str, Any]]] = {
    "precision": phase_precision,
    "recipes": phase_recipes,
    "data_wait": phase_data_wait,
    "learning": phase_learning,
    "resume": phase_resume,
    "compile": phase_compile,
    "profile": phase_profile,
}


def environment(device: torch.device) -> dict[str, Any]:
    shm = shutil.disk_usage("/dev/shm").total if os.path.isdir("/dev/shm") else None
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cpus": os.cpu_count(),
        "dev_shm_gib": round(shm / 2**30, 2) if shm else None,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
    return env


def markdown(result: dict[str, Any]) -> str:
    """A Markdown summary: one row per phase with its headline figures."""

    def headline(name: str, r: dict[str, Any]) -> str:
        if r.get("status") != "ok":
            return r.get("error") or r.get("reason") or ""
        if name == "precision":
            parts = []
            for v in ("bf16_autocast", "fsdp2_bf16"):
                d = r[v]["term_diff_vs_fp32"]
                parts.append(
                    f"{v}: dloss {d['loss']:.2e}, dkoleo {d['koleo']:.2e}, CLS identical "
                    f"{r[v]['cls_all_identical']}, EMA {r[v]['ema_identity_max_diff']:.1e}"
                )
            return "; ".join(parts)
        if name == "recipes":
            rows = []
            for k in ("vit_b", "vit_l", "vit_g_fsdp2"):
                x = r.get(k, {})
                if x.get("fits"):
                    rows.append(
                        f"{k} b{x['batch']}: {x['step_ms']} ms, {x['images_per_s']} img/s, "
                        f"MFU {x['mfu']}, {x['peak_mem_gib']} GiB"
                    )
                else:
                    rows.append(f"{k}: {x.get('error', 'not run')}")
            return "; ".join(rows) + f" (peak: {r['peak_source']})"
        if name == "data_wait":
            return (
                f"data wait {r['data_wait_fraction']:.1%} with {r['loader_workers']} loader workers, "
                f"{r['images_per_s']} img/s (step alone {r['step_only_images_per_s']})"
            )
        if name == "learning":
            return (
                f"passed {r['passed']}: loss {r['first']['loss']} -> {r['last']['loss']}, "
                f"cls_std {r['last']['cls_std']}, teacher entropy {r['last']['teacher_entropy']}"
            )
        if name == "resume":
            return f"bit-exact {r['bit_exact']} (loss diff {r['loss_max_diff']:.1e})"
        if name == "profile":
            c = r["vit_l_compiled"]
            share = ", ".join(f"{k} {v:.0%}" for k, v in r["time_share"].items())
            return (
                f"vit_l b{r['batch']} device time: {share}; compiled b{c['batch']}: {c['step_ms']} ms, "
                f"{c['images_per_s']} img/s, MFU {c['mfu']}"
            )
        if name == "compile":
            return (
                f"eager {r['eager_step_ms']} ms, compiled {r['compiled_step_ms']} ms "
                f"(x{r['speedup']}), compile {r['compile_s']} s"
            )
        return ""

    env = result["environment"]
    lines = [
        f"# GPU check ({'dry run, ' if result['dry_run'] else ''}{env['device']})",
        "",
        f"torch {env['torch']}, Python {env['python']}, {env['cpus']} CPUs; "
        f"{result['elapsed_s']} s of a {result['budget_s']} s budget",
        "",
        "| phase | status | seconds | figures |",
        "|---|---|---|---|",
    ]
    for name, r in result["phases"].items():
        text = headline(name, r).replace("|", "/").replace("\n", " ")
        lines.append(f"| {name} | {r.get('status')} | {r.get('seconds', '')} | {text} |")
    return "\n".join(lines) + "\n"


def write(check: Check) -> None:
    """Rewrite the JSON and Markdown results (after every phase: a killed run keeps what finished)."""
    check.result["elapsed_s"] = round(time.perf_counter() - check.start, 1)
    check.result["ray_imported"] = "ray" in sys.modules
    data = json.dumps(_finite(check.result), allow_nan=False)
    (check.out / "gpu_check.json").write_text(data + "\n")
    try:
        (check.out / "gpu_check.md").write_text(markdown(check.result))
    except Exception as err:  # the summary must never cost the JSON
        (check.out / "gpu_check.md").write_text(f"summary failed: {err!r}\n")


def run_phase(check: Check, name: str) -> None:
    limit = min(PHASE_LIMIT_S[name] * (1 if not check.dry else 2), check.left_s())
    phases = check.result["phases"]
    if limit < 5:
        phases[name] = {"status": "skipped", "reason": f"budget spent ({check.left_s():.0f} s left)"}
        return
    t0 = time.perf_counter()
    check.partial = {}
    print(f"gpu_check: {name} (limit {limit:.0f} s)", file=sys.stderr, flush=True)
    try:
        with time_limit(limit):
            r = RUNNERS[name](check)
        status = "ok" if r.pop("ok", True) else "failed"
        phases[name] = {"status": status, **r}
    except BaseException as err:  # noqa: BLE001 - record everything, go on (KeyboardInterrupt too)
        if isinstance(err, KeyboardInterrupt | SystemExit):
            phases[name] = {"status": "interrupted"}
            raise
        phases[name] = {
            "status": "timeout" if isinstance(err, PhaseTimeout) else "error",
            "error": f"{type(err).__name__}: {err}"[:2000],
            "traceback": traceback.format_exc()[-2500:],
            "partial": _finite(dict(check.partial)),  # what the phase measured before it failed
        }
    finally:
        phases[name]["seconds"] = round(time.perf_counter() - t0, 1)
        _free(check)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, every phase")
    parser.add_argument("--budget-s", type=float, default=420.0, help="phases that no longer fit are skipped")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated subset of {PHASES}")
    args = parser.parse_args()
    selected = [p for p in args.phases.split(",") if p]
    unknown = [p for p in selected if p not in PHASES]
    if unknown:
        parser.error(f"unknown phase(s) {unknown}; valid: {', '.join(PHASES)}")
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device: run with --dry-run on a CPU")
    device = torch.device("cpu") if args.dry_run else torch.device("cuda", 0)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if args.dry_run:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    os.environ.setdefault("RADFORGE_SALT", "gpu-check")  # synthetic data only
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    check = Check(device=device, dry=args.dry_run, out=out, tmp=tmp, budget_s=args.budget_s)
    check.result.update(
        bench="gpu_check",
        dry_run=args.dry_run,
        budget_s=args.budget_s,
        environment=environment(device),
        phases={},
    )
    write(check)
    try:
        for name in PHASES:
            if name in selected:
                run_phase(check, name)
                write(check)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        write(check)
    print(json.dumps(_finite(check.result), allow_nan=False))


if __name__ == "__main__":
    main()
