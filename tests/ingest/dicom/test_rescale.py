"""radforge.ingest.dicom.rescale: stored values -> modality units, against pydicom's own rescale and LUT."""

from __future__ import annotations

from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_rescale

from radforge.ingest.dicom.rescale import modality_units, stored_range


def _rescale_dataset(slope: float, intercept: float) -> Dataset:
    ds = Dataset()
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "HU"
    return ds


@pytest.mark.parametrize(
    ("bits", "signed", "slope", "intercept"),
    [
        (12, False, 1.0, -1024.0),  # the usual CT
        (16, True, 1.0, 0.0),
        (16, False, 2.0, -3000.0),
        (12, False, 0.5, -1024.5),  # fractional: the float path
        (16, True, 0.001, 10.0),  # MR parametric maps store scaled values
        (8, False, 3.0, 7.0),
    ],
)
@pytest.mark.parametrize("integer_ok", [False, True])
def test_rescale_equals_pydicom(
    bits: int, signed: bool, slope: float, intercept: float, integer_ok: bool
) -> None:
    lo, hi = stored_range(bits, signed=signed)
    dtype = np.dtype(f"{'i' if signed else 'u'}{2 if bits > 8 else 1}")
    stored = np.random.default_rng(bits).integers(lo, hi + 1, size=(2, 16, 16)).astype(dtype)
    stored.flat[:2] = (lo, hi)
    want = apply_rescale(stored, _rescale_dataset(slope, intercept))
    got = modality_units(
        stored,
        slope=slope,
        intercept=intercept,
        lut=None,
        bits_stored=bits,
        signed=signed,
        invert=False,
        integer_ok=integer_ok,
    )
    if integer_ok and slope == int(slope) and intercept == int(intercept):
        assert got.dtype.kind == "i"  # the exact integer path
        np.testing.assert_array_equal(got, want)
    else:
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-3)


def test_per_frame_rescale_equals_pydicom_frame_by_frame() -> None:
    stored = np.random.default_rng(1).integers(0, 4096, size=(3, 8, 8)).astype(np.uint16)
    slopes, intercepts = np.array([1.0, 2.0, 0.5]), np.array([-1024.0, 0.0, 3.0])
    got = modality_units(
        stored,
        slope=slopes.reshape(-1, 1, 1),
        intercept=intercepts.reshape(-1, 1, 1),
        lut=None,
        bits_stored=12,
        signed=False,
        invert=False,
    )
    for k in range(3):
        want = apply_rescale(stored[k], _rescale_dataset(slopes[k], intercepts[k]))
        np.testing.assert_allclose(got[k], want)


def test_monochrome1_mirrors_within_the_stored_range_before_rescale() -> None:
    stored = np.arange(0, 4096, 16, dtype=np.uint16).reshape(16, 16)
    got = modality_units(
        stored, slope=2.0, intercept=-10.0, lut=None, bits_stored=12, signed=False, invert=True
    )
    mirrored = (4095 - stored.astype(np.int64)).astype(np.uint16)
    np.testing.assert_allclose(got, apply_rescale(mirrored, _rescale_dataset(2.0, -10.0)))


def test_modality_lut_equals_pydicom() -> None:
    ds = pydicom.dcmread(str(get_testdata_file("mlut_18.dcm")))
    stored = ds.pixel_array
    got = modality_units(
        stored,
        slope=1.0,
        intercept=0.0,
        lut=lambda arr: apply_modality_lut(arr, ds),
        bits_stored=int(ds.BitsStored),
        signed=bool(ds.PixelRepresentation),
        invert=False,
    )
    np.testing.assert_array_equal(got, apply_modality_lut(stored, ds).astype(np.float32))


@pytest.mark.parametrize(
    ("dtype", "intercept", "lo", "hi"),
    [
        (np.uint16, -1024, -1024, 32767),  # 16-bit unsigned CT: stored above 33791 clips to 32767
        (np.uint16, 0, -1024, 32767),
        (np.int16, 0, -1024, 32767),  # signed CT with padding -2000 / -3024
        (np.int16, -1024, -1024, 3071),
        (np.int16, 1000, -1024, 32767),  # results above int16 clip at the top
        (np.uint8, -1024, -1024, 32767),
        (np.int8, 50, -10, 20),
        (np.uint8, 40000, -1024, 32767),  # every value above hi
        (np.uint16, -40000, -1024, 32767),  # intercept outside int16; part of the range below lo
    ],
)
def test_unit_slope_int16_rescale_equals_wide_arithmetic(
    dtype: Any, intercept: int, lo: int, hi: int
) -> None:
    from radforge.ingest.dicom import rescale_unit_slope_int16

    info = np.iinfo(dtype)
    stored = np.random.default_rng(0).integers(info.min, int(info.max) + 1, size=(64, 64)).astype(dtype)
    stored.flat[:2] = (info.min, info.max)  # both ends of the stored range
    before = stored.copy()
    got = rescale_unit_slope_int16(stored, intercept=intercept, lo=lo, hi=hi)
    want = np.clip(stored.astype(np.int64) + intercept, lo, hi)
    assert got.dtype == np.int16
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(stored, before)  # the stored buffer (often read-only) is not touched
