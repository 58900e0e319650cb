"""4D series: how the images of one series UID form 3D volumes, and which volumes are kept.

Pure decisions over :class:`~radforge.ingest.discover.Header` records, used by
:func:`radforge.ingest.series.plan_group`: a series whose images revisit the same positions holds
several volumes (diffusion directions, time points, echoes, cardiac phases; a Siemens MOSAIC
instance is a volume by itself), told apart by the attribute that separates them; images are
also told apart by kind (magnitude, phase, real, imaginary). ``keep_evenly`` picks the volumes a
capped series keeps; ``frame_volumes`` labels the frames of an enhanced multi-frame 4D image.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import pydicom

from radforge.ingest.dicom.values import to_floats
from radforge.ingest.mosaic import is_mosaic

if TYPE_CHECKING:  # discovery calls frame_volumes while building its Header: no import cycle at run time
    from radforge.ingest.discover import Header


def split_volumes(disc: str, members: list[Header]) -> dict[str, list[Header]]:
    """Split a group whose instances revisit the same positions into 3D volumes.

    A MOSAIC instance is a whole volume by itself. Otherwise the first attribute (diffusion b-value
    and gradient, trigger time, acquisition number) whose values leave no position duplicated
    within a volume splits the group; echo and temporal position already did (see
    :func:`_sub_series`). Nothing splits a group whose duplicates no attribute explains: it stays
    one group and assembly quarantines it as ``duplicate_positions``.
    """
    if len(members) > 1 and is_mosaic(members[0].image_type):
        return {f"{disc}|i{h.sop_instance or h.path}": [h] for h in members}
    if not _duplicated(members):
        return {disc: members}
    for prefix, value in _VOLUME_ATTRIBUTES:
        by_value: dict[str, list[Header]] = defaultdict(list)
        for h in members:
            by_value[f"{disc}|{prefix}{value(h) or ''}"].append(h)
        if len(by_value) > 1 and not any(_duplicated(group) for group in by_value.values()):
            return dict(by_value)
    if len({h.acquisition for h in members}) > 1:  # as before: acquisitions are separate volumes
        by_acq: dict[str, list[Header]] = defaultdict(list)
        for h in members:
            by_acq[f"{disc}|a{h.acquisition or ''}"].append(h)
        return dict(by_acq)
    return {disc: members}


def _duplicated(members: list[Header]) -> bool:
    positions = [tuple(round(v, 2) for v in h.ipp) for h in members if h.ipp]
    return len(positions) != len(set(positions))


# Attributes that tell the volumes of a 4D series apart, tried in this order (prefix, value).
_VOLUME_ATTRIBUTES: tuple[tuple[str, Any], ...] = (
    ("b", lambda h: f"{h.b_value}/{h.gradient}" if h.b_value or h.gradient else None),
    ("g", lambda h: h.trigger),
    ("a", lambda h: h.acquisition),
)


def image_kind(image_type: list[str]) -> str:
    """What an image's pixels are, from ImageType values 3 on: magnitude, phase, real or imaginary.

    Vendors write the kind as a letter (Siemens ``P``), a word (``PHASE``) or a prefix (Philips
    ``P_FFE``, ``R_SE``); anything else is a magnitude image (including derived maps).
    """
    for value in image_type[2:]:
        head = value.split("_", 1)[0]
        for kind, names in _IMAGE_KINDS.items():
            if value in names or head in names:
                return kind
    return MAGNITUDE


MAGNITUDE = "magnitude"
_IMAGE_KINDS = {"phase": {"P", "PHASE"}, "real": {"R", "REAL"}, "imaginary": {"I", "IMAGINARY"}}
IMAGE_KINDS = (MAGNITUDE, *_IMAGE_KINDS)


def keep_evenly(n: int, cap: int) -> list[int]:
    """Indices of the ``cap`` volumes of ``n`` to keep: evenly spread, always the first (and the last)."""
    if n <= cap:
        return list(range(n))
    if cap == 1:
        return [0]
    return sorted({round(i * (n - 1) / (cap - 1)) for i in range(cap)})


def _number(value: str | None) -> float:
    try:
        return float(value) if value is not None else -math.inf
    except ValueError:
        return -math.inf


def volume_order(members: list[Header]) -> tuple[Any, ...]:
    """Acquisition order of a volume: temporal position, acquisition, b-value, trigger, echo."""
    h = min(members, key=lambda m: m.path)
    return (
        _number(h.temporal),
        _number(h.acquisition),
        _number(h.b_value),
        h.gradient or "",
        _number(h.trigger),
        _number(h.echo),
        h.path,
    )


# Per-frame attributes that tell the volumes of an enhanced multi-frame 4D image apart, in the order
# they are tried: (functional group macro, attribute), as PS3.3 C.7.6.16 places them.
_FRAME_VOLUME_ATTRIBUTES = (
    ("FrameContentSequence", "TemporalPositionIndex"),
    ("MRDiffusionSequence", "DiffusionBValue"),
    ("MREchoSequence", "EffectiveEchoTime"),
    ("CardiacSynchronizationSequence", "NominalCardiacTriggerDelayTime"),
    ("FrameContentSequence", "StackID"),
)


def frame_volumes(ds: Any, frames: int) -> list[int] | None:
    """Volume index of each frame of an enhanced multi-frame image whose frames revisit positions.

    The first per-frame attribute (temporal position index, b-value, effective echo time, trigger
    delay, stack ID) whose values leave no position repeated within a volume decides; volumes are
    numbered in the order of its values. None when positions do not repeat or nothing explains it.
    """
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") if isinstance(ds, pydicom.Dataset) else None
    if not per_frame or len(per_frame) != frames:
        return None

    def value(item: Any, macro: str, keyword: str) -> Any:
        seq = item.get(macro)
        return seq[0].get(keyword) if seq else None

    positions = [to_floats(value(f, "PlanePositionSequence", "ImagePositionPatient"), 3) for f in per_frame]
    if any(p is None for p in positions):
        return None
    rounded = [tuple(round(v, 2) for v in p or ()) for p in positions]
    if len(set(rounded)) == len(rounded):
        return None
    for macro, keyword in _FRAME_VOLUME_ATTRIBUTES:
        labels = [str(value(item, macro, keyword)) for item in per_frame]
        distinct = sorted(set(labels), key=lambda v: (to_floats(v, 1) or (float("inf"),), v))
        if len(distinct) < 2 or len(set(zip(labels, rounded, strict=True))) != len(rounded):
            continue
        index = {label: k for k, label in enumerate(distinct)}
        return [index[label] for label in labels]
    return None
