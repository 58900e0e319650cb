"""Multi-crop views of radiology slices, and the batch the training step consumes.

One slice (``image``, ``fg``, ``meta`` as the sample schema stores them) becomes ``global_count``
global crops and ``local_count`` local crops (DINOv2 default 2 x 224 + 8 x 96), placed on anatomy
(:mod:`radforge.trainer.views.crops`), resized with an antialiased bilinear filter, flipped / slightly
rotated, and augmented per view (:mod:`radforge.trainer.views.intensity`). Each global crop also carries its
per-patch foreground share, the prior of anatomy-guided masking (:mod:`radforge.trainer.views.masking`),
which :func:`collate_views` applies batch-wide.

Decisions (boxes, flips, angles, augmentation parameters) are drawn by pure numpy in
:meth:`MultiCrop.plan`; pixels are produced by torch ops in :meth:`MultiCrop.render`, on the CPU in
a data-loader worker or, for a batch of raw slices, on the GPU (``device="cuda"``), so the CPU never
limits a large GPU pool. No PIL: stored int16/uint8/uint16 arrays go straight to tensors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from radforge.trainer.views.crops import body_region, box_foreground, sample_crop_boxes
from radforge.trainer.views.intensity import (
    RANDOM_WINDOWS,
    ViewAugment,
    apply_view_augment,
    prepare,
    sample_random_window,
    sample_view_augment,
)
from radforge.trainer.views.masking import sample_masks

Sample = tuple[np.ndarray, np.ndarray, Mapping[str, Any]]  # (image, fg, meta) as stored


@dataclass(frozen=True)
class CropPlan:
    """Every random decision for the views of one slice (G global, L local crops)."""

    global_boxes: np.ndarray  # (G, 4) int pixel boxes (row0, col0, row1, col1)
    local_boxes: np.ndarray  # (L, 4)
    flips: np.ndarray  # (G + L,) bool, horizontal flip
    angles: np.ndarray  # (G + L,) degrees, 0 = no rotation
    augment: ViewAugment  # per view, globals first
    priors: np.ndarray  # (G, gh, gw) float32 foreground share per patch of each global crop (flipped too)
    random_window: tuple[float, float] | None  # (level, width) for raw CT, or None


@dataclass(frozen=True)
class Views:
    """All views of one slice."""

    global_crops: torch.Tensor  # (G, 1, S, S) float32
    local_crops: torch.Tensor  # (L, 1, s, s)
    priors: np.ndarray  # (G, S/p, S/p) float32


@dataclass(frozen=True)
class ViewBatch:
    """A training batch of B slices. Crops are crop-major: index = crop * B + image."""

    global_crops: torch.Tensor  # (G * B, 1, S, S)
    local_crops: torch.Tensor  # (L * B, 1, s, s)
    masks: torch.Tensor  # (G * B, N) bool, N = (S/p)^2 patches; True = hidden from the student
    n_global: int
    n_local: int

    @property
    def batch_size(self) -> int:
        return self.global_crops.shape[0] // self.n_global

    def pin_memory(self) -> ViewBatch:
        """The batch in page-locked memory (a DataLoader with ``pin_memory=True`` calls this)."""
        return ViewBatch(
            global_crops=self.global_crops.pin_memory(),
            local_crops=self.local_crops.pin_memory(),
            masks=self.masks.pin_memory(),
            n_global=self.n_global,
            n_local=self.n_local,
        )

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> ViewBatch:
        """The batch on ``device``."""
        return ViewBatch(
            global_crops=self.global_crops.to(device, non_blocking=non_blocking),
            local_crops=self.local_crops.to(device, non_blocking=non_blocking),
            masks=self.masks.to(device, non_blocking=non_blocking),
            n_global=self.n_global,
            n_local=self.n_local,
        )


def _resize(pyramid: list[torch.Tensor], boxes: np.ndarray, size: int) -> torch.Tensor:
    """Crop ``boxes`` out of a slice and resize each to size x size: (n, 1, size, size).

    ``pyramid`` starts as [slice (1, 1, H, W)] and gains 2x-downsampled copies on demand (kept for
    the slice's other crops). Each crop is read from the level that leaves a residual scale factor
    in [0.71, 1.41) and resized bilinearly, antialiased when it still shrinks: the 2x2 averaging of
    the pyramid does most of the low-pass filtering, at a fraction of the cost of a wide
    antialiasing kernel on the full-resolution slice.
    """
    out = []
    for r0, c0, r1, c1 in boxes.tolist():
        level = max(int(round(np.log2(min(r1 - r0, c1 - c0) / size))), 0)
        while len(pyramid) <= level:
            h, w = pyramid[-1].shape[-2:]
            # bilinear at exactly half size averages 2x2 blocks, ~5x faster than avg_pool2d on a CPU
            pyramid.append(F.interpolate(pyramid[-1], size=(h // 2, w // 2), mode="bilinear"))
        src = pyramid[level]
        if level:
            k, (h, w) = 2**level, src.shape[-2:]
            r0, c0 = min(round(r0 / k), h - 1), min(round(c0 / k), w - 1)
            r1, c1 = max(min(round(r1 / k), h), r0 + 1), max(min(round(c1 / k), w), c0 + 1)
        shrink = min(r1 - r0, c1 - c0) > size
        out.append(
            F.interpolate(src[..., r0:r1, c0:c1], size=(size, size), mode="bilinear", antialias=shrink)
        )
    return torch.cat(out) if out else pyramid[0].new_empty(0, 1, size, size)


def _rotate(views: torch.Tensor, degrees: np.ndarray) -> torch.Tensor:
    """Rotate each view (V, 1, H, W) about its centre by its angle, reflecting at the borders."""
    rad = torch.as_tensor(np.deg2rad(degrees), dtype=views.dtype, device=views.device)
    cos, sin, zero = torch.cos(rad), torch.sin(rad), torch.zeros_like(rad)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(views.shape), align_corners=False)
    return F.grid_sample(views, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


class MultiCrop:
    """Build the views of a slice (plan in numpy, render in torch).

    Keyword arguments mirror :class:`radforge.trainer.recipe.CropConfig` and
    :class:`radforge.trainer.recipe.IntensityConfig`;
    docs/recipe.md says what each does.
    """

    def __init__(
        self,
        *,
        patch_size: int = 16,
        global_count: int = 2,
        global_size: int = 224,
        global_scale: tuple[float, float] = (0.32, 1.0),
        local_count: int = 8,
        local_size: int = 96,
        local_scale: tuple[float, float] = (0.05, 0.32),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        content_aware: bool = True,
        center_sigma: float = 0.25,
        min_foreground: float = 0.3,
        max_tries: int = 10,
        ct_air_hu: float = -1000.0,
        random_window_p: float = 0.0,
        random_windows: Sequence[str] = RANDOM_WINDOWS,
        window_jitter: float = 0.1,
        hflip_p: float = 0.5,
        vflip_p: float = 0.0,
        rotation_p: float = 0.3,
        rotation_deg: float = 10.0,
        contrast_p: float = 0.8,
        contrast: tuple[float, float] = (0.6, 1.4),
        brightness: tuple[float, float] = (-0.4, 0.4),
        gamma_p: float = 0.2,
        gamma: tuple[float, float] = (0.7, 1.5),
        blur_p: tuple[float, float, float] = (1.0, 0.1, 0.5),
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        noise_p: float = 0.2,
        noise_std: tuple[float, float] = (0.0, 0.1),
    ) -> None:
        if global_size % patch_size:
            raise ValueError(f"global_size {global_size} is not a multiple of patch_size {patch_size}")
        self.patch_size = patch_size
        self.global_count, self.global_size, self.global_scale = global_count, global_size, global_scale
        self.local_count, self.local_size, self.local_scale = local_count, local_size, local_scale
        self.ratio = ratio
        self.content_aware, self.center_sigma = content_aware, center_sigma
        self.min_foreground, self.max_tries = min_foreground, max_tries
        self.ct_air_hu = ct_air_hu
        self.random_window_p, self.random_windows, self.window_jitter = (
            random_window_p,
            tuple(random_windows),
            window_jitter,
        )
        self.hflip_p, self.vflip_p = hflip_p, vflip_p
        self.rotation_p, self.rotation_deg = rotation_p, rotation_deg
        self.augment_kwargs: dict[str, Any] = dict(
            contrast_p=contrast_p,
            contrast=contrast,
            brightness=brightness,
            gamma_p=gamma_p,
            gamma=gamma,
            blur_sigma=blur_sigma,
            noise_p=noise_p,
            noise_std=noise_std,
        )
        g, loc = global_count, local_count
        self.blur_p = np.array([blur_p[0]] + [blur_p[1]] * (g - 1) + [blur_p[2]] * loc)

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid of a global crop."""
        n = self.global_size // self.patch_size
        return n, n

    def plan(
        self,
        image_shape: tuple[int, int],
        fg: np.ndarray,
        meta: Mapping[str, Any],
        *,
        rng: np.random.Generator,
    ) -> CropPlan:
        """Draw every decision for one slice (pure numpy: no pixels touched)."""
        cell = int(meta.get("fg_patch") or 16)
        body = (
            body_region(fg, meta.get("body_box"), image_shape=image_shape, cell=cell)
            if self.content_aware
            else None
        )
        common: dict[str, Any] = dict(
            image_shape=image_shape,
            ratio=self.ratio,
            rng=rng,
            fg=fg,
            body=body,
            cell=cell,
            center_sigma=self.center_sigma,
            min_foreground=self.min_foreground if self.content_aware else 0.0,
            max_tries=self.max_tries,
        )
        global_boxes = sample_crop_boxes(self.global_count, scale=self.global_scale, **common)
        local_boxes = sample_crop_boxes(self.local_count, scale=self.local_scale, **common)
        n = self.global_count + self.local_count
        flips = rng.random(n) < self.hflip_p
        vflips = rng.random(n) < self.vflip_p
        rotate = rng.random(n) < self.rotation_p
        angles = np.where(rotate, rng.uniform(-self.rotation_deg, self.rotation_deg, n), 0.0)
        angles = np.where(vflips, angles + 180.0, angles)  # a vertical flip = horizontal flip + 180 degrees
        flips = flips ^ vflips
        priors = box_foreground(fg, global_boxes, image_shape=image_shape, cell=cell, grid=self.grid[0])
        priors = np.where(flips[: self.global_count, None, None], priors[:, :, ::-1], priors)
        priors = np.where((vflips[: self.global_count])[:, None, None], priors[:, ::-1, ::-1], priors)
        window = None
        if (
            meta.get("modality") == "CT"
            and meta.get("window", "raw") == "raw"
            and rng.random() < self.random_window_p
        ):
            window = sample_random_window(rng, names=self.random_windows, jitter=self.window_jitter)
        return CropPlan(
            global_boxes=global_boxes,
            local_boxes=local_boxes,
            flips=flips,
            angles=angles,
            augment=sample_view_augment(self.blur_p, rng=rng, **self.augment_kwargs),
            priors=priors.astype(np.float32),
            random_window=window,
        )

    def render(
        self, samples: Sequence[Sample], plans: Sequence[CropPlan], *, device: torch.device | str = "cpu"
    ) -> list[Views]:
        """Pixels for planned views of several slices; per-view ops are batched over all of them."""
        g, loc = self.global_count, self.local_count
        globals_, locals_, means, stds = [], [], [], []
        for (image, _, meta), plan in zip(samples, plans, strict=True):
            x, mean, std = prepare(
                torch.as_tensor(np.ascontiguousarray(image), device=device),
                modality=str(meta.get("modality", "CT")),
                window=str(meta.get("window", "raw")),
                air_hu=self.ct_air_hu,
                random_window=plan.random_window,
            )
            pyramid = [x[None, None]]
            globals_.append(_resize(pyramid, plan.global_boxes, self.global_size))
            locals_.append(_resize(pyramid, plan.local_boxes, self.local_size))
            means.append(mean)
            stds.append(std)
        parts = []
        for views, sl, per in [
            (torch.cat(globals_), slice(0, g), g),
            (torch.cat(locals_), slice(g, None), loc),
        ]:
            flips = np.concatenate([p.flips[sl] for p in plans])
            angles = np.concatenate([p.angles[sl] for p in plans])
            aug = ViewAugment.concat([p.augment[sl] for p in plans])
            mean = torch.stack(means).repeat_interleave(per)
            std = torch.stack(stds).repeat_interleave(per)
            if len(views):
                idx = np.nonzero(flips)[0]
                if idx.size:
                    views[idx] = views[idx].flip(-1)
                idx = np.nonzero(angles)[0]
                if idx.size:
                    views[idx] = _rotate(views[idx], angles[idx])
                views = apply_view_augment(views, aug, image_mean=mean, image_std=std)
            parts.append(views)
        gl = parts[0].split(g)
        lo = parts[1].split(self.local_count) if self.local_count else [parts[1]] * len(plans)
        return [
            Views(global_crops=a, local_crops=b, priors=p.priors)
            for a, b, p in zip(gl, lo, plans, strict=True)
        ]

    def __call__(
        self, image: np.ndarray, fg: np.ndarray, meta: Mapping[str, Any], *, rng: np.random.Generator
    ) -> Views:
        """Views of one stored slice, on the CPU (what a data-loader worker calls)."""
        return self.batch([(image, fg, meta)], rng=rng)[0]

    def batch(
        self, samples: Sequence[Sample], *, rng: np.random.Generator, device: torch.device | str = "cpu"
    ) -> list[Views]:
        """Views of several slices, rendered on ``device`` (the GPU-side path for raw slices)."""
        plans = [self.plan(tuple(image.shape), fg, meta, rng=rng) for image, fg, meta in samples]  # type: ignore[arg-type]
        return self.render(samples, plans, device=device)


@dataclass(frozen=True)
class MaskSampler:
    """Batch-level iBOT masking (:func:`radforge.trainer.views.masking.sample_masks` with fixed options)."""

    probability: float = 0.5
    ratio: tuple[float, float] = (0.1, 0.5)
    prior: Literal["anatomy", "uniform"] = "anatomy"
    min_block: int = 4
    min_aspect: float = 0.3
    prior_floor: float = 0.02

    def __call__(self, priors: np.ndarray, *, rng: np.random.Generator) -> np.ndarray:
        """Masks (n, h * w) bool for global crops with foreground priors (n, h, w)."""
        n, h, w = priors.shape
        return sample_masks(
            n,
            grid=(h, w),
            rng=rng,
            priors=priors,
            probability=self.probability,
            ratio=self.ratio,
            prior=self.prior,
            prior_floor=self.prior_floor,
            min_block=self.min_block,
            min_aspect=self.min_aspect,
        )


def collate_views(views: Sequence[Views], *, masks: MaskSampler, rng: np.random.Generator) -> ViewBatch:
    """Stack the views of B slices crop-major and draw the batch's iBOT masks."""
    n_global, n_local = views[0].global_crops.shape[0], views[0].local_crops.shape[0]
    global_crops = torch.stack([v.global_crops for v in views], dim=1).flatten(0, 1)
    local_crops = torch.stack([v.local_crops for v in views], dim=1).flatten(0, 1)
    priors = np.stack([v.priors for v in views], axis=1).reshape(-1, *views[0].priors.shape[1:])
    return ViewBatch(
        global_crops=global_crops,
        local_crops=local_crops,
        masks=torch.from_numpy(masks(priors, rng=rng)),
        n_global=n_global,
        n_local=n_local,
    )
