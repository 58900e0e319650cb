"""Periodic evaluation inside training: kNN on a held-out suite every N steps, to catch collapse early.

:class:`PeriodicKnn` preprocesses its tasks once (a capped, seeded subset of each split), then
:meth:`PeriodicKnn.evaluate` runs the teacher backbone over them in eval mode without gradients and
returns ``{"knn_<task>": score, "knn_mean": mean}`` (accuracy, or R2 for regression), the kNN probe
of the full track. It takes any module whose ``forward_features`` returns ``.cls`` and ``.patches``:
the training ``VisionTransformer`` or a :class:`radforge.trainer.eval.backbone.FrozenBackbone`.

``radforge train`` runs it every ``eval.every`` steps (``trainer/loop.py``, metrics phase), on the
teacher backbone; docs/training.md, "Periodic evaluation", says which ranks evaluate under FSDP2.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from radforge.trainer.eval.backbone import preprocess
from radforge.trainer.eval.features import SliceFeatures
from radforge.trainer.eval.metrics import PRIMARY, compute_metrics
from radforge.trainer.eval.probes import knn_probe
from radforge.trainer.eval.tasks import TaskData
from radforge.trainer.eval.tracks import samples


def subset(task: TaskData, keep: np.ndarray) -> TaskData:
    """The slices ``keep`` (sorted indices) of a task, as a task."""
    return TaskData(
        spec=task.spec,
        images=[task.images[i] for i in keep],
        modality=[task.modality[i] for i in keep],
        window=[task.window[i] for i in keep],
        labels=task.labels[keep],
        splits=task.splits[keep],
        volumes=task.volumes[keep] if task.volumes is not None else None,
        masks=[task.masks[i] for i in keep] if task.masks else [],
        fingerprint="",
    )


def cap(task: TaskData, *, max_samples: int, seed: int) -> TaskData:
    """At most ``max_samples`` train and test samples (slices for 2D, volumes for 3D), seeded; no val."""
    rng = np.random.default_rng(seed)
    units = task.volumes if task.volumes is not None else np.arange(len(task)).astype(str)
    keep = []
    for split in ("train", "test"):
        ids = np.unique(units[task.splits == split])
        chosen = rng.choice(ids, size=min(max_samples, len(ids)), replace=False)
        keep.append(np.flatnonzero(np.isin(units, chosen) & (task.splits == split)))
    return subset(task, np.sort(np.concatenate(keep)))


class PeriodicKnn:
    """kNN scores of a backbone on held-out tasks, computed every ``every`` steps."""

    def __init__(
        self,
        tasks: Sequence[TaskData],
        *,
        every: int,
        image_size: int,
        ct_air_hu: float = -1000.0,
        max_samples: int = 256,
        batch_size: int = 128,
        seed: int = 0,
    ) -> None:
        if every < 1:
            raise ValueError(f"every must be at least 1 step, got {every}")
        pooled = [t.spec.name for t in tasks if t.spec.pooling == "mask_mean"]
        if pooled:
            raise ValueError(f"periodic kNN pools CLS / patch tokens; tasks {pooled} need masks (mask_mean)")
        self.every = every
        self.batch_size = batch_size
        self.tasks = [cap(t, max_samples=max_samples, seed=seed) for t in tasks]
        self.inputs = [
            torch.stack(
                [
                    preprocess(im, modality=m, window=w, size=image_size, ct_air_hu=ct_air_hu)
                    for im, m, w in zip(t.images, t.modality, t.window, strict=True)
                ]
            )
            for t in self.tasks
        ]

    @classmethod
    def from_suite(cls, spec: str, *, builtin_root: str | Path, **kwargs: Any) -> PeriodicKnn:
        """Tasks named as ``radforge eval --tasks`` names them (``builtin`` or folders)."""
        from radforge.trainer.eval.run import load_suite

        return cls(load_suite(spec, builtin_root=builtin_root), **kwargs)

    def due(self, step: int) -> bool:
        """Whether ``step`` is an evaluation step."""
        return step % self.every == 0

    @torch.no_grad()
    def evaluate(self, backbone: torch.nn.Module) -> dict[str, float]:
        """``{"knn_<task>": score, ..., "knn_mean": mean}``; the module's train/eval mode is restored."""
        was_training = backbone.training
        backbone.eval()
        device = next(backbone.parameters()).device
        forward: Any = backbone.forward_features  # VisionTransformer or FrozenBackbone
        out: dict[str, float] = {}
        try:
            for task, x in zip(self.tasks, self.inputs, strict=True):
                cls, mean = [], []
                for start in range(0, len(x), self.batch_size):
                    f = forward(x[start : start + self.batch_size].to(device))
                    cls.append(f.cls.float().cpu())
                    mean.append(f.patches.float().mean(1).cpu())
                feats = SliceFeatures(torch.cat(cls).numpy(), torch.cat(mean).numpy(), None)
                xs, y, split = samples(task, feats)
                train, test = split == "train", split == "test"
                pred = knn_probe(
                    xs[train], y[train], xs[test], kind=task.spec.kind, num_classes=len(task.spec.classes)
                )
                out[f"knn_{task.spec.name}"] = compute_metrics(task.spec.kind, y[test], pred)[
                    PRIMARY[task.spec.kind]
                ]
        finally:
            backbone.train(was_training)
        out["knn_mean"] = float(np.nanmean(list(out.values())))
        return out
