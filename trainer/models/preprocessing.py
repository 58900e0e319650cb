"""The input mapping: a stored slice -> what the network sees. One definition for training, eval and exports.

The released Curia-2 processor's mapping (RECIPE.md, "Data"): raw CT clipped below air (-1000 HU),
then every image z-scored on its own statistics (eps 1e-6); MR raw values and stored uint8 windows
are only z-scored. :func:`preprocess` adds the antialiased bilinear resize to the network's size.
Training's views apply the same parts (:func:`clip_air`, :func:`image_stats`, :data:`ZSCORE_EPS`)
in a different order: they crop and resize first and z-score with the whole image's statistics,
which resizing (a linear map) leaves equal.

This module imports only torch and numpy: ``radforge export`` ships it verbatim with the model
package, and the Hugging Face image processor of an export calls it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

ZSCORE_EPS = 1e-6  # the released Curia-2 processor's epsilon


def clip_air(image: torch.Tensor, *, modality: str, window: str, ct_air_hu: float = -1000.0) -> torch.Tensor:
    """A stored slice as float32: raw CT (``window == "raw"``) clipped below ``ct_air_hu``, others cast.

    Integer CT is clipped before the cast (an int16 clamp, exact), float CT after.
    """
    if modality == "CT" and window == "raw":
        clipped = image.clamp_min(ct_air_hu) if image.is_floating_point() else image.clamp_min(int(ct_air_hu))
        return clipped.float()
    return image.float()


def image_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of all of ``x`` as float32 0-d tensors on its device.

    One pass each (sum, dot), combined in fp64 so a 512 x 512 CT slice in HU keeps its precision, and
    no host synchronisation on a GPU.
    """
    flat = x.reshape(-1)
    n = flat.numel()
    mean = flat.sum().double() / n
    var = (torch.dot(flat, flat).double() / n - mean * mean).clamp_min(0.0)
    return mean.float(), var.sqrt().float()


def zscore(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(x - mean) / (std + ZSCORE_EPS): the per-image normalisation."""
    return (x - mean) / (std + ZSCORE_EPS)


def preprocess(
    image: np.ndarray | torch.Tensor,
    *,
    modality: str,
    window: str = "raw",
    size: int,
    ct_air_hu: float = -1000.0,
) -> torch.Tensor:
    """A stored slice (H, W) (int16 HU, uint8 window, uint16 MR) -> network input (1, size, size) float32.

    Air clip (raw CT), per-image z-score, then an antialiased bilinear resize to size x size (skipped
    when the slice has that size already).
    """
    x = torch.as_tensor(np.ascontiguousarray(image) if isinstance(image, np.ndarray) else image)
    if x.ndim != 2:
        raise ValueError(f"expected one 2D slice (H, W), got shape {tuple(x.shape)}")
    x = clip_air(x, modality=modality, window=window, ct_air_hu=ct_air_hu)
    x = zscore(x, *image_stats(x))
    if tuple(x.shape) != (size, size):
        x = F.interpolate(x[None, None], size=(size, size), mode="bilinear", antialias=True)[0, 0]
    return x[None]
