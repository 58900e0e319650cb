"""Pixel decoding of one DICOM instance into float32 frames in modality units (HU for CT).

Decoding runs once per slice of every series, so it is built for speed:

* the tag walker (:mod:`.tags`) walks the top-level data set of the bytes (standard file format: preamble
  and ``DICM``), reads only the tags that decoding needs and finds the Pixel Data value without
  building a pydicom ``Dataset``; uncompressed pixels then become an array with ``np.frombuffer``
  (3-5x the slices/s of ``dcmread`` + ``pixel_array`` + rescale on 512x512 CT: bench/decode.py);
* compressed pixel data goes straight to the fastest installed decoder, chosen explicitly per
  transfer syntax (``pixels.PLUGIN_PREFERENCE``) instead of pydicom's try-everything order;
* anything the scanner does not handle (no file meta, enhanced multi-frame functional groups, a
  Modality LUT, an unusual encoding) goes through pydicom's parser, and the decoding after it is the
  same code.

Output convention: ``Frames.pixels`` is ``(n_frames, rows, cols)`` float32 in modality units
(Rescale Slope/Intercept applied, per frame for enhanced multi-frame; a Modality LUT applied where
one replaces the rescale). MONOCHROME1 is turned into MONOCHROME2 by mirroring within the range
the modality transform can produce (``x -> lo + hi - x``), so higher is brighter and the values
stay in the same range. Colour images (RGB/YBR/palette, SamplesPerPixel > 1) and 1-bit masks are not
CT/MR slices: ``IngestError(UNSUPPORTED_MODALITY)``.

Every failure is an ``IngestError`` with a stable reason; details name tags, sizes, transfer
syntaxes and exception types, never header values.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from radforge.ingest.deid import silence_identifying_library_logs
from radforge.ingest.dicom.header import (
    PixelHeader,
    pixel_header_from_dataset,
    read_dataset,
    scan_pixel_header,
    top_level_geometry,
)
from radforge.ingest.dicom.pixels import NATIVE, NATIVE_DECODER, encapsulated_values, native_values
from radforge.ingest.dicom.rescale import modality_units
from radforge.ingest.dicom.tags import EXPLICIT_VR_BE, GeneralPath
from radforge.ingest.dicom.values import to_float, to_int
from radforge.ingest.errors import IngestError, Reason

silence_identifying_library_logs()

logger = logging.getLogger(__name__)

MAX_PIXELS_PER_FRAME: int = 8192 * 8192  # a large CR/DX plate is ~4k x 4k; CT/MR slices are <= 1024^2
MAX_FRAMES: int = 10_000  # an enhanced CT of a long scan holds a few thousand frames
MAX_TOTAL_PIXELS: int = 1 << 30  # whole instance: 4 GiB as float32, refused before allocating
_COLOUR = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR", "HSV", "ARGB"})

@dataclass(frozen=True)
class Frames:
    """Decoded frames of one instance, ready to be treated as slices.

    ``pixels`` is ``(n_frames, rows, cols)`` float32 in modality units (see the module docstring).
    Geometry is what the instance states, per frame where it can: ``positions`` ``(n_frames, 3)``
    (ImagePositionPatient; per frame from the functional groups of an enhanced multi-frame image;
    None when some frame has none, e.g. a classic multi-frame image), ``orientation`` the six
    direction cosines, ``pixel_spacing`` (row spacing, column spacing) in mm, ``slice_thickness`` in
    mm. ``decoder`` names the library that produced the pixels (as ``supported_transfer_syntaxes``).
    """

    pixels: np.ndarray
    positions: np.ndarray | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    slice_thickness: float | None
    decoder: str


def decode_instance(
    source: bytes | bytearray | memoryview | BinaryIO,
    *,
    max_pixels: int = MAX_PIXELS_PER_FRAME,
    max_frames: int = MAX_FRAMES,
    integer_ok: bool = False,
    int16_range: tuple[int, int] | None = None,
) -> Frames:
    """Decode every frame of one DICOM instance into float32 modality units, with its geometry.

    With ``integer_ok``, integer stored values under an integral rescale (slope and intercept whole
    numbers, no Modality LUT; the usual CT case) come back as exact integer modality units instead
    (int16 when the stored range maps inside it, else int32), which saves float conversions.
    ``int16_range=(lo, hi)`` (inside int16) says the caller clips to that range anyway: an int16
    result then lies inside it (a unit slope computes it in 16-bit arithmetic, no int32 detour), so
    the caller only clips int32 results.

    ``source`` is the whole object (bytes or a binary file-like read to its end). Sizes are checked
    against ``max_pixels`` per frame, ``max_frames`` and ``MAX_TOTAL_PIXELS`` before any pixel
    buffer is allocated. Raises ``IngestError`` only: UNREADABLE (empty, not DICOM, header cut
    short), NO_PIXEL_DATA, UNSUPPORTED_MODALITY (colour, 1-bit), UNSUPPORTED_TRANSFER_SYNTAX,
    ABSURD_DIMENSIONS, INCONSISTENT_GEOMETRY (frames of one enhanced image disagree on orientation
    or spacing) and DECODE_FAILED (truncated or corrupt pixel data, invalid pixel module values).
    """
    data = _read_all(source)
    try:
        try:
            header = scan_pixel_header(data)
        except GeneralPath as why:
            logger.debug("general decode path: %s", why.detail)
            header = pixel_header_from_dataset(read_dataset(data, header_truncated=why.truncated))
        return _decode(
            header,
            max_pixels=max_pixels,
            max_frames=max_frames,
            integer_ok=integer_ok,
            int16_range=int16_range,
        )
    except (IngestError, MemoryError):
        raise
    except Exception as exc:  # pydicom meeting malformed nested values: still one reason, no values
        logger.warning("unexpected %s while decoding an instance", type(exc).__name__)
        raise IngestError(Reason.DECODE_FAILED, f"unexpected {type(exc).__name__} while decoding") from None


def decode_file_fast(data: bytes) -> np.ndarray | None:
    """Run the fast path alone: pixels ``(n_frames, rows, cols)`` float32 via the header scanner, or None.

    None means the file needs the general (pydicom-parsed) path that ``decode_instance`` falls back
    to: no file meta, enhanced multi-frame functional groups, a Modality LUT, an encoding the
    scanner does not walk. Errors the scanner is sure of (truncated pixel data, colour, ...) raise
    ``IngestError`` as ``decode_instance`` does. Exposed so tests and benchmarks can check that
    ordinary files really take the fast path.
    """
    try:
        header = scan_pixel_header(_read_all(data))
    except GeneralPath:
        return None
    return _decode(header, max_pixels=MAX_PIXELS_PER_FRAME, max_frames=MAX_FRAMES).pixels


def _read_all(source: bytes | bytearray | memoryview | BinaryIO) -> bytes:
    if isinstance(source, bytes):
        data = source
    elif isinstance(source, bytearray | memoryview):
        data = bytes(source)
    else:
        try:
            data = source.read()
        except OSError as exc:
            raise IngestError(
                Reason.UNREADABLE, f"reading the object failed ({type(exc).__name__})"
            ) from None
        if not isinstance(data, bytes):
            raise IngestError(Reason.UNREADABLE, "the object was not opened in binary mode")
    if not data:
        raise IngestError(Reason.UNREADABLE, "empty object (0 bytes)")
    return data


def _decode(
    h: PixelHeader,
    *,
    max_pixels: int,
    max_frames: int,
    integer_ok: bool = False,
    int16_range: tuple[int, int] | None = None,
) -> Frames:
    """Check the header, then decode: the same steps whichever parser produced the header."""
    v = h.values
    if h.pixel_data is None:
        if h.float_pixel_data:
            raise IngestError(Reason.DECODE_FAILED, "Float/Double Float Pixel Data is not supported")
        raise IngestError(Reason.NO_PIXEL_DATA, "no Pixel Data (7FE0,0010)")
    for keyword in ("Rows", "Columns", "BitsAllocated"):
        if keyword not in v:
            raise IngestError(Reason.DECODE_FAILED, f"missing {keyword} for the Pixel Data")
    rows, cols = to_int(v["Rows"], "Rows"), to_int(v["Columns"], "Columns")
    frames = to_int(v.get("NumberOfFrames", 1), "NumberOfFrames")
    samples = to_int(v.get("SamplesPerPixel", 1), "SamplesPerPixel")
    bits_allocated = to_int(v["BitsAllocated"], "BitsAllocated")
    bits_stored = to_int(v.get("BitsStored", bits_allocated), "BitsStored")
    signed = to_int(v.get("PixelRepresentation", 0), "PixelRepresentation") == 1
    photometric = str(v.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()

    if samples != 1 or photometric in _COLOUR:
        shown = photometric if photometric in _COLOUR | {"MONOCHROME1", "MONOCHROME2"} else "unrecognised"
        raise IngestError(
            Reason.UNSUPPORTED_MODALITY,
            f"colour image (PhotometricInterpretation {shown}, SamplesPerPixel {samples}): not a CT/MR slice",
        )
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise IngestError(Reason.DECODE_FAILED, "unrecognised PhotometricInterpretation (0028,0004)")
    if bits_allocated == 1:
        raise IngestError(
            Reason.UNSUPPORTED_MODALITY, "1-bit pixel data (a binary mask) is not a CT/MR slice"
        )
    if rows < 1 or cols < 1 or frames < 1:
        raise IngestError(Reason.ABSURD_DIMENSIONS, f"{rows}x{cols} pixels, {frames} frames")
    if rows * cols > max_pixels or frames > max_frames or rows * cols * frames > MAX_TOTAL_PIXELS:
        raise IngestError(
            Reason.ABSURD_DIMENSIONS,
            f"{rows}x{cols} pixels x {frames} frames exceeds the limits "
            f"({max_pixels} pixels per frame, {max_frames} frames, {MAX_TOTAL_PIXELS} pixels)",
        )
    if bits_allocated not in (8, 16, 32) or not 1 <= bits_stored <= bits_allocated:
        raise IngestError(
            Reason.DECODE_FAILED, f"BitsAllocated {bits_allocated} / BitsStored {bits_stored} not supported"
        )

    groups = h.frame_groups(frames) if h.frame_groups is not None else None
    if groups is not None:
        slope: np.ndarray | float = groups.slopes.reshape(-1, 1, 1)
        intercept: np.ndarray | float = groups.intercepts.reshape(-1, 1, 1)
    else:
        slope = to_float(v.get("RescaleSlope", 1.0), "RescaleSlope")
        intercept = to_float(v.get("RescaleIntercept", 0.0), "RescaleIntercept")

    shape = (frames, rows, cols)
    if h.transfer_syntax in NATIVE:
        stored = native_values(
            h.pixel_data,
            shape=shape,
            bits_allocated=bits_allocated,
            bits_stored=bits_stored,
            signed=signed,
            big_endian=h.transfer_syntax == EXPLICIT_VR_BE,
            swap_ow_bytes=h.transfer_syntax == EXPLICIT_VR_BE and bits_allocated == 8 and h.pixel_vr == "OW",
        )
        decoder = NATIVE_DECODER
    else:
        stored, decoder = encapsulated_values(
            h.pixel_data,
            transfer_syntax=h.transfer_syntax,
            shape=shape,
            bits_allocated=bits_allocated,
            bits_stored=bits_stored,
            signed=signed,
            photometric=photometric,
        )

    pixels = modality_units(
        stored,
        slope=slope,
        intercept=intercept,
        lut=h.modality_lut,
        bits_stored=bits_stored,
        signed=signed,
        invert=photometric == "MONOCHROME1",
        integer_ok=integer_ok,
        int16_range=int16_range,
    )
    geometry = groups.geometry if groups is not None else top_level_geometry(v, frames)
    spacing = geometry.pixel_spacing
    return Frames(
        pixels=pixels,
        positions=geometry.positions,
        orientation=geometry.orientation,
        pixel_spacing=(spacing[0], spacing[1]) if spacing else None,
        slice_thickness=geometry.slice_thickness,
        decoder=decoder,
    )

