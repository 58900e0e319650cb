"""radforge's input mapping as a Hugging Face image processor, shipped into ``radforge export``'s hf folder.

Not imported by radforge itself (it needs transformers): the export copies this file and
:mod:`.preprocessing` next to the model, and ``preprocessor_config.json`` names this class in its
``auto_map``, so ::

    processor = AutoImageProcessor.from_pretrained("OUT/hf", trust_remote_code=True)
    pixel_values = processor(slices, modality="CT", return_tensors="pt")["pixel_values"]

runs exactly :func:`.preprocessing.preprocess` (air clip, per-image z-score, resize). No stock
processor can: they normalise with fixed dataset means, not per image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature

from .preprocessing import preprocess as radforge_preprocess


class RadforgeImageProcessor(BaseImageProcessor):
    """Stored slices (H, W) -> ``pixel_values`` (B, 1, S, S) float32, one slice at a time.

    ``modality`` ("CT" or "MR") and ``window`` ("raw" or the stored window's name) may be one value
    for the batch or one per slice.
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        *,
        image_size: int = 224,
        ct_air_hu: float = -1000.0,
        modality: str = "CT",
        window: str = "raw",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.image_size = image_size
        self.ct_air_hu = ct_air_hu
        self.modality = modality
        self.window = window

    def preprocess(
        self,
        images: np.ndarray | torch.Tensor | Sequence[np.ndarray | torch.Tensor],
        *,
        modality: str | Sequence[str] | None = None,
        window: str | Sequence[str] | None = None,
        return_tensors: str | None = "pt",
        **kwargs: Any,
    ) -> BatchFeature:
        """One 2D slice, a (B, H, W) stack or a list of 2D slices -> ``{"pixel_values": (B, 1, S, S)}``."""
        if kwargs:
            raise ValueError(f"unknown arguments {sorted(kwargs)}; valid: modality, window, return_tensors")
        single = getattr(images, "ndim", None) == 2
        slices: list[Any] = [images] if single else list(images)  # type: ignore[arg-type]
        modalities = _per_slice(modality or self.modality, len(slices), "modality")
        windows = _per_slice(window or self.window, len(slices), "window")
        pixels = torch.stack(
            [
                radforge_preprocess(im, modality=m, window=w, size=self.image_size, ct_air_hu=self.ct_air_hu)
                for im, m, w in zip(slices, modalities, windows, strict=True)
            ]
        )
        data = {"pixel_values": pixels if return_tensors == "pt" else pixels.numpy()}
        return BatchFeature(data=data, tensor_type=return_tensors)


def _per_slice(value: str | Sequence[str], n: int, name: str) -> list[str]:
    if isinstance(value, str):
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} values for {n} slices")
    return values
