"""Slicing: a canonical volume -> de-identified 2D samples (planes x windows), empty slices dropped.

Each kept slice yields one sample per configured window, in the sample schema declared in
:mod:`radforge.sharder.schema`. The foreground map is computed once per slice on modality units and shared
by all its windows; slices whose foreground share is below the threshold are counted and dropped.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from radforge.ingest.config import ContentConfig, ReformatConfig
from radforge.ingest.content import analyse, foreground_mask, mr_body_threshold
from radforge.ingest.planes import choose_planes
from radforge.ingest.volume import Volume, plane_slices
from radforge.sharder.schema import SCHEMA_VERSION, meta_defaults, sample_key
from radforge.windowing import mr_to_uint16, percentile_to_uint8, resolve_window, window_to_uint8

_PLANE_AXIS = {"axial": 0, "coronal": 1, "sagittal": 2}


@dataclass
class SliceCounts:
    """What slicing did to one series."""

    written: int = 0  # samples (slices x windows)
    kept_slices: int = 0
    dropped_slices: int = 0
    planes: list[str] = field(default_factory=list)  # the planes the plane policy chose
    plane_rule: str = ""  # why (see radforge.ingest.planes)


def render_window(image: np.ndarray, *, modality: str, window: str, mask: np.ndarray | None) -> np.ndarray:
    """One intensity representation of a slice in modality units (see :mod:`radforge.sharder.schema`)."""
    if modality == "CT":
        if window == "raw":
            return image.astype(np.int16, copy=False)
        return window_to_uint8(image, resolve_window(window))
    if window == "raw":
        return mr_to_uint16(image)
    return percentile_to_uint8(image, mask=mask)


def volume_samples(
    vol: Volume,
    *,
    modality: str,
    series_key: str,
    planes: Sequence[str],
    windows: Sequence[str],
    content: ContentConfig,
    base_meta: dict[str, Any],
    counts: SliceCounts,
    reformat: ReformatConfig | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield samples (the :mod:`radforge.sharder.schema` columns) for every kept slice, plane and window.

    ``planes`` (``["auto"]`` or a list) goes through the plane policy with ``reformat``'s limits
    (:func:`radforge.ingest.planes.choose_planes`); ``counts`` records the choice.
    """
    rules = reformat or ReformatConfig()
    choice = choose_planes(vol, planes, max_anisotropy=rules.max_anisotropy, min_side=rules.min_side)
    counts.planes, counts.plane_rule = list(choice.planes), choice.rule
    # MR has no absolute scale: one body threshold per volume, so air-only end slices stay empty.
    mr_threshold = mr_body_threshold(vol.array[::2, ::4, ::4]) if modality == "MR" else None
    for plane in choice.planes:
        for ps in plane_slices(vol, plane):
            c = analyse(
                ps.image,
                modality=modality,
                patch=content.fg_patch,
                hu_threshold=content.ct_threshold_hu,
                mr_threshold=mr_threshold,
            )
            if c.fraction < content.min_foreground:
                counts.dropped_slices += 1
                continue
            counts.kept_slices += 1
            axis = _PLANE_AXIS[plane]
            meta = meta_defaults()
            meta.update(base_meta)
            meta.update(
                schema=SCHEMA_VERSION,
                series_key=series_key,
                modality=modality,
                plane=plane,
                slice_index=ps.index,
                series_length=ps.n_slices,
                pixel_spacing=[round(float(ps.pixel_spacing[0]), 4), round(float(ps.pixel_spacing[1]), 4)],
                slice_spacing=round(float(vol.spacing[axis]), 4),
                fg_patch=content.fg_patch,
                fg_fraction=round(c.fraction, 4),
                body_box=list(c.box) if c.box else None,
                gantry_tilt_deg=round(float(vol.gantry_tilt_deg), 3),
            )
            # MR percentiles are taken over the body only (a dark background would compress the anatomy).
            mask = (
                foreground_mask(ps.image, modality="MR", mr_threshold=mr_threshold)
                if modality == "MR" and "pct" in windows
                else None
            )
            for window in windows:
                img = render_window(ps.image, modality=modality, window=window, mask=mask)
                meta["window"] = window
                counts.written += 1
                yield {
                    "key": sample_key(series_key, plane, ps.index, window),
                    "image": np.ascontiguousarray(img),
                    "fg": c.fg,
                    "meta": dict(meta),
                }
