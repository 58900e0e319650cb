"""Intensities: from stored pixels to network input, and radiology-safe per-view augmentations.

Input mapping (RECIPE.md, "Data"): the released Curia-2 processor clips raw CT below air
(-1000 HU) and z-scores each image on its own (mean/std, eps 1e-6); MR raw values are z-scored per
image. Stored uint8 windows (a CT preset or MR percentile scaling) are z-scored the same way. The
mapping is defined once, in :mod:`radforge.trainer.models.preprocessing` (which evaluation and every
export use too); the views apply its parts around cropping. As an option, a raw CT slice is
first mapped through a random clinical window (a preset from ``radforge.windowing.CT_PRESETS`` with
its level and width jittered): windows as an augmentation is our inference.

Per-view augmentations replace DINOv2's RGB colour jitter, grayscale and solarize, which have no
meaning on one grey channel: contrast and brightness in z-score units, gamma on the view's range,
Gaussian blur (DINOv2's probabilities and sigmas) and Gaussian noise. Parameters are drawn per view
by pure numpy (:func:`sample_view_augment`) and applied to a batch of views in a few torch ops
(:func:`apply_view_augment`), on whatever device the views are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from radforge.trainer.models.preprocessing import ZSCORE_EPS, clip_air, image_stats, zscore
from radforge.windowing import CT_PRESETS

# Presets a random window is drawn from: the body and head windows (not the extreme stroke/temporal ones).
RANDOM_WINDOWS: tuple[str, ...] = ("soft_tissue", "abdomen", "liver", "mediastinum", "lung", "bone", "brain")
BLUR_RADIUS = 4  # kernel 9, as DINOv2's GaussianBlur


def sample_random_window(
    rng: np.random.Generator, *, names: Sequence[str] = RANDOM_WINDOWS, jitter: float = 0.1
) -> tuple[float, float]:
    """A (level, width) in HU: a random preset, level shifted by U(-j, j) x width, width x exp(U(-j, j))."""
    preset = CT_PRESETS[names[int(rng.integers(len(names)))]]
    level = preset.level + rng.uniform(-jitter, jitter) * preset.width
    width = preset.width * math.exp(rng.uniform(-jitter, jitter))
    return float(level), float(width)


def prepare(
    image: torch.Tensor,
    *,
    modality: str,
    window: str,
    air_hu: float = -1000.0,
    random_window: tuple[float, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stored slice (H, W) -> (float32 slice, its mean, its std), before the per-image z-score.

    The parts of :func:`radforge.trainer.models.preprocessing.preprocess` (the one input mapping),
    plus the random window. Raw CT is clipped below ``air_hu`` and, with ``random_window``
    (level, width), mapped to [0, 1] through that window; other inputs are only cast. Returning the
    statistics instead of the z-scored slice lets the views apply the z-score after cropping
    (resizing is linear, so the result is the same) on fewer pixels. Statistics as
    :func:`~radforge.trainer.models.preprocessing.image_stats` computes them.
    """
    x = clip_air(image, modality=modality, window=window, ct_air_hu=air_hu)
    if random_window is not None and modality == "CT" and window == "raw":
        level, width = random_window
        x = ((x - (level - width / 2.0)) / width).clamp_(0.0, 1.0)
    mean, std = image_stats(x)
    return x, mean, std


def to_input(
    image: torch.Tensor,
    *,
    modality: str,
    window: str,
    air_hu: float = -1000.0,
    random_window: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Stored slice (H, W) (int16 HU, uint8 window, uint16 MR) -> float32 (H, W) z-scored per image.

    What the released Curia-2 processor feeds the network (see :func:`prepare` for the options).
    """
    x, mean, std = prepare(
        image, modality=modality, window=window, air_hu=air_hu, random_window=random_window
    )
    return zscore(x, mean, std)


@dataclass(frozen=True)
class ViewAugment:
    """Per-view augmentation parameters (arrays of length V); neutral values mean "not applied"."""

    contrast: np.ndarray  # factor around the view mean (1: none)
    brightness: np.ndarray  # additive shift, z-score units (0: none)
    gamma: np.ndarray  # exponent on the view's min-max range (1: none)
    blur_sigma: np.ndarray  # pixels (0: none)
    noise_std: np.ndarray  # z-score units (0: none)
    noise_seed: int

    def __getitem__(self, index: slice) -> ViewAugment:
        return ViewAugment(
            contrast=self.contrast[index],
            brightness=self.brightness[index],
            gamma=self.gamma[index],
            blur_sigma=self.blur_sigma[index],
            noise_std=self.noise_std[index],
            noise_seed=self.noise_seed,
        )

    @staticmethod
    def concat(parts: Sequence[ViewAugment]) -> ViewAugment:
        """Parameters of several view batches, in order (one noise seed: the first's)."""
        return ViewAugment(
            contrast=np.concatenate([p.contrast for p in parts]),
            brightness=np.concatenate([p.brightness for p in parts]),
            gamma=np.concatenate([p.gamma for p in parts]),
            blur_sigma=np.concatenate([p.blur_sigma for p in parts]),
            noise_std=np.concatenate([p.noise_std for p in parts]),
            noise_seed=parts[0].noise_seed,
        )


def sample_view_augment(
    blur_p: np.ndarray,
    *,
    rng: np.random.Generator,
    contrast_p: float = 0.8,
    contrast: tuple[float, float] = (0.6, 1.4),
    brightness: tuple[float, float] = (-0.4, 0.4),
    gamma_p: float = 0.2,
    gamma: tuple[float, float] = (0.7, 1.5),
    blur_sigma: tuple[float, float] = (0.1, 2.0),
    noise_p: float = 0.2,
    noise_std: tuple[float, float] = (0.0, 0.1),
) -> ViewAugment:
    """Draw parameters for V = len(blur_p) views; ``blur_p`` is each view's blur probability."""
    v = len(blur_p)
    jitter = rng.random(v) < contrast_p
    gam = rng.random(v) < gamma_p
    blur = rng.random(v) < blur_p
    noise = rng.random(v) < noise_p
    return ViewAugment(
        contrast=np.where(jitter, rng.uniform(*contrast, v), 1.0),
        brightness=np.where(jitter, rng.uniform(*brightness, v), 0.0),
        gamma=np.where(gam, np.exp(rng.uniform(math.log(gamma[0]), math.log(gamma[1]), v)), 1.0),
        blur_sigma=np.where(blur, rng.uniform(*blur_sigma, v), 0.0),
        noise_std=np.where(noise, rng.uniform(*noise_std, v), 0.0),
        noise_seed=int(rng.integers(2**62)),
    )


def gaussian_blur(views: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each view (V, 1, H, W) with its own sigma (V,): separable 9-tap kernels, reflect padding.

    Written as 2 x 9 shifted multiply-adds over the whole batch: on a CPU core this is ~5x faster
    than a grouped convolution with per-view kernels.
    """
    v, _, h, w = views.shape
    r = BLUR_RADIUS
    taps = torch.arange(-r, r + 1, device=views.device, dtype=views.dtype)
    kernel = torch.exp(-(taps**2) / (2.0 * sigma[:, None].to(views.dtype) ** 2))
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).view(v, 2 * r + 1, 1, 1)
    x = F.pad(views, (r, r, r, r), mode="reflect")[:, 0]  # (V, H + 2r, W + 2r)
    rows = x[:, 0:h, :] * kernel[:, 0]
    for i in range(1, 2 * r + 1):
        rows.addcmul_(x[:, i : i + h, :], kernel[:, i])
    out = rows[:, :, 0:w] * kernel[:, 0]
    for i in range(1, 2 * r + 1):
        out.addcmul_(rows[:, :, i : i + w], kernel[:, i])
    return out.unsqueeze(1)


def apply_view_augment(
    views: torch.Tensor,
    aug: ViewAugment,
    *,
    image_mean: torch.Tensor | None = None,
    image_std: torch.Tensor | None = None,
) -> torch.Tensor:
    """Apply ``aug`` to views (V, 1, H, W): contrast/brightness, gamma, blur, noise, in that order.

    With ``image_mean`` / ``image_std`` (V,) tensors, the views are first z-scored with their source
    image's statistics (fused with contrast and brightness into one multiply-add per pixel).
    """
    dev, dt = views.device, views.dtype

    def col(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a, dtype=dt, device=dev).view(-1, 1, 1, 1)

    v = len(views)
    m = torch.zeros(v, device=dev) if image_mean is None else image_mean.to(dev, dt)
    s = torch.ones(v, device=dev) if image_std is None else image_std.to(dev, dt) + ZSCORE_EPS
    m, s = m.view(-1, 1, 1, 1), s.view(-1, 1, 1, 1)
    c, b = col(aug.contrast), col(aug.brightness)
    # z = (v - m) / s, then z' = c (z - mean z) + mean z + b = (c / s) v + (1 - c) / s mean(v) + b - m / s
    view_mean = views.mean(dim=(1, 2, 3), keepdim=True)
    offset = torch.addcmul(b - m / s, view_mean, (1.0 - c) / s)
    views = torch.addcmul(offset, views, c / s)

    idx = np.nonzero(aug.gamma != 1.0)[0]
    if idx.size:
        sub = views[idx]
        lo = sub.amin(dim=(1, 2, 3), keepdim=True)
        span = sub.amax(dim=(1, 2, 3), keepdim=True) - lo + 1e-6
        views[idx] = lo + span * ((sub - lo) / span).clamp_(0.0, 1.0).pow(col(aug.gamma[idx]))

    idx = np.nonzero(aug.blur_sigma > 0.0)[0]
    if idx.size:
        views[idx] = gaussian_blur(views[idx], torch.as_tensor(aug.blur_sigma[idx], device=dev))

    idx = np.nonzero(aug.noise_std > 0.0)[0]
    if idx.size:
        gen = torch.Generator(device=dev).manual_seed(aug.noise_seed)
        noise = torch.randn(views[idx].shape, generator=gen, device=dev, dtype=dt)
        views[idx] = views[idx] + noise * col(aug.noise_std[idx])
    return views
