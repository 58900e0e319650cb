"""Modality maths: stored pixel values -> modality units (HU for CT), as pure functions.

PS3.3 C.11.1: ``modality = slope * stored + intercept`` (Rescale Slope/Intercept, per frame for
enhanced multi-frame), or a Modality LUT that replaces them. MONOCHROME1 is mirrored within the
range the transform can produce so higher is always brighter. Tested against pydicom's
``apply_rescale``/``apply_modality_lut`` (tests/ingest/dicom/test_rescale.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def stored_range(bits_stored: int, *, signed: bool) -> tuple[int, int]:
    """Smallest and largest value ``bits_stored`` bits hold (two's complement when signed)."""
    return (
        (-(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1) if signed else (0, (1 << bits_stored) - 1)
    )


def _wrap16(value: int) -> np.int16:
    """``value`` modulo 2**16 as a two's complement int16."""
    return np.int16(((value + 32768) % 65536) - 32768)


def rescale_unit_slope_int16(stored: np.ndarray, *, intercept: int, lo: int, hi: int) -> np.ndarray:
    """``clip(stored + intercept, lo, hi)`` as int16, for integer ``stored`` of 8 or 16 bits.

    The clip runs first, in the stored dtype (one same-type pass; with a unit slope the stored
    bounds ``lo - intercept`` and ``hi - intercept`` are exact), and the shift then runs in int16
    with wrap-around: every true result lies in ``[lo, hi]``, inside int16, and two's complement
    arithmetic is exact modulo 2**16, so the wrapped result is the true one. A 16-bit unsigned CT
    slice with intercept -1024 thus never goes through int32 (4x the memory traffic).
    """
    if not (-32768 <= lo <= hi <= 32767):
        raise ValueError(f"int16_range ({lo}, {hi}) must lie inside int16")
    info = np.iinfo(stored.dtype)
    if lo - intercept > info.max or hi - intercept < info.min:  # every value lands outside, one side
        return np.full(stored.shape, lo if lo - intercept > info.max else hi, dtype=np.int16)
    bound = stored.dtype.type  # typed bounds: numpy's fast clip loop (Python ints take a ~8x slower path)
    clipped = np.clip(stored, bound(max(info.min, lo - intercept)), bound(min(info.max, hi - intercept)))
    if clipped.dtype.itemsize == 2:
        values = clipped.view(np.int16)  # uint16 above 32767 wraps; the shift below unwraps it
    else:
        values = clipped.astype(np.int16)
    if intercept:
        np.add(values, _wrap16(intercept), out=values)
    return values


def modality_units(
    stored: np.ndarray,
    *,
    slope: np.ndarray | float,
    intercept: np.ndarray | float,
    lut: Callable[[np.ndarray], np.ndarray] | None,
    bits_stored: int,
    signed: bool,
    invert: bool,
    integer_ok: bool = False,
    int16_range: tuple[int, int] | None = None,
) -> np.ndarray:
    """Map stored values to float32 modality units; mirror MONOCHROME1 within the output range.

    ``slope``/``intercept`` are scalars or ``(n_frames, 1, 1)`` arrays; a Modality LUT replaces them.
    With ``integer_ok`` and an integral rescale of integer data, the result is exact integers instead
    (int16 when the stored range maps inside it, else int32); ``int16_range`` clips int16 results.
    """
    if lut is not None:
        mapped = lut(stored)
        pixels = mapped.astype(np.float32)
        if invert:  # a Modality LUT's output range is its unsigned nominal depth
            top = np.iinfo(mapped.dtype).max if mapped.dtype.kind in "ui" else float(mapped.max())
            np.subtract(np.float32(top), pixels, out=pixels)
        return pixels
    if invert:  # slope * (lo + hi - x) + intercept
        lo, hi = stored_range(bits_stored, signed=signed)
        intercept = slope * (lo + hi) + intercept
        slope = -slope
    if integer_ok and stored.dtype.kind in "iu" and stored.itemsize <= 2:
        exact = _integer_units(
            stored,
            slope=slope,
            intercept=intercept,
            bits_stored=bits_stored,
            signed=signed,
            int16_range=int16_range,
        )
        if exact is not None:
            return exact
    slope32 = np.asarray(slope, dtype=np.float32)
    intercept32 = np.asarray(intercept, dtype=np.float32)
    pixels = stored.astype(np.float32)
    if np.any(slope32 != 1):
        pixels *= slope32
    if np.any(intercept32 != 0):
        pixels += intercept32
    return pixels


def _integer_units(
    stored: np.ndarray,
    *,
    slope: np.ndarray | float,
    intercept: np.ndarray | float,
    bits_stored: int,
    signed: bool,
    int16_range: tuple[int, int] | None,
) -> np.ndarray | None:
    """Exact integer modality units under a whole-number rescale; None when the rescale is fractional."""
    slope_arr, intercept_arr = np.asarray(slope, dtype=np.float64), np.asarray(intercept, dtype=np.float64)
    if not (np.all(slope_arr == np.rint(slope_arr)) and np.all(intercept_arr == np.rint(intercept_arr))):
        return None
    if int16_range is not None and slope_arr.size == 1 and intercept_arr.size == 1 and slope_arr == 1:
        return rescale_unit_slope_int16(
            stored, intercept=int(intercept_arr.item()), lo=int16_range[0], hi=int16_range[1]
        )
    # |stored| < 2**16 and whole-number rescale: int32 holds the exact result, and int16 does
    # when the stored range maps inside it (12-bit CT with intercept -1024, the common case).
    lo, hi = stored_range(bits_stored, signed=signed)
    ends = np.concatenate(
        [(slope_arr * lo + intercept_arr).ravel(), (slope_arr * hi + intercept_arr).ravel()]
    )
    fits16 = -32768 <= ends.min() and ends.max() <= 32767 and max(abs(lo), abs(hi)) <= 32767
    values: np.ndarray[Any, Any] = stored.astype(np.int16 if fits16 else np.int32)
    if np.any(slope_arr != 1):
        values *= slope_arr.astype(values.dtype)
    if np.any(intercept_arr != 0):
        values += intercept_arr.astype(values.dtype)
    if fits16 and int16_range is not None:  # the promise: int16 results lie inside int16_range
        np.clip(values, np.int16(int16_range[0]), np.int16(int16_range[1]), out=values)
    return values
