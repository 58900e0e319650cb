"""The one set of DICOM value converters: raw walker bytes and pydicom values alike.

Header discovery and pixel decoding read the same attributes from two sources (the tag walker's
raw bytes on the fast path, a pydicom ``Dataset`` on the general path); converting both with
these functions keeps the two paths giving the same answer. Errors name the attribute, never its
value (header values may identify a patient).
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from radforge.ingest.dicom.tags import STRUCTS, GeneralPath
from radforge.ingest.errors import IngestError, Reason


def text(raw: bytes) -> str:
    """A raw text value (any string VR) without its padding; multi-values keep their backslashes."""
    return raw.decode("latin-1").strip(" \x00")


def unsigned_short(raw: bytes, *, little: bool) -> int:
    """A raw US value; a length other than 2 is irregular (pydicom's parser decides)."""
    if len(raw) != 2:
        raise GeneralPath("US element whose length is not 2")
    return int(STRUCTS[little][1].unpack(raw)[0])


def binary_numbers(raw: bytes, code: str, *, little: bool) -> list[Any]:
    """A raw binary value (``code`` a struct code: "H" for US, "d" for FD) as its list of numbers."""
    size = struct.calcsize(code)
    if not raw or len(raw) % size:
        raise GeneralPath(f"binary element of {len(raw)} bytes is not a whole number of values")
    return list(struct.unpack(f"{'<' if little else '>'}{len(raw) // size}{code}", raw))


def raw_value(raw: bytes, vr: str, *, little: bool) -> int | str:
    """Raw walker bytes -> the value pydicom would give (US as int, text stripped)."""
    return unsigned_short(raw, little=little) if vr == "US" else text(raw)


def split_multi(value: str) -> str | list[str]:
    """Split a backslash-separated text value into its parts (a single value stays a string)."""
    parts = [p.strip(" \x00") for p in value.split("\\")]
    return parts if len(parts) > 1 else parts[0]


def is_multi(value: Any) -> bool:
    """Whether ``value`` is a multi-valued attribute (a list, tuple or pydicom MultiValue)."""
    return isinstance(value, list | tuple) or type(value).__name__ == "MultiValue"


def to_int(value: Any, keyword: str) -> int:
    """An IS/US value as an int; ``IngestError(DECODE_FAILED)`` naming ``keyword`` otherwise."""
    try:
        return int(str(value).strip()) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        raise IngestError(Reason.DECODE_FAILED, f"{keyword} is not an integer") from None


def to_float(value: Any, keyword: str) -> float:
    """A DS value as a finite float; ``IngestError(DECODE_FAILED)`` naming ``keyword`` otherwise."""
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise IngestError(Reason.DECODE_FAILED, f"{keyword} is not a number") from None
    if not np.isfinite(result):
        raise IngestError(Reason.DECODE_FAILED, f"{keyword} is not finite")
    return result


def to_floats(value: Any, count: int) -> tuple[float, ...] | None:
    """Parse a DS value of ``count`` finite numbers (text with backslashes or a sequence), else None."""
    if value is None:
        return None
    items = value.split("\\") if isinstance(value, str) else (list(value) if is_multi(value) else [value])
    try:
        result = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        return None
    return result if len(result) == count and all(np.isfinite(result)) else None


def optional_text(value: Any) -> str | None:
    """A value as text, None when absent or empty."""
    if value is None or value == "":
        return None
    return str(value)


def optional_int(value: Any) -> int | None:
    """A value as an int, None when absent (a malformed one raises ValueError/TypeError)."""
    return None if value is None else int(value)
