"""Training speed: radforge's ViT vs timm's VisionTransformer on CPU; full SSL steps on a GPU.

CPU (always): forward + backward of the same ViT shape, same weights (timm's model is loaded from
radforge's state dict and checked to give the same output), same inputs, rounds interleaved so both
see the same machine load; the best of N rounds is compared (load only adds time). Target:
radforge at most 1.05x timm's time (ratio >= 0.95).

GPU (when CUDA is available): ``train_step`` of the full recipe (student + EMA teacher, DINO/iBOT
heads with 65,536 prototypes, KoLeo, SigReg, AdamW) in bf16 autocast for the sizes given, with
2 x 224 + 8 x 96 crops: step time, peak memory and model FLOPs utilisation (MFU: FLOPs counted by
torch's FlopCounterMode for one step, over the step time and the GPU's dense bf16 peak).

    .venv/bin/python -m bench.train_step [--size vit_small --img 96 --batch 16] [--gpu-sizes vit_base]

Ends with one JSON line: {"bench": "train_step", ..., "ratio": timm time / radforge time}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer as TimmViT
from torch.utils.flop_counter import FlopCounterMode

from radforge.trainer import VIT_SIZES, ViewBatch, build_train_state, load_recipe, train_step

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense, SXM


def timm_twin(ours: torch.nn.Module, *, img: int, patch: int) -> TimmViT:
    """A timm ViT of the same shape carrying radforge's weights (names differ only for pos_embed)."""
    blk = ours.blocks[0]
    twin = TimmViT(
        img_size=img,
        patch_size=patch,
        in_chans=1,
        num_classes=0,
        embed_dim=ours.embed_dim,
        depth=ours.depth,
        num_heads=blk.attn.num_heads,
        mlp_ratio=blk.mlp.fc1.out_features / ours.embed_dim,
        qkv_bias=True,
        init_values=1e-5,
    )
    state = {("pos_embed" if k == "pos_embed.weight" else k): v for k, v in ours.state_dict().items()}
    del state["mask_token"]
    twin.load_state_dict(state)
    return twin


def step_time(model: torch.nn.Module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    model(x).float().square().mean().backward()
    return time.perf_counter() - start


def cpu_compare(size: str, *, img: int, patch: int, batch: int, rounds: int, threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    ours = VIT_SIZES[size](img_size=img, patch_size=patch, ffn_layer="mlp", layerscale_init=1e-5)
    twin = timm_twin(ours, img=img, patch=patch)
    x = torch.randn(batch, 1, img, img)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), twin.eval()(x), atol=1e-4, rtol=1e-4)
    ours.train(), twin.train()
    for model in (ours, twin):  # warm-up
        step_time(model, x)
    mine, theirs = [], []
    for i in range(rounds):  # alternate which model goes first: allocator and cache state even out
        if i % 2:
            mine.append(step_time(ours, x))
            theirs.append(step_time(twin, x))
        else:
            theirs.append(step_time(twin, x))
            mine.append(step_time(ours, x))
    # best of N: other processes on a shared machine only ever add time (medians kept for reference)
    r, t = min(mine), min(theirs)
    return {
        "shape": f"{size}/{patch} at {img}px, 1 channel, batch {batch}, {threads} threads",
        "radforge_ms": round(1e3 * r, 1),
        "timm_ms": round(1e3 * t, 1),
        "radforge_median_ms": round(1e3 * statistics.median(mine), 1),
        "timm_median_ms": round(1e3 * statistics.median(theirs), 1),
        "ratio": round(t / r, 3),
    }


def synthetic_batch(
    batch: int, *, device: str, size: int = 224, patch: int = 16, n_global: int = 2, n_local: int = 8
) -> ViewBatch:
    g = torch.randn(n_global * batch, 1, size, size, device=device)
    loc = torch.randn(n_local * batch, 1, 96, 96, device=device)
    masks = torch.rand(n_global * batch, (size // patch) ** 2, device=device) < 0.15
    masks[batch:] = False  # half the global crops unmasked, as the recipe does
    return ViewBatch(global_crops=g, local_crops=loc, masks=masks, n_global=n_global, n_local=n_local)


def gpu_run(
    size: str, *, batch: int, steps: int, device: str = "cuda", overrides: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Full recipe steps of one size in bf16 (``device="cpu"`` only smoke-tests this function)."""
    cuda = device == "cuda"
    settings = [f"model.size={size}", "compute.precision=bf16", f"compute.fused_optimizer={cuda}"]
    cfg = load_recipe(overrides=[*settings, *overrides])
    state = build_train_state(cfg, global_batch_size=batch, device=device, seed=0)
    state.step = 20_000  # past warm-up and the frozen prototypes
    data = synthetic_batch(batch, device=device, size=cfg.crops.global_size, patch=cfg.model.patch_size)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    train_step(state, data)  # warm-up (allocator, kernels)
    with FlopCounterMode(display=False) as counter:
        train_step(state, data)
    flops = counter.get_total_flops()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        train_step(state, data)
        sync()
        times.append(time.perf_counter() - start)
    t = statistics.median(times)
    name = torch.cuda.get_device_name() if cuda else "cpu"
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    return {
        "size": size,
        "batch": batch,
        "step_ms": round(1e3 * t, 1),
        "images_per_s": round(batch / t, 1),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "tflops_per_step": round(flops / 1e12, 3),
        "mfu": round(flops / t / (peak * 1e12), 3) if peak else None,
        "device": name,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="vit_small")
    parser.add_argument("--img", type=int, default=96)
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gpu-sizes", default="vit_base,vit_large,vit_giant")
    parser.add_argument("--gpu-batch", default="vit_base=64,vit_large=64,vit_giant=32")
    parser.add_argument("--gpu-steps", type=int, default=10)
    args = parser.parse_args()

    result: dict[str, Any] = {"bench": "train_step"}
    result |= cpu_compare(
        args.size, img=args.img, patch=args.patch, batch=args.batch, rounds=args.rounds, threads=args.threads
    )
    if torch.cuda.is_available():
        batches = dict(item.split("=") for item in args.gpu_batch.split(","))
        runs: list[Callable[[], dict[str, Any]]] = [
            lambda s=s: gpu_run(s, batch=int(batches.get(s, 32)), steps=args.gpu_steps)
            for s in args.gpu_sizes.split(",")
            if s
        ]
        result["gpu"] = [run() for run in runs]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
