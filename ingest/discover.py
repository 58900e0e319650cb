"""Discovery: list an archive and read each object's header (no pixel data).

:func:`list_objects` runs on the driver; :func:`read_header` runs in Ray tasks, once per object,
and turns the object into a :class:`Header`: the handful of attributes grouping, ordering and
de-identification need. UIDs are kept in memory only to group and to salt; they never leave the job.
"""

from __future__ import annotations

import functools
import io
import logging
from dataclasses import dataclass, field, fields
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from radforge.ingest import deid
from radforge.ingest.deid import silence_identifying_library_logs
from radforge.ingest.dicom.csa import CSA_CREATOR, CSAFormatError, mosaic_count, parse_csa2, slice_normal
from radforge.ingest.dicom.tags import GeneralPath, scan_top_level
from radforge.ingest.dicom.values import (
    binary_numbers,
    is_multi,
    optional_int,
    optional_text,
    split_multi,
    text,
    to_floats,
)
from radforge.ingest.errors import IngestError, Reason, SourceError
from radforge.ingest.split import frame_volumes
from radforge.storage import Location

silence_identifying_library_logs()

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
# First read of an object: enough for nearly every DICOM header; longer headers are read whole.
HEADER_CHUNK = 64 * 1024
# The detail of a header that could not be read at all (storage error): worth another try later.
IO_FAILURE = "object cannot be read"


@dataclass
class Header:
    """What discovery knows about one object. ``kind`` is 'dicom', 'nifti' or 'unreadable'."""

    path: str  # relative to the archive root (kept in memory only; never written out)
    size: int
    kind: str
    reason: str | None = None  # for kind == 'unreadable'
    detail: str | None = None
    sop_class: str | None = None
    sop_instance: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    modality: str | None = None
    image_type: list[str] = field(default_factory=list)
    rows: int | None = None
    cols: int | None = None
    frames: int = 1
    iop: list[float] | None = None
    ipp: list[float] | None = None
    pixel_spacing: list[float] | None = None
    slice_thickness: float | None = None
    echo: str | None = None
    temporal: str | None = None
    acquisition: str | None = None
    trigger: str | None = None  # TriggerTime (cardiac phases)
    b_value: str | None = None  # DiffusionBValue
    gradient: str | None = None  # DiffusionGradientOrientation, 3 numbers joined by ","
    mosaic_count: int | None = None  # Siemens CSA NumberOfImagesInMosaic
    csa_normal: list[float] | None = None  # Siemens CSA SliceNormalVector
    acquisition_matrix: list[int] | None = None
    spacing_between: float | None = None  # SpacingBetweenSlices
    frame_volumes: list[int] | None = None  # enhanced multi-frame 4D: volume index of each frame
    transfer_syntax: str | None = None
    burned_in: bool = False
    body_part: str | None = None
    manufacturer: str | None = None
    kvp: float | None = None
    contrast: bool | None = None
    sex: str | None = None
    age_bucket: str | None = None

    def to_row(self) -> dict[str, Any]:
        # Flat fields (scalars and lists of scalars): a shallow copy of the lists is enough, and
        # ~10x cheaper per file than dataclasses.asdict's recursive deep copy.
        return {k: list(v) if isinstance(v, list) else v for k, v in self.__dict__.items()}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Header:
        data = {k: row[k] for k in _header_fields() if k in row}
        for k in _LIST_FIELDS:
            v = data.get(k)
            if v is not None and not isinstance(v, list):
                data[k] = list(v)
        if data.get("image_type") is None:
            data["image_type"] = []
        return cls(**data)


_LIST_FIELDS = (
    "image_type", "iop", "ipp", "pixel_spacing", "csa_normal", "acquisition_matrix", "frame_volumes"
)  # fmt: skip


@functools.cache
def _header_fields() -> frozenset[str]:
    return frozenset(f.name for f in fields(Header))


def is_nifti(path: str) -> bool:
    return path.lower().endswith(NIFTI_SUFFIXES)


def list_objects(root: Location) -> list[tuple[str, int]]:
    """Every object below ``root`` as (relative path, size), sorted; SourceError if none or missing."""
    return [(path, size) for path, size, _ in list_entries(root)]


def list_entries(root: Location) -> list[tuple[str, int, str | None]]:
    """Every object below ``root`` as (relative path, size, version), sorted; see :func:`object_version`."""
    fs = root.fs
    fs.invalidate_cache(root.path)  # object stores: a re-scan must see the objects as they are now
    if not fs.exists(root.path):
        raise SourceError(f"source {root.uri} does not exist")
    if fs.isfile(root.path):
        raise SourceError(f"source {root.uri} is a single object; give the archive folder or prefix")
    found = fs.find(root.path, detail=True)
    objects = []
    for path, info in found.items():
        if info.get("type", "file") != "file":
            continue
        objects.append((root.relative(path), int(info.get("size") or 0), object_version(info)))
    if not objects:
        raise SourceError(f"source {root.uri} holds no objects")
    objects.sort()
    return objects


def object_version(info: dict[str, Any]) -> str | None:
    """What changes when an object's bytes change, from its listing: the ETag, else the mtime.

    None when the filesystem gives neither (such objects are always read again).
    """
    for key in ("ETag", "etag", "mtime", "LastModified", "last_modified", "updated"):
        value = info.get(key)
        if value is not None and value != "":
            return f"{key}={value}"
    return None


def _floats(value: Any, n: int) -> list[float] | None:
    parsed = to_floats(value, n)
    return list(parsed) if parsed is not None else None


def _first_frame_geometry(ds: Any) -> tuple[Any, Any, Any]:
    """IOP, IPP and PixelSpacing of an (enhanced) multi-frame instance's first frame, if any."""
    iop = ipp = spacing = None
    for seq_name in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        seq = ds.get(seq_name)
        if not seq:
            continue
        item = seq[0]
        if iop is None and "PlaneOrientationSequence" in item:
            iop = item.PlaneOrientationSequence[0].get("ImageOrientationPatient")
        if ipp is None and "PlanePositionSequence" in item:
            ipp = item.PlanePositionSequence[0].get("ImagePositionPatient")
        if spacing is None and "PixelMeasuresSequence" in item:
            spacing = item.PixelMeasuresSequence[0].get("PixelSpacing")
    return iop, ipp, spacing


def _number_label(value: Any, count: int) -> str | None:
    """``count`` numbers as one stable text label (grouping key), None when absent or malformed."""
    numbers = to_floats(value, count)
    return ",".join(f"{v:.4g}" for v in numbers) if numbers is not None else None


def _siemens_csa(ds: pydicom.Dataset | _RawValues) -> tuple[int | None, tuple[float, float, float] | None]:
    """NumberOfImagesInMosaic and SliceNormalVector from a Siemens CSA Image Header, if there is one."""
    for block in range(0x10, 0x14):  # the private creator may reserve any block; Siemens uses the first
        creator = _private_value(ds, 0x00290000 | block)
        if creator is None:
            continue
        if isinstance(creator, bytes):
            creator = text(creator)
        if str(creator).strip() != CSA_CREATOR:
            continue
        raw = _private_value(ds, 0x00290010 | (block << 8))
        if not isinstance(raw, bytes):
            return None, None
        try:
            tags = parse_csa2(raw)
        except CSAFormatError:
            return None, None
        return mosaic_count(tags), slice_normal(tags)
    return None, None


def _private_value(ds: pydicom.Dataset | _RawValues, tag: int) -> Any:
    if isinstance(ds, _RawValues):
        return ds.private.get(tag)
    element = ds.get(tag)
    return None if element is None else element.value


def header_from_dataset(ds: pydicom.Dataset | _RawValues, *, path: str, size: int) -> Header:
    """Build a :class:`Header` from a parsed dataset, keeping only allow-listed, sanitised values."""
    iop = ds.get("ImageOrientationPatient")
    ipp = ds.get("ImagePositionPatient")
    spacing = ds.get("PixelSpacing")
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1 or iop is None:
        f_iop, f_ipp, f_spacing = _first_frame_geometry(ds)
        iop = iop if iop is not None else f_iop
        ipp = ipp if ipp is not None else f_ipp
        spacing = spacing if spacing is not None else f_spacing
    meta = getattr(ds, "file_meta", None)
    tsyntax = meta.get("TransferSyntaxUID") if meta is not None else None
    contrast = None
    if "ContrastBolusAgent" in ds or "ContrastBolusAgentSequence" in ds:
        contrast = bool(ds.get("ContrastBolusAgent") or ds.get("ContrastBolusAgentSequence"))
    image_type = ds.get("ImageType")
    mosaic_count, csa_normal = _siemens_csa(ds)
    raw_matrix = ds.get("AcquisitionMatrix")
    matrix = None
    if raw_matrix is not None and is_multi(raw_matrix) and len(raw_matrix) == 4:
        matrix = [int(v) for v in raw_matrix]
    return Header(
        path=path,
        size=size,
        kind="dicom",
        sop_class=optional_text(ds.get("SOPClassUID")),
        sop_instance=optional_text(ds.get("SOPInstanceUID")),
        study_uid=optional_text(ds.get("StudyInstanceUID")),
        series_uid=optional_text(ds.get("SeriesInstanceUID")),
        modality=optional_text(ds.get("Modality")),
        image_type=[str(v).strip().upper() for v in image_type] if image_type else [],
        rows=optional_int(ds.get("Rows")),
        cols=optional_int(ds.get("Columns")),
        frames=max(frames, 1),
        iop=_floats(iop, 6) if iop is not None else None,
        ipp=_floats(ipp, 3) if ipp is not None else None,
        pixel_spacing=_floats(spacing, 2) if spacing is not None else None,
        slice_thickness=deid.positive_float(ds.get("SliceThickness")),
        echo=optional_text(ds.get("EchoNumbers")),
        temporal=optional_text(ds.get("TemporalPositionIdentifier")),
        acquisition=optional_text(ds.get("AcquisitionNumber")),
        trigger=optional_text(ds.get("TriggerTime")),
        b_value=_number_label(ds.get("DiffusionBValue"), 1),
        gradient=_number_label(ds.get("DiffusionGradientOrientation"), 3),
        mosaic_count=mosaic_count,
        csa_normal=list(csa_normal) if csa_normal else None,
        acquisition_matrix=matrix,
        spacing_between=deid.positive_float(ds.get("SpacingBetweenSlices")),
        frame_volumes=frame_volumes(ds, frames) if frames > 1 else None,
        transfer_syntax=optional_text(tsyntax),
        burned_in=str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES",
        body_part=deid.body_part(ds.get("BodyPartExamined")),
        manufacturer=deid.manufacturer(ds.get("Manufacturer")),
        kvp=deid.positive_float(ds.get("KVP")),
        contrast=contrast,
        sex=deid.sex(ds.get("PatientSex")),
        age_bucket=deid.age_bucket(ds.get("PatientAge")),
    )


# Top-level tags discovery reads (keyword -> tag). Geometry of enhanced multi-frame images lives in
# functional group sequences: their presence sends the object to pydicom's parser.
_HEADER_TAGS: dict[str, int] = {
    "SOPClassUID": 0x00080016,
    "SOPInstanceUID": 0x00080018,
    "StudyInstanceUID": 0x0020000D,
    "SeriesInstanceUID": 0x0020000E,
    "Modality": 0x00080060,
    "ImageType": 0x00080008,
    "Rows": 0x00280010,
    "Columns": 0x00280011,
    "NumberOfFrames": 0x00280008,
    "ImageOrientationPatient": 0x00200037,
    "ImagePositionPatient": 0x00200032,
    "PixelSpacing": 0x00280030,
    "SliceThickness": 0x00180050,
    "EchoNumbers": 0x00180086,
    "TemporalPositionIdentifier": 0x00200100,
    "AcquisitionNumber": 0x00200012,
    "BurnedInAnnotation": 0x00280301,
    "BodyPartExamined": 0x00180015,
    "Manufacturer": 0x00080070,
    "KVP": 0x00180060,
    "ContrastBolusAgent": 0x00180010,
    "ContrastBolusAgentSequence": 0x00180012,
    "PatientSex": 0x00100040,
    "PatientAge": 0x00101010,
    "SharedFunctionalGroupsSequence": 0x52009229,
    "PerFrameFunctionalGroupsSequence": 0x52009230,
    "SpecificCharacterSet": 0x00080005,
    "TriggerTime": 0x00181060,
    "DiffusionBValue": 0x00189087,
    "DiffusionGradientOrientation": 0x00189089,
    "AcquisitionMatrix": 0x00181310,
    "SpacingBetweenSlices": 0x00180088,
}
# Siemens CSA: private creators (0029,0010-0013) and the Image Header Info of each block (0029,xx10)
_PRIVATE_TAGS = frozenset(
    {0x00290000 | b for b in range(0x10, 0x14)} | {0x00290010 | (b << 8) for b in range(0x10, 0x14)}
)
_HEADER_WANTED = frozenset(_HEADER_TAGS.values()) | _PRIVATE_TAGS
_US_KEYWORDS = frozenset({"Rows", "Columns", "AcquisitionMatrix"})
_FD_KEYWORDS = frozenset({"DiffusionBValue", "DiffusionGradientOrientation"})
# Sequences whose content matters: their presence sends the object to pydicom's parser.
_SLOW_PATH_KEYWORDS = (
    "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence",
    "ContrastBolusAgentSequence",
)


class _RawValues(dict[str, Any]):
    """Raw scanned values with ``Dataset.get`` semantics, for :func:`header_from_dataset`."""

    file_meta: dict[str, Any]
    private: dict[int, bytes]  # raw private values (the Siemens CSA header)


def _fast_values(data: bytes) -> _RawValues | None:
    """Header values from the fast top-level scanner, or None when pydicom must parse the object."""
    top = scan_top_level(data, _HEADER_WANTED)
    if top is None:
        return None
    values = _RawValues()
    values.file_meta = {"TransferSyntaxUID": top.transfer_syntax}
    values.private = {tag: raw for tag, raw in top.found.items() if tag in _PRIVATE_TAGS}
    for keyword, tag in _HEADER_TAGS.items():
        raw = top.found.get(tag)
        if raw is None:
            continue
        if keyword in _SLOW_PATH_KEYWORDS:
            return None
        if keyword == "SpecificCharacterSet":
            charset = text(raw)
            if charset and charset.upper() not in ("ISO_IR 100", "ISO_IR 6", "ISO 2022 IR 6", "ISO_IR 192"):
                return None  # other character sets: let pydicom decode text values
            continue
        if keyword in _US_KEYWORDS or keyword in _FD_KEYWORDS:
            try:
                numbers = binary_numbers(raw, "H" if keyword in _US_KEYWORDS else "d", little=top.little)
            except GeneralPath:
                return None
            values[keyword] = numbers[0] if len(numbers) == 1 else numbers
        else:
            values[keyword] = split_multi(text(raw))
    return values


def parse_header(data: bytes, *, path: str, size: int) -> Header:
    """Parse a DICOM header from the first bytes of an object; raises IngestError(UNREADABLE).

    Standard files go through a top-level tag scanner (no pydicom objects, ~10x faster); anything
    irregular, deflated, enhanced multi-frame or in another character set goes through pydicom.
    """
    if size == 0 or not data:
        raise IngestError(Reason.UNREADABLE, "zero-byte object")
    fast = _fast_values(data)
    if fast is not None:
        try:
            return header_from_dataset(fast, path=path, size=size)
        except (TypeError, ValueError):
            pass  # a malformed value: pydicom's parser decides
    forced = False
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except InvalidDicomError:
        forced = True
    except Exception as e:
        raise IngestError(Reason.UNREADABLE, f"DICOM header cannot be parsed ({type(e).__name__})") from None
    if forced:
        # Files without the 128-byte preamble and meta header are still common in archives.
        try:
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
        except Exception as e:
            raise IngestError(Reason.UNREADABLE, f"not a DICOM object ({type(e).__name__})") from None
        if not ds.get("SOPClassUID") and not ds.get("Modality"):
            raise IngestError(Reason.UNREADABLE, "not a DICOM object (no DICOM preamble or attributes)")
    try:
        return header_from_dataset(ds, path=path, size=size)
    except Exception as e:
        raise IngestError(
            Reason.UNREADABLE, f"DICOM header has invalid values ({type(e).__name__})"
        ) from None


def read_header(root: Location, path: str, size: int) -> Header:
    """Read and parse one object's header; never raises: failures become ``kind='unreadable'``."""
    if is_nifti(path):
        return Header(path=path, size=size, kind="nifti")
    fs = root.fs
    full = root.join(path).path
    try:
        if size <= HEADER_CHUNK:
            data = fs.cat_file(full)
        else:
            data = fs.cat_file(full, start=0, end=HEADER_CHUNK)
        try:
            header = parse_header(data, path=path, size=size)
            if size <= HEADER_CHUNK or (header.series_uid and header.rows):
                return header
        except IngestError:
            if size <= HEADER_CHUNK:
                raise
        # Header longer than the first chunk (big private blocks): read the object whole.
        return parse_header(fs.cat_file(full), path=path, size=size)
    except IngestError as e:
        return Header(path=path, size=size, kind="unreadable", reason=e.reason.value, detail=e.detail)
    except OSError as e:
        return Header(
            path=path,
            size=size,
            kind="unreadable",
            reason=Reason.UNREADABLE.value,
            detail=f"{IO_FAILURE} ({type(e).__name__})",
        )
