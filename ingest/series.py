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
from radforge.ingest.errors import IngestError, Reason, Status, status_for
from radforge.ingest.mosaic import is_mosaic, mosaic_layout
from radforge.ingest.split import MAGNITUDE, image_kind, keep_evenly, split_volumes, volume_order

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


@dataclass(frozen=True)
class PlanRules:
    """Planning rules from the config (``volumes.max_per_series``, ``image_types.skip``)."""

    max_volumes: int = 4
    skip_kinds: frozenset[str] = frozenset({"phase", "real", "imaginary"})


@dataclass
class Instance:
    """One source object of a series, with what ordering needs."""

    path: str
    ipp: list[float] | None
    iop: list[float] | None
    frames: int
    frame_indices: list[int] | None = None  # the frames of this volume (enhanced multi-frame 4D)


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
    mosaic: dict[str, Any] | None = None  # MosaicLayout.to_dict() of a Siemens MOSAIC series
    volumes_found: int = 1  # volumes the series' UID holds (4D: time points, directions, echoes, ...)
    volumes_kept: int = 1  # of which ingested (volumes.max_per_series, chosen evenly)

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


def _sub_series(headers: list[Header]) -> dict[str, tuple[str, list[Header], list[int] | None]]:
    """Split one series UID into volumes: disc -> (family, members, frames of an enhanced 4D image).

    Split by skip reason, orientation, size, image kind, echo and temporal position, then by
    :func:`~radforge.ingest.split.split_volumes`. A family (skip reason, orientation, size, image
    kind) holds the volumes of one acquisition: the volume cap counts within it.
    """
    groups: dict[str, list[Header]] = defaultdict(list)
    family_of: dict[str, str] = {}
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
        kind = image_kind(h.image_type)
        if kind != MAGNITUDE:  # magnitude keeps the keys it had before image kinds were told apart
            disc += f"|k{kind}"
        groups[disc].append(h)
        family_of[disc] = "|".join(disc.split("|")[:3] + [kind])
    out: dict[str, tuple[str, list[Header], list[int] | None]] = {}
    for disc, members in groups.items():
        if len(members) == 1 and members[0].frame_volumes and len(set(members[0].frame_volumes)) > 1:
            # one enhanced multi-frame image holding several volumes: each its own frames
            labels = members[0].frame_volumes
            for k in sorted(set(labels)):
                frames = [i for i, label in enumerate(labels) if label == k]
                out[f"{disc}|f{k:05d}"] = (family_of[disc], members, frames)
            continue
        for volume, volume_members in split_volumes(disc, members).items():
            out[volume] = (family_of[disc], volume_members, None)
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


def plan_group(
    headers: list[Header],
    *,
    salt: bytes,
    already_ingested: frozenset[str],
    rules: PlanRules = PlanRules(),
) -> list[SeriesPlan]:
    """Turn one group of objects (see :func:`group_key`) into series plans, pure and deterministic.

    A series UID whose images form several 3D volumes (4D: time points, diffusion directions,
    echoes, ...; see :mod:`radforge.ingest.split`) gives one plan per volume, at most
    ``rules.max_volumes`` of them chosen evenly (always the first); the rest are recorded together
    as ``volume_not_kept``. Images of a kind in ``rules.skip_kinds`` (see
    :func:`~radforge.ingest.split.image_kind`) are skipped as ``non_magnitude_image``.
    """
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
                instances=[Instance(path=first.path, ipp=None, iop=None, frames=1)],  # operator report
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
            instances=[Instance(path=first.path, ipp=None, iop=None, frames=1)],  # operator report
        )
        return [plan.stop(Reason.INCONSISTENT_GEOMETRY, "no StudyInstanceUID/SeriesInstanceUID")]

    unique = _dedupe(headers)
    families: dict[str, list[tuple[str, list[Header], list[int] | None]]] = defaultdict(list)
    for disc, (family, members, frames) in _sub_series(unique).items():
        members.sort(key=lambda h: h.path)
        families[family].append((disc, members, frames))
    plans = []
    for family, volumes in sorted(families.items()):
        volumes.sort(key=lambda v: (volume_order(v[1]), v[0]))
        keep = keep_evenly(len(volumes), rules.max_volumes)
        counted: set[str] = set()  # an enhanced 4D image's object counts once, with its first volume
        for disc, members, frames in sorted((volumes[i] for i in keep), key=lambda v: v[0]):
            plan = _dicom_plan(headers, disc, members, salt=salt, frames=frames)
            if frames is not None:
                plan.n_objects = 0 if members[0].path in counted else plan.n_objects
                counted.add(members[0].path)
            plan.volumes_found, plan.volumes_kept = len(volumes), len(keep)
            _check(plan, members, skip_kinds=rules.skip_kinds, already_ingested=already_ingested)
            plans.append(plan)
        # frames not kept of an enhanced 4D image belong to an object that is ingested
        dropped = [v for i, v in enumerate(volumes) if i not in keep and v[2] is None]
        left = [h for _, members, _ in dropped for h in members]
        if left:
            plan = _dicom_plan(headers, f"{family}|not-kept", sorted(left, key=lambda h: h.path), salt=salt)
            plan.volumes_found, plan.volumes_kept = len(volumes), 0
            n_left = len(volumes) - len(keep)
            plans.append(
                plan.stop(
                    Reason.VOLUME_NOT_KEPT,
                    f"{n_left} of {len(volumes)} volumes beyond volumes.max_per_series ({rules.max_volumes})",
                )
            )
    return plans


def _dicom_plan(
    headers: list[Header], disc: str, members: list[Header], *, salt: bytes, frames: list[int] | None = None
) -> SeriesPlan:
    """A pending plan for the ``members`` of one volume (``headers``: the whole group, copies included).

    ``frames`` picks the frames of a volume of an enhanced multi-frame 4D image.
    """
    head, first = members[0], headers[0]
    member_sops = {m.sop_instance for m in members if m.sop_instance}
    copies = sum(1 for h in headers if h.sop_instance in member_sops)
    return SeriesPlan(
        series_key=salted_key(salt, "series", first.study_uid or "", first.series_uid or "", disc),
        study_key=salted_key(salt, "study", first.study_uid or ""),
        kind="dicom",
        status="pending",
        modality=(head.modality or "").upper() or None,
        n_objects=copies + sum(1 for m in members if not m.sop_instance),
        instances=[Instance(h.path, h.ipp, h.iop, h.frames, frame_indices=frames) for h in members],
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


def _check(
    plan: SeriesPlan, members: list[Header], *, skip_kinds: frozenset[str], already_ingested: frozenset[str]
) -> None:
    """Stop ``plan`` by rule when its images are not to be ingested; lay out a mosaic otherwise."""
    head = members[0]
    reason = skip_reason(head)
    kind = image_kind(head.image_type)
    if reason is not None:
        plan.stop(reason, _skip_detail(reason, head))
    elif any(h.burned_in for h in members):
        plan.stop(Reason.BURNED_IN_ANNOTATION, "BurnedInAnnotation is YES")
    elif kind in skip_kinds:
        plan.stop(Reason.NON_MAGNITUDE, f"ImageType marks {kind} images (image_types.skip)")
    elif plan.series_key in already_ingested:
        plan.stop(Reason.ALREADY_INGESTED, "series key already in the dataset")
    elif is_mosaic(head.image_type):
        try:
            plan.mosaic = mosaic_layout(
                rows=head.rows,
                cols=head.cols,
                csa_count=head.mosaic_count,
                acquisition_matrix=head.acquisition_matrix,
                spacing=head.spacing_between or head.slice_thickness,
                normal=head.csa_normal,
            ).to_dict()
        except IngestError as e:
            plan.stop(e.reason, e.detail)


def _skip_detail(reason: Reason, h: Header) -> str:
    if reason is Reason.UNSUPPORTED_MODALITY:
        return f"modality {h.modality or 'missing'} is not CT or MR"
    if reason is Reason.NOT_IMAGE:
        return f"SOP class {h.sop_class or 'missing'} holds no cross-sectional image"
    if reason is Reason.LOCALIZER:
        return "ImageType marks a localizer/scout"
    return "SOP class is Secondary Capture"
