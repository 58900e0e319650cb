"""Frozen features of a task's slices: batched extraction, pooling, an on-disk cache.

Each slice goes through the backbone's own input mapping (:meth:`FrozenBackbone.preprocess`) at
one size; per slice we keep the CLS token, the mean patch token and, when the task has masks, the
mean patch token inside the mask (each patch weighted by the share of its pixels in the mask).
The cache key is (backbone weights hash, task content hash, preprocessing), so a retrained
backbone, an edited task or another input size never reads stale features.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from radforge.trainer.eval.backbone import FrozenBackbone
from radforge.trainer.eval.tasks import TaskData

logger = logging.getLogger(__name__)

CACHE_VERSION = 1


@dataclass(frozen=True)
class SliceFeatures:
    """Pooled features of every slice of a task, (N, D) float32 each."""

    cls: np.ndarray
    patch_mean: np.ndarray
    mask_mean: np.ndarray | None

    def pooled(self, pooling: str) -> np.ndarray:
        """One (N, D') matrix for a pooling name (tasks.POOLINGS)."""
        if pooling == "cls":
            return self.cls
        if pooling == "patch_mean":
            return self.patch_mean
        if pooling == "cls_patch_mean":  # DINOv2's linear-eval input
            return np.concatenate([self.cls, self.patch_mean], axis=1)
        if pooling == "mask_mean":
            if self.mask_mean is None:
                raise ValueError("pooling 'mask_mean' needs masks: the task has none")
            return self.mask_mean
        raise ValueError(f"unknown pooling {pooling!r}; valid: cls, patch_mean, cls_patch_mean, mask_mean")


def mask_weights(mask: np.ndarray, *, size: int, patch: int) -> torch.Tensor:
    """(H, W) mask -> (N,) share of each patch's pixels inside it, for a size x size input."""
    m = torch.as_tensor(np.ascontiguousarray(mask), dtype=torch.float32)[None, None]
    m = F.interpolate(m, size=(size, size), mode="bilinear", antialias=True).clamp_(0.0, 1.0)
    return F.avg_pool2d(m, patch).flatten()


def masked_mean(patches: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(N, D) patch tokens, (N,) weights -> (D,) weighted mean (the plain mean if the mask is empty)."""
    total = weights.sum()
    if total <= 0:
        return patches.mean(0)
    return (weights[:, None] * patches).sum(0) / total


def cache_key(backbone: FrozenBackbone, task: TaskData, *, size: int) -> str:
    """Hash of what the features depend on."""
    parts = {
        "version": CACHE_VERSION,
        "backbone": backbone.weights_hash,
        "task": task.fingerprint,
        "size": size,
        "ct_air_hu": backbone.preprocessing["ct_air_hu"],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


@torch.no_grad()
def extract_features(
    backbone: FrozenBackbone,
    task: TaskData,
    *,
    size: int | None = None,
    batch_size: int = 64,
    cache_dir: str | Path | None = None,
) -> SliceFeatures:
    """Pooled features of every slice of ``task`` (read from / written to ``cache_dir`` if given)."""
    size = int(size or backbone.preprocessing["image_size"])
    path = None
    if cache_dir is not None and task.fingerprint:
        path = Path(cache_dir) / f"{task.spec.name}-{cache_key(backbone, task, size=size)}.npz"
        if path.is_file():
            with np.load(path) as z:
                return SliceFeatures(z["cls"], z["patch_mean"], z["mask_mean"] if "mask_mean" in z else None)
    device = next(backbone.parameters()).device
    has_masks = bool(task.masks) and all(m is not None for m in task.masks)
    cls, mean, masked = [], [], []
    for start in range(0, len(task), batch_size):
        stop = min(start + batch_size, len(task))
        x = torch.stack(
            [
                backbone.preprocess(
                    task.images[i], modality=task.modality[i], window=task.window[i], size=size
                )
                for i in range(start, stop)
            ]
        ).to(device)
        f = backbone(x)
        cls.append(f.cls.float().cpu())
        mean.append(f.patches.float().mean(1).cpu())
        if has_masks:
            for j, i in enumerate(range(start, stop)):
                m = task.masks[i]
                assert m is not None
                w = mask_weights(m, size=size, patch=backbone.spec.patch_size).to(device)
                masked.append(masked_mean(f.patches[j].float(), w).cpu()[None])
    out = SliceFeatures(
        cls=torch.cat(cls).numpy(),
        patch_mean=torch.cat(mean).numpy(),
        mask_mean=torch.cat(masked).numpy() if has_masks else None,
    )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"cls": out.cls, "patch_mean": out.patch_mean}
        if out.mask_mean is not None:
            arrays["mask_mean"] = out.mask_mean
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)  # type: ignore[arg-type]
        tmp.replace(path)
    return out
