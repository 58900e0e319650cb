"""Choose the CPU pretraining configuration by measuring: train several recipe variants, evaluate each.

``bench/pretrain_quality.py`` measures one configuration end to end on this machine's two cores
(~5-15 minutes). Finding the configuration to ship takes many of those, so the sweep splits the
work where it runs fastest:

    # 1. here: the training slices pretrain_quality trains on, as one file (needs scipy, nibabel, nilearn)
    .venv/bin/python -m bench.pretrain_sweep prepare --out .bench/sweep
    # 2. anywhere with torch (a GPU machine: each variant takes seconds there): train, snapshot
    python -m bench.pretrain_sweep train --data .bench/sweep --out OUT --variants all
    # 3. here: the built-in suite on every variant's random init and final teacher, paired differences
    .venv/bin/python -m bench.pretrain_sweep eval --snapshots OUT --out .bench/sweep/eval

Step 2 imports only torch, numpy, pyyaml and pydantic (no scipy, sklearn or Ray). A variant is a
name and recipe overrides on ``configs/recipe-tiny-cpu.yaml`` plus a step count; its schedules are
stretched over its steps (``schedule.epoch_length = steps / 2``) as in pretrain_quality. Snapshots
are the teacher backbone at step 0 (the random-init baseline of the same shape) and at the end.
The chosen variant is then confirmed with ``bench.pretrain_quality`` on the two CPU cores: those are
the figures of record (docs/BENCHMARKS.md); a GPU's fp32 arithmetic rounds differently.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

TINY = Path(__file__).resolve().parents[1] / "configs" / "recipe-tiny-cpu.yaml"
BATCH = 32

# name -> (steps, recipe overrides). The first is pretrain_quality's default configuration.
VARIANTS: dict[str, tuple[int, list[str]]] = {
    "base200": (200, []),
    "base400": (400, []),
    "base800": (800, []),
    "base1200": (1200, []),
    "lr5e-4_400": (400, ["optim.base_lr=5.0e-4"]),
    "lr2e-3_400": (400, ["optim.base_lr=2.0e-3"]),
    "wide192_400": (400, ["model.embed_dim=192", "model.num_heads=3"]),
    "deep6_400": (400, ["model.depth=6"]),
    "proto256_400": (400, ["heads.num_prototypes=256"]),
    "local8_400": (400, ["crops.local_count=8"]),
    "koleo0_400": (400, ["loss.koleo_weight=0.0"]),
    "wide192_800": (800, ["model.embed_dim=192", "model.num_heads=3"]),
}


def _pack(slices: list[tuple[np.ndarray, np.ndarray, dict[str, Any]]], path: Path) -> None:
    images = [s[0] for s in slices]
    np.savez_compressed(
        path,
        shapes=np.array([im.shape for im in images], dtype=np.int32),
        dtypes=np.array([str(im.dtype) for im in images]),
        images=np.concatenate([im.ravel().astype(np.int32) for im in images]),
        fg=np.concatenate([s[1].ravel().astype(np.float32) for s in slices]),
        fg_shapes=np.array([s[1].shape for s in slices], dtype=np.int32),
        meta=np.array(json.dumps([s[2] for s in slices])),
    )


def _unpack(path: Path) -> list[tuple[np.ndarray, np.ndarray, dict[str, Any]]]:
    z = dict(np.load(path))  # each access to an npz member decompresses it again: read them once
    metas = json.loads(str(z["meta"]))
    out, a, b = [], 0, 0
    for shape, dtype, fg_shape, meta in zip(z["shapes"], z["dtypes"], z["fg_shapes"], metas, strict=True):
        n, m = int(np.prod(shape)), int(np.prod(fg_shape))
        image = z["images"][a : a + n].reshape(shape).astype(str(dtype))
        fg = z["fg"][b : b + m].reshape(fg_shape)
        out.append((image, fg, meta))
        a, b = a + n, b + m
    return out


def cmd_prepare(args: argparse.Namespace) -> None:
    from bench.pretrain_quality import training_slices

    args.out.mkdir(parents=True, exist_ok=True)
    slices = training_slices(args.volumes, real=True)
    _pack(slices, args.out / "slices.npz")
    print(json.dumps({"slices": len(slices), "file": str(args.out / "slices.npz")}))


def _backbone_state(teacher: torch.nn.Module) -> dict[str, torch.Tensor]:
    state = teacher.backbone.state_dict()  # type: ignore[union-attr]
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items() if k != "mask_token"}


def train_variant(
    name: str, steps: int, overrides: list[str], slices: list[Any], *, device: torch.device, out: Path
) -> dict[str, Any]:
    """Train one variant from seed 0; save its step-0 and final teacher backbones; its last metrics."""
    from radforge.trainer import (
        build_mask_sampler,
        build_multicrop,
        build_train_state,
        collate_views,
        load_recipe,
        train_step,
    )

    cfg = load_recipe(TINY, overrides=[*overrides, f"schedule.epoch_length={max(1, steps // 2)}"])
    state = build_train_state(cfg, global_batch_size=BATCH, seed=0, device=device)
    multicrop, masks = build_multicrop(cfg), build_mask_sampler(cfg)
    rng = np.random.default_rng(0)
    random_init = _backbone_state(state.teacher)
    t0 = time.perf_counter()
    history = []
    for step in range(1, steps + 1):
        picks = rng.integers(len(slices), size=BATCH)
        batch = collate_views(multicrop.batch([slices[i] for i in picks], rng=rng), masks=masks, rng=rng)
        metrics = train_step(state, batch.to(device))
        if step % 50 == 0 or step == steps:
            history.append({k: round(float(metrics[k]), 4) for k in ("loss", "teacher_entropy", "cls_std")})
    torch.save(
        {"random_init": random_init, "pretrained_long": _backbone_state(state.teacher)}, out / f"{name}.pt"
    )
    info = {
        "name": name,
        "steps": steps,
        "overrides": overrides,
        "recipe": cfg.model_dump(mode="json"),
        "train_s": round(time.perf_counter() - t0, 1),
        "history": history,
    }
    (out / f"{name}.json").write_text(json.dumps(info, indent=1))
    return info


def cmd_train(args: argparse.Namespace) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    slices = _unpack(args.data / "slices.npz")
    args.out.mkdir(parents=True, exist_ok=True)
    names = list(VARIANTS) if args.variants == "all" else args.variants.split(",")
    deadline = time.monotonic() + args.budget_s
    done = []
    for name in names:
        if time.monotonic() > deadline:
            break
        steps, overrides = VARIANTS[name]
        steps = min(steps, args.max_steps) if args.max_steps else steps
        info = train_variant(name, steps, overrides, slices, device=device, out=args.out)
        done.append({"name": name, "train_s": info["train_s"], "last": info["history"][-1]})
        print(json.dumps(done[-1]), flush=True)
    print(json.dumps({"bench": "pretrain_sweep_train", "device": str(device), "variants": done}))


def cmd_eval(args: argparse.Namespace) -> None:
    from bench.pretrain_quality import paired_summary, win_counts
    from radforge.trainer.build import build_backbone
    from radforge.trainer.eval.backbone import FrozenBackbone
    from radforge.trainer.eval.run import load_suite, run_eval
    from radforge.trainer.export import spec_of
    from radforge.trainer.recipe import RecipeConfig

    tasks = load_suite("builtin", builtin_root=args.out / "suite")
    summary = {}
    for meta in sorted(args.snapshots.glob("*.json")):
        info = json.loads(meta.read_text())
        if args.variants and info["name"] not in args.variants.split(","):
            continue
        recipe = RecipeConfig.model_validate(info["recipe"])
        spec = spec_of(build_backbone(recipe))
        preprocessing = {"ct_air_hu": recipe.intensity.ct_air_hu, "image_size": recipe.crops.global_size}
        states = torch.load(meta.with_suffix(".pt"), weights_only=True)
        backbones = {
            k: FrozenBackbone(spec, preprocessing=preprocessing).load_state(v, where=f"{info['name']} {k}")
            for k, v in states.items()
        }
        outcome = run_eval(
            backbones,
            tasks,
            out=args.out / info["name"] / "report",
            cache_dir=args.out / info["name"] / "features",
            seeds=args.seeds,
        )
        tasks_diff = paired_summary(outcome.paired, "pretrained_long")
        summary[info["name"]] = {
            "wins": win_counts(tasks_diff),
            "tasks": tasks_diff,
            "last": info["history"][-1],
        }
        print(json.dumps({info["name"]: summary[info["name"]]["wins"]}), flush=True)
    print(json.dumps({"bench": "pretrain_sweep", "variants": summary}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--volumes", type=int, default=24)
    t = sub.add_parser("train")
    t.add_argument("--data", type=Path, required=True)
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--variants", default="all", help=f"comma-separated, or all: {', '.join(VARIANTS)}")
    t.add_argument("--budget-s", type=float, default=400.0, help="start no variant after this long")
    t.add_argument("--max-steps", type=int, default=0, help="cap every variant's steps (a smoke test)")
    e = sub.add_parser("eval")
    e.add_argument("--snapshots", type=Path, required=True)
    e.add_argument("--out", type=Path, required=True)
    e.add_argument("--variants", default="")
    e.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2 if args.command != "train" else max(1, torch.get_num_threads()))
    {"prepare": cmd_prepare, "train": cmd_train, "eval": cmd_eval}[args.command](args)


if __name__ == "__main__":
    main()
