"""CT windows (DICOM linear VOI LUT), raw storage conversions and MR percentile scaling."""

from __future__ import annotations

import numpy as np
import pytest

from radforge.config import ConfigError
from radforge.windowing import (
    CT_PRESETS,
    Window,
    hu_to_int16,
    mr_to_uint16,
    percentile_to_uint8,
    resolve_window,
    window_to_uint8,
)


def dicom_linear_reference(x: float, c: float, w: float) -> int:
    """PS3.3 C.11.2.1.2.1 written out literally (float64, piecewise), rounded half up."""
    if x <= c - 0.5 - (w - 1) / 2:
        y = 0.0
    elif x > c - 0.5 + (w - 1) / 2:
        y = 255.0
    else:
        y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255.0
    return int(np.floor(y + 0.5))


@pytest.mark.parametrize("name", sorted(CT_PRESETS))
def test_every_preset_hits_the_standard_edges_and_centre(name: str) -> None:
    win = CT_PRESETS[name]
    c, w = win.level, win.width
    hu = np.array([c - w / 2 - 100, c - w / 2, c, c + w / 2, c + w / 2 + 100], dtype=np.float32)
    out = window_to_uint8(hu, win)
    assert out.dtype == np.uint8
    assert out.tolist() == [0, 0, round(127.5 + 127.5 / (w - 1) + 1e-9), 255, 255]
    assert out.tolist() == [dicom_linear_reference(float(v), c, w) for v in hu]


@pytest.mark.parametrize("name", sorted(CT_PRESETS))
def test_window_matches_the_piecewise_standard_on_every_integer_hu(name: str) -> None:
    win = CT_PRESETS[name]
    hu = np.arange(-1100, 3200, dtype=np.int16)
    out = window_to_uint8(hu, win)
    ref = np.array([dicom_linear_reference(float(v), win.level, win.width) for v in hu])
    # float32 arithmetic may differ from the float64 reference only where y sits exactly on a .5
    assert np.abs(out.astype(int) - ref).max() <= 1
    assert np.mean(out == ref) > 0.999
    assert np.all(np.diff(out.astype(int)) >= 0)  # monotonic


def test_known_values_soft_tissue() -> None:
    win = resolve_window("soft_tissue")
    hu = np.array([[-160, -159.5, 40, 238, 239]], dtype=np.float64)
    # c - 0.5 -/+ (w-1)/2 = -160 / 239 are the ends; y(-159.5) = 0.5/399*255 = 0.32; y(238) = 254.36
    assert window_to_uint8(hu, win).tolist() == [[0, 0, 128, 254, 255]]


def test_window_keeps_shape_and_accepts_int16() -> None:
    hu = np.random.default_rng(0).integers(-1024, 3000, size=(64, 48)).astype(np.int16)
    out = window_to_uint8(hu, Window(40, 400))
    assert out.shape == hu.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, window_to_uint8(hu.astype(np.float32), Window(40, 400)))


def test_width_one_is_a_step() -> None:
    out = window_to_uint8(np.array([39.0, 39.5, 39.6, 41.0]), Window(40, 1))
    assert out.tolist() == [0, 0, 255, 255]


@pytest.mark.parametrize("bad", [(40, 0.5), (40, -10), (float("nan"), 400), (40, float("inf"))])
def test_invalid_window_is_a_config_error(bad: tuple[float, float]) -> None:
    with pytest.raises(ConfigError, match="width"):
        Window(*bad)


def test_resolve_window_is_lenient_about_spelling() -> None:
    assert resolve_window("Soft-Tissue") == Window(40, 400)
    assert resolve_window(" lung ") == Window(-600, 1500)


def test_unknown_preset_names_it_and_lists_valid_ones() -> None:
    with pytest.raises(ConfigError) as err:
        resolve_window("spleen")
    message = str(err.value)
    assert "'spleen'" in message
    for name in CT_PRESETS:
        assert name in message


def test_presets_are_frozen() -> None:
    with pytest.raises(TypeError):
        CT_PRESETS["new"] = Window(0, 100)  # type: ignore[index]


def test_hu_to_int16_rounds_and_clips() -> None:
    hu = np.array([-3024.0, -1024.4, -0.5, 0.5, 1.5, 40.6, 40000.0])
    out = hu_to_int16(hu)
    assert out.dtype == np.int16
    assert out.tolist() == [-1024, -1024, 0, 0, 2, 41, 32767]  # np.rint: halves to even
    raw = np.array([-2000, -1000, 3000], dtype=np.int16)
    assert hu_to_int16(raw, clip_min=-1000.0, clip_max=2000.0).tolist() == [-1000, -1000, 2000]
    assert hu_to_int16(np.array([-5000, 70000], dtype=np.int32)).tolist() == [-1024, 32767]
    with pytest.raises(ConfigError):
        hu_to_int16(hu, clip_min=-40000.0)


def test_mr_to_uint16_clips_to_range() -> None:
    assert mr_to_uint16(np.array([-5.0, 0.4, 1.6, 70000.0])).tolist() == [0, 0, 2, 65535]
    assert mr_to_uint16(np.array([-5, 7], dtype=np.int16)).tolist() == [0, 7]
    assert mr_to_uint16(np.array([-5, 100000], dtype=np.int32)).tolist() == [0, 65535]
    raw = np.array([1, 65535], dtype=np.uint16)
    assert mr_to_uint16(raw).dtype == np.uint16 and mr_to_uint16(raw).tolist() == [1, 65535]


def test_percentile_normalisation_on_a_ramp() -> None:
    img = np.arange(1000, dtype=np.float64).reshape(10, 100)
    out = percentile_to_uint8(img, low=10.0, high=90.0)
    assert out.dtype == np.uint8 and out.shape == img.shape
    lo, hi = np.percentile(img, [10, 90])  # 99.9 and 899.1
    expected = np.floor(np.clip((img - lo) / (hi - lo) * 255.0, 0, 255) + 0.5)
    np.testing.assert_array_equal(out, expected.astype(np.uint8))
    assert out.min() == 0 and out.max() == 255
    # 100 values beyond each percentile, plus the two nearest it that round onto the end value
    assert np.count_nonzero(out == 0) == 102 and np.count_nonzero(out == 255) == 102


def test_percentile_uses_the_mask() -> None:
    img = np.zeros((20, 20), dtype=np.uint16)
    img[5:15, 5:15] = np.arange(100, dtype=np.uint16).reshape(10, 10) + 1000  # body 1000..1099
    mask = img > 0
    masked = percentile_to_uint8(img, low=0.0, high=100.0, mask=mask)
    assert masked[5, 5] == 0 and masked[14, 14] == 255  # range spans the body only
    assert masked[0, 0] == 0
    whole = percentile_to_uint8(img, low=0.0, high=100.0)
    assert whole[5, 5] == round(1000 / 1099 * 255)  # background 0 stretches the range
    np.testing.assert_array_equal(
        percentile_to_uint8(img, mask=np.zeros_like(mask)), percentile_to_uint8(img)
    )


def test_percentile_flat_image_and_bad_arguments() -> None:
    assert not percentile_to_uint8(np.full((4, 4), 7.0)).any()
    with pytest.raises(ConfigError):
        percentile_to_uint8(np.zeros((4, 4)), low=60.0, high=40.0)
    with pytest.raises(ConfigError):
        percentile_to_uint8(np.zeros((4, 4)), mask=np.ones((3, 3), dtype=bool))
