"""Grouping objects into series: pure decisions over :class:`~radforge.ingest.discover.Header` records.

A DICOM series is (StudyInstanceUID, SeriesInstanceUID), split further where one UID holds images
that cannot form one volume: different orientations, image sizes, echoes or temporal positions,
and acquisitions that revisit the same positions. Each ``.nii``/``.nii.gz`` is its own series.
Objects that are not cross-sectional CT/MR images are skipped with a reason; unreadable objects
become their own quarantined entries, so every object of an archive is accounted for.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from radforge.ingest.deid import salted_key
from radforge.ingest.discover import Header
from radforge.ingest.errors import Reason, Status, status_for

# SOP classes that hold cross-sectional CT/MR pixel data (PS3.4 B.5).
IMAGE_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
        "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
        "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT Image Storage
        "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
        "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image Storage
        "1.2.840.10008.5.1.4.1.1.4.4",  # Legacy Converted Enhanced MR Image Storage
    }
)
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
# Other image storage classes (CR, DX, US, NM, PET, XA, ...) hold pixels but are not CT/MR volumes.
OTHER_IMAGE_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.1",  # CR / DX / MG / IO
    "1.2.840.10008.5.1.4.1.1.3",  # US multi-frame (retired)
    "1.2.840.10008.5.1.4.1.1.6",  # US
    "1.2.840.10008.5.1.4.1.1.12",  # XA / RF
    "1.2.840.10008.5.1.4.1.1.20",  # NM
    "1.2.840.10008.5.1.4.1.1.77",  # VL
    "1.2.840.10008.5.1.4.1.1.128",  # PET
    "1.2.840.10008.5.1.4.1.1.130",  # Enhanced PET
)
VOLUME_MODALITIES = frozenset({"CT", "MR"})
LOCALIZER_TYPES = frozenset({"LOCALIZER", "SCOUT", "SCANOGRAM"})
_IOP_DECIMALS = 3


@dataclass
class Instance:
    """One source object of a series, with what ordering needs."""

    path: str
    ipp: list[float] | None
    iop: list[float] | None
    frames: int


@dataclass
class SeriesPlan:
    """A series to process (or the record of one skipped/quarantined). Crosses Ray as JSON."""

    series_key: str
    study_key: str | None
    kind: str  # 'dicom' | 'nifti' | 'object'
    status: str  # 'pending' | Status values
    reason: str | None = None
    detail: str | None = None
    modality: str | None = None
    n_objects: int = 0
    instances: list[Instance] = field(default_factory=list)
    rows: int | None = None
    cols: int | None = None
    pixel_spacing: list[float] | None = None
    slice_thickness: float | None = None
    transfer_syntax: str | None = None
    attrs: dict[str, Any] = field(default_factory=dict)  # de-identified, allow-listed

    def to_json(self) -> str:
        # Shallow: every field is a scalar, a list/dict of scalars or the instances (flat records);
        # dataclasses.asdict's recursive deep copy cost ~20 ms per 256-slice series on the driver.
        data = dict(self.__dict__)
        data["instances"] = [i.__dict__ for i in self.instances]
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> SeriesPlan:
        data = json.loads(text)
        data["instances"] = [Instance(**i) for i in data["instances"]]
        return cls(**data)

    def stop(self, reason: Reason, detail: str) -> SeriesPlan:
        self.status, self.reason, self.detail = status_for(reason).value, reason.value, detail
        return self


def group_key(h: Header) -> str:
    """The key objects are grouped by before planning (one group per DICOM series UID)."""
    if h.kind == "dicom" and h.study_uid and h.series_uid:
        return f"d|{h.study_uid}|{h.series_uid}"
    return f"o|{h.path}"


def _in_family(uid: str, roots: tuple[str, ...]) -> bool:
    """Whether ``uid`` is one of ``roots`` or below one of them (whole UID components only)."""
    return any(uid == r or uid.startswith(r + ".") for r in roots)


def skip_reason(h: Header) -> Reason | None:
    """Why a readable DICOM object is not a cross-sectional CT/MR image, or None if it is one."""
    sop = h.sop_class or ""
    if _in_family(sop, (SECONDARY_CAPTURE_PREFIX,)):
        return Reason.SECONDARY_CAPTURE
    if sop and sop not in IMAGE_SOP_CLASSES:
        if _in_family(sop, OTHER_IMAGE_PREFIXES):
            return Reason.UNSUPPORTED_MODALITY
        return Reason.NOT_IMAGE
    if not sop and not h.rows:
        return Reason.NOT_IMAGE
    if (h.modality or "").upper() not in VOLUME_MODALITIES:
        return Reason.UNSUPPORTED_MODALITY
    if LOCALIZER_TYPES.intersection(h.image_type):
        return Reason.LOCALIZER
    return None


def _orientation_label(iop: list[float] | None) -> str:
    if not iop:
        return "none"
    return ",".join(f"{round(v, _IOP_DECIMALS) + 0.0:.{_IOP_DECIMALS}f}" for v in iop)


def _sub_series(headers: list[Header]) -> dict[str, list[Header]]:
    """Split one series UID into volumes: by skip reason, orientation, size, echo and temporal position."""
    groups: dict[str, list[Header]] = defaultdict(list)
    for h in headers:
        reason = skip_reason(h)
        disc = "|".join(
            [
                reason.value if reason else "img",
                _orientation_label(h.iop),
                f"{h.rows}x{h.cols}",
                f"e{h.echo or ''}",
                f"t{h.temporal or ''}",
            ]
        )
        groups[disc].append(h)
    # Several acquisitions that revisit the same positions are separate volumes.
    out: dict[str, list[Header]] = {}
    for disc, members in groups.items():
        positions = [tuple(round(v, 2) for v in h.ipp) for h in members if h.ipp]
        acquisitions = {h.acquisition for h in members}
        if len(positions) != len(set(positions)) and len(acquisitions) > 1:
            by_acq: dict[str, list[Header]] = defaultdict(list)
            for h in members:
                by_acq[f"{disc}|a{h.acquisition or ''}"].append(h)
            out.update(by_acq)
        else:
            out[disc] = members
    return out


def _dedupe(headers: Iterable[Header]) -> list[Header]:
    """Drop copies of the same SOP instance (first path in sorted order wins)."""
    seen: set[str] = set()
    kept = []
    for h in sorted(headers, key=lambda h: h.path):
        if h.sop_instance and h.sop_instance in seen:
            continue
        if h.sop_instance:
            seen.add(h.sop_instance)
        kept.append(h)
    return kept


def plan_group(headers: list[Header], *, salt: bytes, already_ingested: frozenset[str]) -> list[SeriesPlan]:
    """Turn one group of objects (see :func:`group_key`) into series plans, pure and deterministic."""
    first = headers[0]
    if first.kind == "unreadable":
        return [
            SeriesPlan(
                series_key=salted_key(salt, "object", first.path),
                study_key=None,
                kind="object",
                status=Status.QUARANTINED.value,
                reason=first.reason or Reason.UNREADABLE.value,
                detail=first.detail,
                n_objects=1,
            )
        ]
    if first.kind == "nifti":
        plan = SeriesPlan(
            series_key=salted_key(salt, "nifti", first.path),
            study_key=None,
            kind="nifti",
            status="pending",
            n_objects=1,
            instances=[Instance(path=first.path, ipp=None, iop=None, frames=1)],
        )
        if plan.series_key in already_ingested:
            plan.stop(Reason.ALREADY_INGESTED, "series key already in the dataset")
        return [plan]
    if not (first.study_uid and first.series_uid):
        plan = SeriesPlan(
            series_key=salted_key(salt, "object", first.path),
            study_key=None,
            kind="object",
            status="pending",
            n_objects=1,
        )
        return [plan.stop(Reason.INCONSISTENT_GEOMETRY, "no StudyInstanceUID/SeriesInstanceUID")]

    unique = _dedupe(headers)
    plans = []
    study_key = salted_key(salt, "study", first.study_uid)
    for disc, members in sorted(_sub_series(unique).items()):
        members.sort(key=lambda h: h.path)
        head = members[0]
        member_sops = {m.sop_instance for m in members if m.sop_instance}
        copies = sum(1 for h in headers if h.sop_instance in member_sops)
        n_objects = copies + sum(1 for m in members if not m.sop_instance)
        plan = SeriesPlan(
            series_key=salted_key(salt, "series", first.study_uid, first.series_uid, disc),
            study_key=study_key,
            kind="dicom",
            status="pending",
            modality=(head.modality or "").upper() or None,
            n_objects=n_objects,
            instances=[Instance(path=h.path, ipp=h.ipp, iop=h.iop, frames=h.frames) for h in members],
            rows=head.rows,
            cols=head.cols,
            pixel_spacing=head.pixel_spacing,
            slice_thickness=head.slice_thickness,
            transfer_syntax=head.transfer_syntax,
            attrs={
                "body_part": head.body_part,
                "manufacturer": head.manufacturer,
                "kvp": head.kvp,
                "contrast": head.contrast,
                "sex": head.sex,
                "age_bucket": head.age_bucket,
            },
        )
        reason = skip_reason(head)
        if reason is not None:
            plan.stop(reason, _skip_detail(reason, head))
        elif any(h.burned_in for h in members):
            plan.stop(Reason.BURNED_IN_ANNOTATION, "BurnedInAnnotation is YES")
        elif plan.series_key in already_ingested:
            plan.stop(Reason.ALREADY_INGESTED, "series key already in the dataset")
        plans.append(plan)
    return plans


def _skip_detail(reason: Reason, h: Header) -> str:
    if reason is Reason.UNSUPPORTED_MODALITY:
        return f"modality {h.modality or 'missing'} is not CT or MR"
    if reason is Reason.NOT_IMAGE:
        return f"SOP class {h.sop_class or 'missing'} holds no cross-sectional image"
    if reason is Reason.LOCALIZER:
        return "ImageType marks a localizer/scout"
    return "SOP class is Secondary Capture"
