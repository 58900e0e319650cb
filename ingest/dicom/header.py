"""What pixel decoding needs from a header, read by the tag walker or, on the general path, by pydicom.

The fast path (:func:`scan_pixel_header`) reads the pixel module, rescale and geometry from the
walker's raw bytes; anything it does not handle (no file meta, enhanced multi-frame functional
groups, a Modality LUT, an irregular encoding) raises :class:`~radforge.ingest.dicom.tags.GeneralPath`
and :func:`pixel_header_from_dataset` reads the same values from pydicom's Dataset. Both give a
:class:`PixelHeader`, and the decoding after it is the same code.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from radforge.ingest.dicom.tags import (
    DEFLATED_EXPLICIT_VR_LE,
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    MAX_INFLATED_BYTES,
    UNDEFINED,
    GeneralPath,
    encapsulated_end,
    walk_top_level,
)
from radforge.ingest.dicom.values import raw_value, to_float, to_floats
from radforge.ingest.errors import IngestError, Reason


@dataclass(frozen=True)
class Geometry:
    """Geometry an instance states: per frame positions, one orientation, spacing and thickness."""

    positions: np.ndarray | None  # (n_frames, 3), None unless every frame states one
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, ...] | None
    slice_thickness: float | None


@dataclass(frozen=True)
class FrameGroups:
    """Per-frame rescale and geometry of an enhanced multi-frame image (its functional groups)."""

    slopes: np.ndarray  # (n_frames,)
    intercepts: np.ndarray
    geometry: Geometry


@dataclass(frozen=True)
class PixelHeader:
    """What decoding needs, whichever parser read it."""

    transfer_syntax: str
    values: Mapping[str, Any]  # keyword -> int | str | sequence, for the tags in PIXEL_TAGS
    pixel_data: bytes | memoryview | None  # the Pixel Data value (encapsulated items included)
    pixel_vr: str
    # general path only; called after the size checks, so a crafted frame count costs nothing
    frame_groups: Callable[[int], FrameGroups] | None = None
    modality_lut: Callable[[np.ndarray], np.ndarray] | None = None
    float_pixel_data: bool = False


# tag -> (keyword, value type) for everything the decoding reads at the top level
PIXEL_TAGS: dict[int, tuple[str, str]] = {
    0x00180050: ("SliceThickness", "DS"),
    0x00200032: ("ImagePositionPatient", "DS"),
    0x00200037: ("ImageOrientationPatient", "DS"),
    0x00280002: ("SamplesPerPixel", "US"),
    0x00280004: ("PhotometricInterpretation", "CS"),
    0x00280008: ("NumberOfFrames", "IS"),
    0x00280010: ("Rows", "US"),
    0x00280011: ("Columns", "US"),
    0x00280030: ("PixelSpacing", "DS"),
    0x00280100: ("BitsAllocated", "US"),
    0x00280101: ("BitsStored", "US"),
    0x00280103: ("PixelRepresentation", "US"),
    0x00281052: ("RescaleIntercept", "DS"),
    0x00281053: ("RescaleSlope", "DS"),
}
# top-level tags whose presence sends the file down the general path
_GENERAL_PATH_TAGS: dict[int, str] = {
    0x00283000: "Modality LUT Sequence (0028,3000)",
    0x52009229: "Shared Functional Groups Sequence (5200,9229)",
    0x52009230: "Per-Frame Functional Groups Sequence (5200,9230)",
    0x7FE00008: "Float Pixel Data (7FE0,0008)",
    0x7FE00009: "Double Float Pixel Data (7FE0,0009)",
}
_WANTED = frozenset(PIXEL_TAGS) | frozenset(_GENERAL_PATH_TAGS)


def scan_pixel_header(data: bytes) -> PixelHeader:
    """Walk the top-level data set of a standard DICOM file and return what decoding needs."""
    top = walk_top_level(data, _WANTED, inflate_limit=MAX_INFLATED_BYTES)
    body, found = top.body, top.found
    pixel_data: bytes | memoryview | None = None
    vr = ""
    if top.pixel is not None:  # a truncated Pixel Data value is certain here, whatever else the file holds
        start, length, vr = top.pixel
        if length == UNDEFINED:
            pixel_data = body[start : encapsulated_end(body, start)]
        elif start + length > len(body):
            raise IngestError(
                Reason.DECODE_FAILED,
                f"Pixel Data (7FE0,0010) truncated: {len(body) - start} of {length} bytes present",
            )
        else:
            pixel_data = memoryview(body)[start : start + length]
    for tag, what in _GENERAL_PATH_TAGS.items():
        if tag in found:
            raise GeneralPath(what)
    values: dict[str, int | str] = {}
    for tag, (keyword, kind) in PIXEL_TAGS.items():
        if tag in found and (value := raw_value(found[tag], kind, little=top.little)) != "":
            values[keyword] = value  # an empty value counts as absent, as on the general path
    return PixelHeader(top.transfer_syntax, values, pixel_data if len(pixel_data or b"") else None, vr)


def read_dataset(data: bytes, *, header_truncated: bool) -> Any:
    """Parse with pydicom (the general path); a file without meta only if it starts like a data set."""
    import pydicom

    has_prefix = len(data) >= 132 and data[128:132] == b"DICM"
    if not has_prefix and not _starts_like_dataset(data):
        raise IngestError(Reason.UNREADABLE, "not DICOM: no DICM prefix and no data set at the start")
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=not has_prefix)
    except Exception as exc:  # a parser meeting garbage raises anything; all of it means unreadable
        raise IngestError(Reason.UNREADABLE, f"DICOM header does not parse ({type(exc).__name__})") from None
    if header_truncated and "PixelData" not in ds:
        raise IngestError(Reason.UNREADABLE, "object truncated inside the DICOM header")
    return ds


def _starts_like_dataset(data: bytes) -> bool:
    """Accept a file without preamble only when its first tag is in group 0002 or 0008."""
    if len(data) < 8:
        return False
    return any(struct.unpack_from(e + "H", data)[0] in (0x0002, 0x0008) for e in "<>")


def pixel_header_from_dataset(ds: Any) -> PixelHeader:
    """Build the general path's header: top-level values plus enhanced multi-frame functional groups."""
    from pydicom.pixels import apply_modality_lut

    meta = getattr(ds, "file_meta", None)
    uid = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if not uid:  # no meta or no syntax in it: the encoding pydicom detected tells
        implicit, little = ds.original_encoding
        uid = IMPLICIT_VR_LE if implicit else (EXPLICIT_VR_LE if little else EXPLICIT_VR_BE)
    if uid == DEFLATED_EXPLICIT_VR_LE:
        uid = EXPLICIT_VR_LE  # pydicom inflated it
    values: dict[str, Any] = {}
    for keyword, _ in PIXEL_TAGS.values():
        try:
            value = ds.get(keyword)
        except Exception as exc:  # pydicom's value conversion raises many types on malformed values
            raise IngestError(
                Reason.DECODE_FAILED, f"{keyword} does not parse ({type(exc).__name__})"
            ) from None
        if value is not None and value != "":
            values[keyword] = value
    has_pixels = "PixelData" in ds
    header = PixelHeader(
        uid,
        values,
        ds.PixelData if has_pixels and ds.PixelData else None,
        str(ds["PixelData"].VR) if has_pixels else "",
        float_pixel_data="FloatPixelData" in ds or "DoubleFloatPixelData" in ds,
    )
    if ds.get("ModalityLUTSequence"):
        header = replace(header, modality_lut=lambda arr: apply_modality_lut(arr, ds))
    if "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds:
        header = replace(header, frame_groups=lambda n: _frame_groups(ds, n, values))
    return header


def top_level_geometry(values: Mapping[str, Any], frames: int) -> Geometry:
    """Read the geometry of an image without functional groups (one position: single frame only)."""
    position = to_floats(values.get("ImagePositionPatient"), 3)
    thickness = to_floats(values.get("SliceThickness"), 1)
    return Geometry(
        positions=np.asarray([position], dtype=np.float64) if position is not None and frames == 1 else None,
        orientation=to_floats(values.get("ImageOrientationPatient"), 6),
        pixel_spacing=to_floats(values.get("PixelSpacing"), 2),
        slice_thickness=thickness[0] if thickness else None,
    )


def _frame_groups(ds: Any, n: int, top_level: Mapping[str, Any]) -> FrameGroups:
    """Read rescale and geometry for each of ``n`` frames; a per-frame item overrides the shared one."""
    shared_seq = ds.get("SharedFunctionalGroupsSequence") or []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    if per_frame and len(per_frame) != n:
        raise IngestError(
            Reason.INCONSISTENT_GEOMETRY,
            f"Per-Frame Functional Groups Sequence has {len(per_frame)} items for {n} frames",
        )
    shared = shared_seq[0] if shared_seq else None

    def lookup(i: int, macro: str, keyword: str) -> Any:
        for item in (per_frame[i] if per_frame else None, shared):
            seq = item.get(macro) if item is not None else None
            if seq and keyword in seq[0] and seq[0].get(keyword) not in (None, ""):
                return seq[0].get(keyword)
        return None

    slopes, intercepts, positions, orientations, spacings, thicknesses = [], [], [], [], [], []
    for i in range(n):
        slope = lookup(i, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = lookup(i, "PixelValueTransformationSequence", "RescaleIntercept")
        slopes.append(
            to_float(top_level.get("RescaleSlope", 1.0) if slope is None else slope, "RescaleSlope")
        )
        intercepts.append(
            to_float(
                top_level.get("RescaleIntercept", 0.0) if intercept is None else intercept,
                "RescaleIntercept",
            )
        )
        positions.append(to_floats(lookup(i, "PlanePositionSequence", "ImagePositionPatient"), 3))
        orientations.append(to_floats(lookup(i, "PlaneOrientationSequence", "ImageOrientationPatient"), 6))
        spacings.append(to_floats(lookup(i, "PixelMeasuresSequence", "PixelSpacing"), 2))
        thicknesses.append(to_floats(lookup(i, "PixelMeasuresSequence", "SliceThickness"), 1))
    thickness = _common(thicknesses, "slice thickness")
    geometry = Geometry(
        positions=None if any(p is None for p in positions) else np.asarray(positions, dtype=np.float64),
        orientation=_common(orientations, "orientation"),
        pixel_spacing=_common(spacings, "pixel spacing"),
        slice_thickness=thickness[0] if thickness else None,
    )
    return FrameGroups(slopes=np.asarray(slopes), intercepts=np.asarray(intercepts), geometry=geometry)


def _common(per_frame: list[tuple[float, ...] | None], what: str) -> tuple[float, ...] | None:
    """Return the one value all frames share (within 1e-4: formatting noise); None if none states it.

    ``Frames`` carries one orientation and spacing per instance, so frames that disagree (or only
    some of which state it) make the image inconsistent.
    """
    stated = [v for v in per_frame if v is not None]
    if not stated:
        return None
    arr = np.asarray(stated, dtype=np.float64)
    if len(stated) != len(per_frame) or not np.all(np.abs(arr - arr[0]) <= 1e-4):
        raise IngestError(Reason.INCONSISTENT_GEOMETRY, f"frames of one image differ in {what}")
    return stated[0]
