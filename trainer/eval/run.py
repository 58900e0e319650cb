"""``radforge eval``: backbones x tasks -> features (cached) -> probes -> report."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from radforge.storage import redact
from radforge.trainer.eval.backbone import FrozenBackbone
from radforge.trainer.eval.builtin import build_builtin_suite
from radforge.trainer.eval.features import extract_features
from radforge.trainer.eval.report import PairedResult, Report, paired_differences, write_report
from radforge.trainer.eval.tasks import TaskData, find_tasks, load_task
from radforge.trainer.eval.tracks import PROBES, ProbeResult, evaluate_task

logger = logging.getLogger(__name__)

BUILTIN = "builtin"
RANDOM_INIT = "random_init"  # the name of the random-init baseline in reports

# Called as ``on_progress(phase, done, total)``: phase is loading, extracting, probing or reporting;
# done/total count (backbone, task) evaluations (total 0 while loading).
ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True)
class EvalOutcome:
    """Every result and where the report went."""

    results: list[ProbeResult]
    report: Report
    seconds: float
    paired: list[PairedResult]  # every backbone minus the random-init baseline (empty without one)


def load_suite(spec: str, *, builtin_root: str | Path) -> list[TaskData]:
    """Tasks named by ``spec``: ``builtin`` (generated under ``builtin_root`` once) or task folders."""
    folders = build_builtin_suite(builtin_root) if spec == BUILTIN else find_tasks(spec)
    return [load_task(f) for f in folders]


def backbone_name(path: str) -> str:
    """The report name of a backbone given without one: its folder's name (``runs/a/`` -> ``a``)."""
    return Path(path.rstrip("/")).name


def load_backbones(
    sources: Mapping[str, str], *, random_init: bool, seed: int = 0
) -> tuple[dict[str, FrozenBackbone], dict[str, dict[str, object]]]:
    """Backbones by name (export folders or checkpoints) and their provenance for the report.

    The provenance is what the export's ``config.json`` (or the checkpoint's run config) says: the
    checkpoint, its step, the run's configured steps, its datasets and its config's sha256.

    With ``random_init`` a backbone of the first one's shape, initialised as training starts
    (seeded), is added as :data:`RANDOM_INIT`: the baseline a pretraining run must beat.
    """
    from radforge.trainer.export import load_for_eval, random_backbone

    if not sources:
        raise ValueError("no backbone to evaluate: give at least one export folder or checkpoint")
    if random_init and RANDOM_INIT in sources:
        raise ValueError(f"the backbone name {RANDOM_INIT!r} is taken by the random-init baseline")
    backbones = {name: load_for_eval(path) for name, path in sources.items()}
    # the run behind each: checkpoint, step, the run's datasets (redacted), configured steps, config hash
    provenance: dict[str, dict[str, object]] = {
        name: {"source": redact(path), **backbones[name].source} for name, path in sources.items()
    }
    if random_init:
        first = next(iter(backbones.values()))
        backbones[RANDOM_INIT] = random_backbone(first.spec, seed=seed, preprocessing=first.preprocessing)
        provenance[RANDOM_INIT] = {"source": f"random init of the same shape (seed {seed})"}
    return backbones, provenance


def evaluate(
    sources: Mapping[str, str],
    tasks: str,
    *,
    out: str | Path,
    cache: str | Path | None = None,
    random_init: bool = False,
    seed: int = 0,
    probes: Sequence[str] = PROBES,
    seeds: int = 3,
    max_shots: int | None = None,
    n_boot: int = 1000,
    on_progress: ProgressFn | None = None,
) -> EvalOutcome:
    """``radforge eval`` (and the control plane's eval job): load, build the suite, evaluate, report.

    ``sources`` maps backbone names to export folders or checkpoints; ``tasks`` is ``builtin`` or
    task folders (:func:`load_suite`). The feature cache and the built-in suite live under
    ``cache`` (default ``out/cache``).
    """
    out = Path(out)
    cache = Path(cache) if cache else out / "cache"
    if on_progress is not None:
        on_progress("loading", 0, 0)
    backbones, provenance = load_backbones(sources, random_init=random_init, seed=seed)
    suite = load_suite(tasks, builtin_root=cache / "builtin-suite")
    return run_eval(
        backbones,
        suite,
        out=out,
        cache_dir=cache / "features",
        provenance=provenance,
        probes=probes,
        seeds=seeds,
        max_shots=max_shots,
        n_boot=n_boot,
        on_progress=on_progress,
    )


def run_eval(
    backbones: Mapping[str, FrozenBackbone],
    tasks: Sequence[TaskData],
    *,
    out: str | Path,
    cache_dir: str | Path | None = None,
    provenance: Mapping[str, Mapping[str, object]] | None = None,
    probes: Sequence[str] = PROBES,
    seeds: int = 3,
    max_shots: int | None = None,
    n_boot: int = 1000,
    batch_size: int = 64,
    baseline: str = RANDOM_INIT,
    on_progress: ProgressFn | None = None,
) -> EvalOutcome:
    """Evaluate every backbone on every task and write the report under ``out``.

    When ``baseline`` is one of the backbones, every other one is compared with it by paired
    differences on the same test samples (:func:`radforge.trainer.eval.report.paired_differences`).
    """

    def progress(phase: str, done: int) -> None:
        if on_progress is not None:
            on_progress(phase, done, total)

    t0 = time.perf_counter()
    total = len(backbones) * len(tasks)
    done = 0
    results: list[ProbeResult] = []
    for name, backbone in backbones.items():
        for task in tasks:
            progress("extracting", done)
            feats = extract_features(backbone, task, batch_size=batch_size, cache_dir=cache_dir)
            progress("probing", done)
            rs = evaluate_task(
                task, feats, backbone=name, probes=probes, seeds=seeds, max_shots=max_shots, n_boot=n_boot
            )
            results += rs
            done += 1
            logger.info("%s / %s: %d probe runs", name, task.spec.name, len(rs))
    info = {
        name: {
            "weights": b.weights_hash[:16],
            "embed_dim": b.spec.embed_dim,
            "depth": b.spec.depth,
            "patch": b.spec.patch_size,
            "input": b.preprocessing["image_size"],
            **dict((provenance or {}).get(name, {})),
        }
        for name, b in backbones.items()
    }
    settings = {
        "probes": list(probes),
        "seeds": seeds,
        "max_shots": max_shots,
        "bootstrap": n_boot,
        "tasks": [t.spec.name for t in tasks],
    }
    progress("reporting", done)
    paired = paired_differences(results, baseline=baseline, n_boot=n_boot) if baseline in backbones else []
    written = write_report(out, results, backbones=info, settings=settings, paired=paired)
    return EvalOutcome(results=results, report=written, seconds=time.perf_counter() - t0, paired=paired)
