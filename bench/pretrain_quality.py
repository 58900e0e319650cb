"""Pretraining quality: the built-in eval suite on random-init, short- and long-pretrained features.

One run of the tiny CPU recipe (configs/recipe-tiny-cpu.yaml) on phantom CT and MR slices from seeds
the eval suite never uses (views by MultiCrop, masks by the anatomy prior, ``train_step`` in this
process: the recipe, not Ray, is what is measured). The teacher is snapshotted at step 0 (the
random-init baseline: the exact initialisation training started from), after ``--short-steps``
and after ``--long-steps``; each snapshot is evaluated with ``radforge.trainer.eval.run_eval`` (linear probe
and kNN, full training set and few-shot) on the built-in suite.

    .venv/bin/python -m bench.pretrain_quality [--short-steps 400 --long-steps 800] [--set KEY=VALUE ...]

800 steps (the schedules stretched over them) is the configuration chosen by the sweep recorded in
docs/BENCHMARKS.md (14 runs: steps, lr, width, depth, prototypes, local crops, training seeds):
about 5 minutes of training and 2 of evaluation on two idle cores. On suite v3 it meets issue
18's target with training seeds 0, 1 and 2 on the CPU (docs/BENCHMARKS.md, 'Suite v3 on the
CPU'). ``--device cuda`` runs the training steps on a GPU (views and evaluation stay on the CPU):
how the sweep was run.

Ends with one JSON line: {"bench": "pretrain_quality", "steps": N, "tasks": {"<task>": {"knn_diff": d,
"knn_ci": [lo, hi], "linear_diff": d, "linear_ci": [lo, hi]}, ...}, "wins": {...}, "short": {...},
"scores": {...}, ...}: the long-pretrained teacher minus the random-init one on the same test samples
(primary metric: accuracy, or R2 for regression; full training set) with its paired bootstrap 95%
interval; "wins" counts, per probe, the tasks won and those won with the interval above zero;
"short" holds the same for the ``--short-steps`` snapshot; "scores" each backbone's own metric.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from radforge.ingest.content import analyse
from radforge.synthetic.phantom import ct_phantom, mr_phantom
from radforge.trainer import (
    build_mask_sampler,
    build_multicrop,
    build_train_state,
    collate_views,
    load_recipe,
    train_step,
)
from radforge.trainer.eval.backbone import FrozenBackbone
from radforge.trainer.eval.builtin import DEFAULT_SIZE, PHANTOM_FOV_MM
from radforge.trainer.eval.metrics import PRIMARY
from radforge.trainer.eval.report import PairedResult, full_scores
from radforge.trainer.eval.run import load_suite, run_eval
from radforge.trainer.export import spec_of

TINY = Path(__file__).resolve().parents[1] / "configs" / "recipe-tiny-cpu.yaml"
SHAPE = (40, DEFAULT_SIZE, DEFAULT_SIZE)  # the suite's anatomy phantoms
SPACING = (2.5, PHANTOM_FOV_MM / DEFAULT_SIZE, PHANTOM_FOV_MM / DEFAULT_SIZE)
BATCH = 32


PLANE_AXES = {"axial": 0, "coronal": 1, "sagittal": 2}  # of a (z, y, x) LPS volume


Slice = tuple[np.ndarray, np.ndarray, dict[str, Any]]  # image, foreground map, meta


def _slices_of(volume: np.ndarray, *, modality: str, step: int = 1) -> list[Slice]:
    """Stored-like (image, fg, meta) slices of ``volume`` in all three planes, empty ones left out."""
    out = []
    dtype = np.int16 if modality == "CT" else np.uint16
    for plane, axis in PLANE_AXES.items():
        n = volume.shape[axis]
        for i in range(2, n - 2, step):
            image = np.ascontiguousarray(np.take(volume, i, axis=axis)).astype(dtype)
            content = analyse(image, modality=modality)
            if content.box is None:
                continue
            box = list(content.box)
            meta = {"modality": modality, "window": "raw", "fg_patch": 16, "plane": plane, "body_box": box}
            out.append((image, content.fg, meta))
    return out


def training_slices(n_volumes: int, *, real: bool = True) -> list[Slice]:
    """Stored-like slices (image, fg, meta) to pretrain on, in all three planes, none from a test volume.

    Phantoms from seeds 1000+ (the suite never uses them) and, with ``real``, the real MR volumes
    the suite keeps for training (:data:`radforge.trainer.eval.builtin.REAL_SPLITS`: its test and
    validation volumes are left out): unlabelled pretraining on the suite's training volumes, as
    a real run pretrains on whatever its archives hold.
    """
    out = []
    for i in range(n_volumes):
        modality = "CT" if i % 2 == 0 else "MR"
        make = ct_phantom if modality == "CT" else mr_phantom
        out += _slices_of(make(shape=SHAPE, spacing=SPACING, seed=1000 + i).array, modality=modality, step=2)
    if real:
        from radforge.trainer.eval.builtin import REAL_SPLITS, _real_mr_volumes

        for name, volume in _real_mr_volumes():
            if REAL_SPLITS.get(name, "train") == "train":
                out += _slices_of(volume, modality="MR", step=4)
    return out


def snapshot(teacher: torch.nn.Module, preprocessing: dict[str, Any]) -> FrozenBackbone:
    """The teacher backbone as a standalone frozen module (what `radforge export` would write)."""
    backbone = teacher.backbone  # type: ignore[union-attr]
    spec = spec_of(backbone)
    state = {
        k: v.detach().to("cpu", copy=True) for k, v in backbone.state_dict().items() if k != "mask_token"
    }
    return FrozenBackbone(spec, preprocessing=preprocessing).load_state(state, where="teacher snapshot")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--short-steps", type=int, default=400)
    parser.add_argument("--long-steps", type=int, default=800)
    parser.add_argument("--volumes", type=int, default=24, help="phantom volumes to pretrain on")
    parser.add_argument(
        "--phantoms-only", action="store_true", help="leave out the suite's real training volumes"
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(".bench/pretrain_quality"))
    parser.add_argument(
        "--suite", type=Path, help="built-in suite folder (default OUT/suite; built if absent)"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override (repeatable)"
    )
    parser.add_argument(
        "--device", default="cpu", help="where the training steps run (cuda: a sweep on a GPU machine)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--train-seed", type=int, default=0, help="seed of the initial weights and the training batches"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    # the tiny recipe's schedules span 2 epochs: stretch them over the run, whatever its length
    cfg = load_recipe(TINY, overrides=[*args.set, f"schedule.epoch_length={max(1, args.long_steps // 2)}"])
    preprocessing = {"ct_air_hu": cfg.intensity.ct_air_hu, "image_size": cfg.crops.global_size}
    slices = training_slices(args.volumes, real=not args.phantoms_only)
    state = build_train_state(cfg, global_batch_size=BATCH, seed=args.train_seed, device=device)
    multicrop, masks = build_multicrop(cfg), build_mask_sampler(cfg)
    rng = np.random.default_rng(args.train_seed)
    backbones = {"random_init": snapshot(state.teacher, preprocessing)}
    seconds = {}
    t0 = time.perf_counter()
    for step in range(1, args.long_steps + 1):
        picks = rng.integers(len(slices), size=BATCH)
        batch = collate_views(multicrop.batch([slices[i] for i in picks], rng=rng), masks=masks, rng=rng)
        metrics = train_step(state, batch.to(device))
        if step == args.short_steps:
            backbones["pretrained"] = snapshot(state.teacher, preprocessing)
            seconds["pretrained"] = time.perf_counter() - t0
        if step % 20 == 0:
            print(f"step {step}: loss {metrics['loss']:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    backbones["pretrained_long"] = snapshot(state.teacher, preprocessing)
    seconds["pretrained_long"] = time.perf_counter() - t0

    tasks = load_suite("builtin", builtin_root=args.suite or args.out / "suite")
    outcome = run_eval(
        backbones, tasks, out=args.out / "report", cache_dir=args.out / "features", seeds=args.seeds
    )
    full = full_scores(outcome.results)
    scores: dict[str, dict[str, dict[str, float]]] = {}
    for (task, probe, name), r in sorted(full.items()):
        scores.setdefault(task, {}).setdefault(probe, {})[name] = round(r.metrics[PRIMARY[r.kind]], 4)
    print(f"report: {outcome.report.markdown}")
    long = paired_summary(outcome.paired, "pretrained_long")
    print(
        json.dumps(
            {
                "bench": "pretrain_quality",
                "steps": args.long_steps,
                "overrides": args.set,
                "train_seed": args.train_seed,
                "device": str(device),
                "last_step": {k: round(float(metrics[k]), 4) for k in ("loss", "teacher_entropy", "cls_std")},
                "tasks": long,
                "wins": win_counts(long),
                "short": {
                    "steps": args.short_steps,
                    "tasks": (short := paired_summary(outcome.paired, "pretrained")),
                    "wins": win_counts(short),
                },
                "scores": scores,
                "train_seconds": {k: round(v, 1) for k, v in seconds.items()},
                "eval_seconds": round(outcome.seconds, 1),
            }
        )
    )


def paired_summary(paired: list[PairedResult], backbone: str) -> dict[str, dict[str, Any]]:
    """Task -> {"knn_diff", "knn_ci", "linear_diff", "linear_ci"} of ``backbone`` minus random init."""
    out: dict[str, dict[str, Any]] = {}
    for p in paired:
        if p.backbone == backbone:
            d = p.difference
            out.setdefault(p.task, {})[f"{p.probe}_diff"] = round(d.diff, 4)
            out[p.task][f"{p.probe}_ci"] = [round(d.ci[0], 4), round(d.ci[1], 4)]
    return out


def win_counts(tasks: dict[str, dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per probe: tasks, tasks with a positive difference, tasks whose interval is above zero."""
    return {
        probe: {
            "tasks": len(tasks),
            "positive": sum(t[f"{probe}_diff"] > 0 for t in tasks.values()),
            "interval_above_zero": sum(t[f"{probe}_ci"][0] > 0 for t in tasks.values()),
        }
        for probe in ("linear", "knn")
    }


if __name__ == "__main__":
    main()
