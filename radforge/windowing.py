"""Intensity mapping of CT and MR slices: named CT windows, raw storage types, MR percentile scaling.

Curia-2 trains on raw values (CT HU, MR intensities) z-scored per image, so the default storage is
raw (:func:`hu_to_int16`, :func:`mr_to_uint16`). Windowed uint8 images (:func:`window_to_uint8`,
:func:`percentile_to_uint8`) are the smaller alternative and an augmentation source.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from radforge.config import ConfigError


@dataclass(frozen=True)
class Window:
    """A CT display window in HU: centre ``level`` and ``width`` (DICOM WindowCenter / WindowWidth)."""

    level: float
    width: float

    def __post_init__(self) -> None:
        # PS3.3 C.11.2.1.2: WindowWidth shall be >= 1 for the linear function.
        if not (math.isfinite(self.level) and math.isfinite(self.width)) or self.width < 1:
            raise ConfigError(f"window needs a finite level and width >= 1, got ({self.level}, {self.width})")


# Common clinical (level, width) values in HU, as tabulated by Radiopaedia "Windowing (CT)" and used in
# radiology viewers (e.g. the RSNA intracranial haemorrhage challenge used brain/subdural/bone windows).
CT_PRESETS: Mapping[str, Window] = MappingProxyType(
    {
        "soft_tissue": Window(40, 400),  # general soft tissue W 350-400, L 20-60
        "abdomen": Window(50, 400),
        "liver": Window(60, 160),  # narrow window for parenchymal lesions
        "mediastinum": Window(50, 350),
        "lung": Window(-600, 1500),
        "bone": Window(400, 1800),
        "brain": Window(40, 80),
        "subdural": Window(80, 200),  # W 130-300, L 50-100
        "stroke": Window(40, 40),  # W 8-40, L 32-40: grey/white matter contrast
        "temporal_bone": Window(600, 2800),
        "angio": Window(300, 600),  # CT angiography, contrast-filled vessels
    }
)


def resolve_window(name: str) -> Window:
    """Return the CT preset called ``name`` (case, spaces and dashes are ignored: "Soft-tissue" works).

    Raises ``ConfigError`` naming the bad preset and listing the valid ones, so a typo in a config
    stops the job before it starts.
    """
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    try:
        return CT_PRESETS[key]
    except KeyError:
        valid = ", ".join(sorted(CT_PRESETS))
        raise ConfigError(f"unknown CT window preset {name!r}; valid presets: {valid}") from None


def window_to_uint8(hu: np.ndarray, window: Window) -> np.ndarray:
    """Map HU to 0..255 with the DICOM linear VOI LUT (PS3.3 C.11.2.1.2.1) of ``window``.

    With centre ``c``, width ``w`` and output range 0..255 the standard defines::

        y = 0                                         if x <= c - 0.5 - (w - 1) / 2
        y = 255                                       if x >  c - 0.5 + (w - 1) / 2
        y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255   otherwise

    The three pieces meet, so this is the line clipped to [0, 255]; the result is rounded half up,
    ``floor(y + 0.5)``. So ``c - w/2`` maps to 0, ``c + w/2`` to 255 and ``c`` to
    ``round(127.5 + 127.5 / (w - 1))``. Computed in float32 in one fused pass (~0.2 ms for 512x512).
    """
    if window.width == 1:  # the standard's degenerate case: a step at c - 0.5
        return np.where(np.greater(hu, window.level - 0.5), np.uint8(255), np.uint8(0))
    scale = 255.0 / (window.width - 1.0)
    offset = (0.5 - (window.level - 0.5) / (window.width - 1.0)) * 255.0 + 0.5  # + 0.5: round half up
    y = np.multiply(hu, np.float32(scale), dtype=np.float32)
    y += np.float32(offset)
    np.clip(y, np.float32(0.5), np.float32(255.5), out=y)  # + 0.5 shift done: truncation is floor, 0..255
    return y.astype(np.uint8)


def hu_to_int16(hu: np.ndarray, *, clip_min: float = -1024.0, clip_max: float = 32767.0) -> np.ndarray:
    """Round HU to the nearest integer and clip to ``[clip_min, clip_max]`` as int16 (raw CT storage).

    The default floor of -1024 folds scanner padding values (-2000, -3024 outside the field of view)
    into air, as Curia-2 clips below air.
    """
    lo, hi = np.iinfo(np.int16).min, np.iinfo(np.int16).max
    if not lo <= clip_min <= clip_max <= hi:
        raise ConfigError(f"HU clip range needs {lo} <= min <= max <= {hi}, got ({clip_min}, {clip_max})")
    arr = np.asarray(hu)
    if arr.dtype.kind == "f":
        return np.clip(np.rint(arr), clip_min, clip_max).astype(np.int16)
    # Integer input: integer bounds keep numpy from promoting (or refusing, NEP 50) the whole slice.
    lo_i, hi_i = math.ceil(clip_min), math.floor(clip_max)
    if arr.dtype == np.int16:
        return np.clip(arr, lo_i, hi_i)
    if arr.dtype == np.int32:  # the decoder's exact CT path: clip within int32, then one narrowing pass
        return np.clip(arr, lo_i, hi_i).astype(np.int16)
    return np.clip(arr.astype(np.int64), lo_i, hi_i).astype(np.int16)


def mr_to_uint16(img: np.ndarray) -> np.ndarray:
    """Raw MR values as uint16: rounded, negatives to 0 and values above 65535 to 65535.

    MR intensities have no physical unit; storing them unscaled keeps every decision to the trainer's
    per-image normalisation.
    """
    arr = np.asarray(img)
    if arr.dtype == np.uint16:
        return arr
    if arr.dtype.kind == "f":
        return np.clip(np.rint(arr), 0, 65535).astype(np.uint16)
    if arr.dtype.itemsize <= 2:  # int8/uint8/int16 cannot exceed 65535
        return np.maximum(arr, 0).astype(np.uint16)
    return np.clip(arr.astype(np.int64), 0, 65535).astype(np.uint16)


def percentile_to_uint8(
    img: np.ndarray, *, low: float = 0.5, high: float = 99.5, mask: np.ndarray | None = None
) -> np.ndarray:
    """Scale MR intensities linearly so the ``low``..``high`` percentiles span 0..255 (clipped, rounded).

    MR has no absolute scale, so a robust per-image range replaces CT's fixed windows. With ``mask``
    (the foreground), the percentiles are taken over the masked pixels only, so a large dark background
    does not compress the anatomy; an empty mask falls back to the whole image. A flat image maps to 0.
    """
    if not 0.0 <= low < high <= 100.0:
        raise ConfigError(f"percentiles must satisfy 0 <= low < high <= 100, got ({low}, {high})")
    arr = np.asarray(img)
    values = arr
    if mask is not None:
        if mask.shape != arr.shape:
            raise ConfigError(f"mask shape {mask.shape} does not match image shape {arr.shape}")
        if mask.any():
            values = arr[mask.astype(bool, copy=False)]
    p_lo, p_hi = np.percentile(values, [low, high])
    if not p_hi > p_lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    y = np.subtract(arr, p_lo, dtype=np.float32)
    y *= np.float32(255.0 / (p_hi - p_lo))
    y += np.float32(0.5)
    np.clip(y, np.float32(0.5), np.float32(255.5), out=y)
    return y.astype(np.uint8)
