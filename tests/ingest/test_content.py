"""Body masks, per-patch foreground maps, body boxes and the one-call analysis, on known images."""

from __future__ import annotations

import numpy as np
import pytest

from radforge.config import ConfigError
from radforge.ingest.content import (
    Content,
    analyse,
    body_box,
    foreground_fraction,
    foreground_mask,
    otsu_threshold,
    patch_foreground,
)

AIR, FAT, SOFT, LUNG, BONE = -1000, -100, 40, -850, 700


def ellipse(shape: tuple[int, int], centre: tuple[float, float], radii: tuple[float, float]) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - centre[0]) / radii[0]) ** 2 + ((xx - centre[1]) / radii[1]) ** 2 < 1


def ct_body(shape: tuple[int, int] = (512, 512), *, lungs: bool = False, noise: int = 20) -> np.ndarray:
    img = np.full(shape, AIR, dtype=np.int16)
    body = ellipse(shape, (shape[0] * 0.5, shape[1] * 0.5), (shape[0] * 0.35, shape[1] * 0.4))
    img[body] = SOFT
    if lungs:
        for side in (-1, 1):
            img[
                ellipse(
                    shape,
                    (shape[0] * 0.45, shape[1] * (0.5 + side * 0.15)),
                    (shape[0] * 0.17, shape[1] * 0.1),
                )
            ] = LUNG
    rng = np.random.default_rng(0)
    return (img + rng.integers(-noise, noise + 1, size=shape)).astype(np.int16)


def test_body_ellipse_fraction_matches_its_area() -> None:
    img = ct_body()
    content = analyse(img, modality="CT")
    area_share = np.pi * (512 * 0.35) * (512 * 0.4) / 512**2
    assert content.fraction == pytest.approx(area_share, abs=0.01)
    assert content.fg.shape == (32, 32) and content.fg.dtype == np.uint8
    assert content.fg[16, 16] == 255 and content.fg[0, 0] == 0
    # box within one cell (8 px) of the ellipse's extent
    r0, c0, r1, c1 = content.box
    assert abs(r0 - 256 * 0.3) <= 8 and abs(r1 - 256 * 1.7) <= 8
    assert abs(c0 - 256 * 0.2) <= 8 and abs(c1 - 256 * 1.8) <= 8


def test_pure_air_has_no_foreground() -> None:
    img = np.full((512, 512), AIR, dtype=np.int16)
    img += np.random.default_rng(1).integers(-30, 30, size=img.shape, dtype=np.int16)
    content = analyse(img, modality="CT")
    assert content.fraction == 0.0 and content.box is None
    assert content.fg.shape == (32, 32) and not content.fg.any()
    assert not foreground_mask(img, modality="CT").any()


def test_table_and_specks_outside_the_body_are_removed() -> None:
    img = ct_body()
    img[470:486, 40:472] = 300  # patient table below the body: 16 px thick, separate component
    img[20:36, 20:36] = BONE  # a speck of metal in a corner
    mask = foreground_mask(img, modality="CT")
    assert not mask[470:486].any() and not mask[20:36, 20:36].any()
    np.testing.assert_array_equal(analyse(img, modality="CT").fg, analyse(ct_body(), modality="CT").fg)


def test_two_legs_of_equal_size_are_both_kept() -> None:
    img = np.full((512, 512), AIR, dtype=np.int16)
    img[ellipse(img.shape, (256, 140), (100, 90))] = SOFT
    img[ellipse(img.shape, (256, 372), (100, 90))] = SOFT
    img[16:40, 240:264] = BONE  # a thick but small blob: 3 x 3 cells, ~2% of a leg
    mask = foreground_mask(img, modality="CT")
    assert mask[256, 140] and mask[256, 372] and not mask[256, 256]
    assert not mask[16:40, 240:264].any()


def test_lungs_inside_the_body_count_as_foreground() -> None:
    with_lungs = ct_body(lungs=True)
    mask = foreground_mask(with_lungs, modality="CT")
    lung = ellipse((512, 512), (512 * 0.45, 512 * 0.35), (512 * 0.17, 512 * 0.1))
    assert mask[lung].all()
    plain = analyse(ct_body(), modality="CT")
    assert analyse(with_lungs, modality="CT").fraction == pytest.approx(plain.fraction, abs=0.005)


def test_mr_otsu_on_a_bimodal_image() -> None:
    rng = np.random.default_rng(2)
    img = rng.normal(30, 8, size=(256, 256))  # dark background noise
    head = ellipse(img.shape, (128, 128), (90, 75))
    img[head] = rng.normal(600, 60, size=int(head.sum()))
    img = np.clip(img, 0, None).astype(np.uint16)
    threshold = otsu_threshold(img)
    assert (img[~head] < threshold).mean() > 0.999 and (img[head] >= threshold).mean() > 0.999
    mask = foreground_mask(img, modality="MR")
    assert np.mean(mask == head) > 0.97
    assert analyse(img, modality="MR").fraction == pytest.approx(head.mean(), abs=0.02)


def test_otsu_threshold_splits_two_constant_classes() -> None:
    values = np.array([10.0] * 700 + [200.0] * 300)
    t = otsu_threshold(values)
    assert 10.0 < t <= 200.0
    assert otsu_threshold(np.full(10, 3.0)) is None


def test_otsu_matches_a_brute_force_search() -> None:
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.normal(60, 15, 3000), rng.normal(150, 30, 1500), [0, 255]])
    values = np.clip(np.rint(values), 0, 255)  # integers 0..255: one histogram bin per value
    best, best_k = -1.0, -1
    for k in range(255):  # classes v <= k and v > k; maximise w0 * w1 * (mu0 - mu1)^2
        low, high = values[values <= k], values[values > k]
        if low.size and high.size:
            between = low.size * high.size * (low.mean() - high.mean()) ** 2
            if between > best:
                best, best_k = between, k
    threshold = otsu_threshold(values)
    np.testing.assert_array_equal(values >= threshold, values > best_k)


def test_flat_mr_has_no_foreground() -> None:
    content = analyse(np.full((64, 64), 500, dtype=np.uint16), modality="MR")
    assert content.box is None and content.fraction == 0.0


def test_patch_map_exact_for_a_known_mask() -> None:
    mask = np.zeros((40, 40), dtype=bool)  # 3 x 3 patches of 16 px, the last row/col cut to 8 px
    mask[0:16, 0:8] = True  # half of patch (0, 0)
    mask[16:32, 16:32] = True  # all of patch (1, 1)
    mask[20, 20:25] = False  # minus 5 pixels
    mask[32:40, 32:40] = True  # the whole edge patch that exists: 64 of 256 pixels
    mask[0, 39] = True  # one pixel
    fg = patch_foreground(mask, patch=16)
    expected = np.zeros((3, 3), dtype=np.uint8)
    expected[0, 0] = 128  # round(255 * 128 / 256) = 127.5 -> half up
    expected[1, 1] = round(255 * 251 / 256)  # 250.02 -> 250
    expected[2, 2] = round(255 * 64 / 256)  # 63.75 -> 64
    expected[0, 2] = 1  # 0.996 -> 1
    np.testing.assert_array_equal(fg, expected)
    assert foreground_fraction(fg) == pytest.approx(expected.mean() / 255)


def test_body_box_exact_on_a_rectangle() -> None:
    mask = np.zeros((100, 80), dtype=bool)
    mask[13:57, 21:70] = True
    assert body_box(mask) == (13, 21, 57, 70)
    assert body_box(np.zeros((5, 5), dtype=bool)) is None


@pytest.mark.parametrize("shape", [(512, 512), (500, 388), (64, 64), (37, 91)])
@pytest.mark.parametrize("patch", [16, 14, 8])
def test_analyse_equals_the_pixel_mask_path(shape: tuple[int, int], patch: int) -> None:
    img = ct_body(shape, lungs=True)
    img[-4:, :] = 300  # something on the edge
    content = analyse(img, modality="CT", patch=patch)
    cell = max(c for c in range(1, 9) if patch % c == 0)
    mask = foreground_mask(img, modality="CT", cell=cell)
    assert mask.shape == shape
    np.testing.assert_array_equal(content.fg, patch_foreground(mask, patch=patch))
    assert content.box == body_box(mask)
    assert content.fraction == foreground_fraction(content.fg)
    assert isinstance(content, Content)


def test_float_hu_and_int16_give_the_same_content() -> None:
    img = ct_body(lungs=True)
    a = analyse(img, modality="CT")
    b = analyse(img.astype(np.float32), modality="CT")
    np.testing.assert_array_equal(a.fg, b.fg)
    assert a.box == b.box


def test_threshold_is_respected() -> None:
    img = np.full((64, 64), AIR, dtype=np.int16)
    img[16:48, 16:48] = FAT
    assert analyse(img, modality="CT").box == (16, 16, 48, 48)
    assert analyse(img, modality="CT", hu_threshold=-50.0).box is None
    assert analyse(img, modality="CT", hu_threshold=-100.5).box == (16, 16, 48, 48)
    assert analyse(img, modality="CT", hu_threshold=-40000.0).box == (0, 0, 64, 64)


def test_bad_arguments_are_config_errors() -> None:
    img = np.zeros((32, 32), dtype=np.int16)
    with pytest.raises(ConfigError, match="CT, MR"):
        analyse(img, modality="PET")
    with pytest.raises(ConfigError):
        analyse(img, modality="CT", patch=0)
    with pytest.raises(ConfigError):
        analyse(np.zeros((2, 32, 32)), modality="CT")
    with pytest.raises(ConfigError):
        analyse(img, modality="CT", hu_threshold=float("nan"))


def test_mr_volume_threshold_keeps_air_slices_empty_and_finds_the_body() -> None:
    from radforge.ingest.content import mr_body_threshold
    from radforge.synthetic import mr_phantom

    ph = mr_phantom(shape=(16, 128, 128), seed=680)
    t = mr_body_threshold(ph.array[::2, ::4, ::4])
    assert t is not None
    for k in range(ph.array.shape[0]):
        truth = float((ph.labels[k] > 0).mean())
        got = analyse(ph.array[k], modality="MR", mr_threshold=t).fraction
        if truth == 0:
            assert got == 0.0, k
        else:
            assert abs(got - truth) < 0.06, (k, got, truth)
    # Bright fat must not become the threshold: tissue (~100s) sits above it.
    assert t < float(np.percentile(ph.array[ph.labels == 1], 5))
