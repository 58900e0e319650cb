"""Radiology views: content-aware crops, anatomy-guided masks, intensities, multi-crop batches.

Slices are phantoms from radforge.synthetic with their foreground map from radforge.ingest.content.analyse,
i.e. exactly what ingest stores per sample.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

from radforge.ingest.content import analyse
from radforge.synthetic.phantom import Label, ct_phantom, mr_phantom
from radforge.trainer.views import (
    MaskSampler,
    MultiCrop,
    ViewAugment,
    apply_view_augment,
    block_mask,
    body_region,
    box_foreground,
    collate_views,
    sample_crop_boxes,
    sample_masks,
    to_input,
)
from radforge.trainer.views.intensity import gaussian_blur
from radforge.trainer.views.multicrop import _resize
from radforge.windowing import CT_PRESETS, window_to_uint8

torch.set_num_threads(2)
MIN_FG = 0.3


def stored(
    image: np.ndarray, modality: str = "CT", window: str = "raw"
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(image, fg, meta) as ingest writes them."""
    content = analyse(image if window == "raw" else image.astype(np.float32), modality=modality)
    meta = {
        "modality": modality,
        "window": window,
        "fg_patch": 16,
        "plane": "axial",
        "body_box": list(content.box) if content.box else None,
    }
    return image, content.fg, meta


@pytest.fixture(scope="module")
def corner_slices() -> list[tuple[np.ndarray, np.ndarray, dict[str, Any], np.ndarray]]:
    """256x256 CT slices whose body sits in the bottom-right corner (with their label maps)."""
    ph = ct_phantom(shape=(12, 256, 256), seed=3, body_offset=(0.3, 0.3))
    return [(*stored(ph.array[z].astype(np.int16)), ph.labels[z]) for z in range(2, 10)]


def centres_inside(boxes: np.ndarray, body: tuple[int, int, int, int]) -> np.ndarray:
    cy, cx = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    return (cy >= body[0]) & (cy < body[2]) & (cx >= body[1]) & (cx < body[3])


@pytest.mark.parametrize("scale", [(0.32, 1.0), (0.05, 0.32)], ids=["global", "local"])
def test_content_aware_crops_land_on_the_body(corner_slices: list, scale: tuple[float, float]) -> None:
    rng = np.random.default_rng(0)
    inside, uniform_inside = [], []
    for image, fg, meta, labels in corner_slices:
        body = body_region(fg, meta["body_box"], image_shape=image.shape, cell=16)
        boxes = sample_crop_boxes(
            100, image_shape=image.shape, scale=scale, rng=rng, fg=fg, body=body, min_foreground=MIN_FG
        )
        inside.append(centres_inside(boxes, body))
        share = box_foreground(fg, boxes, image_shape=image.shape, cell=16)[:, 0, 0]
        assert share.min() >= MIN_FG
        for r0, c0, r1, c1 in boxes:  # the same holds on the pixel labels, up to the 16-px cell blur
            assert (labels[r0:r1, c0:c1] != Label.BACKGROUND).mean() >= MIN_FG - 0.1
            assert 0 <= r0 < r1 <= image.shape[0] and 0 <= c0 < c1 <= image.shape[1]
        uniform = sample_crop_boxes(100, image_shape=image.shape, scale=scale, rng=rng)
        uniform_inside.append(centres_inside(uniform, body))
    assert np.mean(inside) >= 0.95
    assert np.mean(uniform_inside) < 0.6  # DINOv2's uniform placement, for contrast


def test_box_foreground_matches_pixel_counts_on_whole_cells() -> None:
    image, fg, meta = stored(ct_phantom(shape=(5, 128, 128), seed=1).array[2].astype(np.int16))
    boxes = np.array([[0, 0, 128, 128], [32, 48, 96, 112], [16, 16, 32, 32]])
    share = box_foreground(fg, boxes, image_shape=image.shape, cell=16)[:, 0, 0]
    for (r0, c0, r1, c1), s in zip(boxes, share, strict=True):
        cells = fg[r0 // 16 : r1 // 16, c0 // 16 : c1 // 16]
        assert s == pytest.approx(cells.mean() / 255.0, abs=1e-9)
    grid = box_foreground(fg, boxes[:1], image_shape=image.shape, cell=16, grid=8)[0]
    np.testing.assert_allclose(grid, fg / 255.0, atol=1e-9)  # an 8x8 grid of 16-px cells is the map itself


def test_crop_falls_back_to_the_body_box_when_nothing_is_dense_enough() -> None:
    fg = np.zeros((16, 16), dtype=np.uint8)
    fg[12:, 12:] = 255  # 64x64 px of body in a 256x256 slice
    rng = np.random.default_rng(0)
    boxes = sample_crop_boxes(
        20,
        image_shape=(256, 256),
        scale=(0.9, 1.0),
        rng=rng,
        fg=fg,
        body=(192, 192, 256, 256),
        min_foreground=0.5,
    )
    assert (boxes == [192, 192, 256, 256]).all()


def test_body_region_without_a_box_uses_the_foreground_map() -> None:
    fg = np.zeros((4, 6), dtype=np.uint8)
    fg[1:3, 2:4] = 200
    assert body_region(fg, None, image_shape=(60, 90), cell=16) == (16, 32, 48, 64)
    assert body_region(np.zeros((4, 6), np.uint8), None, image_shape=(60, 90), cell=16) == (0, 0, 60, 90)


def test_block_mask_hits_its_target_and_respects_the_prior() -> None:
    rng = np.random.default_rng(0)
    mask = block_mask(60, grid=(14, 14), rng=rng)
    assert 40 <= mask.sum() <= 60
    prior = np.zeros((14, 14))
    prior[:, :5] = 1.0
    masks = [block_mask(30, grid=(14, 14), rng=rng, prior=prior, prior_floor=0.0) for _ in range(20)]
    anatomy = np.mean([m[:, :5].sum() / m.sum() for m in masks])
    assert anatomy > 0.7


def test_masks_follow_dinov2_ratio_schedule() -> None:
    rng = np.random.default_rng(0)
    masks = sample_masks(64, grid=(14, 14), rng=rng, probability=0.5, ratio=(0.1, 0.5), prior="uniform")
    counts = masks.sum(1)
    assert (counts > 0).sum() == 32  # half the crops masked
    ratios = np.sort(counts[counts > 0]) / 196
    assert ratios.min() < 0.15 and ratios.max() <= 0.5
    assert ratios[-4:].mean() > 0.35  # spread over the range, not all at one value
    with pytest.raises(ValueError, match="anatomy, uniform"):
        sample_masks(2, grid=(4, 4), rng=rng, prior="random")  # type: ignore[arg-type]


def test_anatomy_guided_masks_land_on_foreground(corner_slices: list) -> None:
    rng = np.random.default_rng(1)
    whole = np.concatenate(
        [
            box_foreground(fg, np.array([[0, 0, 256, 256]]), image_shape=image.shape, cell=16, grid=14)
            for image, fg, _, _ in corner_slices
        ]
    )
    mc = MultiCrop(global_size=224, patch_size=16)
    planned = np.concatenate(
        [
            mc.plan(image.shape, fg, meta, rng=rng).priors
            for image, fg, meta, _ in corner_slices
            for _ in range(4)
        ]
    )
    for name, priors in [("whole slice", np.repeat(whole, 8, axis=0)), ("global crops", planned)]:
        on_fg = {}
        for prior in ("anatomy", "uniform"):
            masks = sample_masks(len(priors), grid=(14, 14), rng=rng, priors=priors, prior=prior).reshape(
                -1, 14, 14
            )
            on_fg[prior] = (masks & (priors > 0.5)).sum() / masks.sum()
        # masks of 10-50% of the patches cannot all fit on a body covering 25-40% of the crop;
        # the prior still puts them there about twice as often as DINOv2's uniform placement
        assert on_fg["anatomy"] > 1.6 * on_fg["uniform"], (name, on_fg)
        assert on_fg["anatomy"] > on_fg["uniform"] + 0.2, (name, on_fg)


def test_ct_input_is_z_scored_and_ignores_values_below_air() -> None:
    ph = ct_phantom(shape=(5, 64, 64), seed=0)
    image = ph.array[2].astype(np.int16)
    x = to_input(torch.as_tensor(image), modality="CT", window="raw")
    assert x.mean().item() == pytest.approx(0.0, abs=1e-5) and x.std(correction=0).item() == pytest.approx(
        1.0, abs=1e-4
    )
    padded = image.copy()
    padded[:4] = -3024  # outside the scan field of view
    ref = image.copy()
    ref[:4] = -1000
    torch.testing.assert_close(
        to_input(torch.as_tensor(padded), modality="CT", window="raw"),
        to_input(torch.as_tensor(ref), modality="CT", window="raw"),
    )
    window = CT_PRESETS["lung"]
    windowed = to_input(
        torch.as_tensor(image), modality="CT", window="raw", random_window=(window.level, window.width)
    )
    stored_u8 = window_to_uint8(image.astype(np.float32), window)
    from_u8 = to_input(torch.as_tensor(stored_u8), modality="CT", window="lung")
    assert (windowed - from_u8).abs().max().item() < 0.06  # 8-bit rounding of the stored window
    assert (windowed - from_u8).abs().mean().item() < 0.01


def test_gaussian_blur_matches_torchvision() -> None:
    views = torch.randn(3, 1, 40, 40)
    sigmas = [0.3, 1.0, 2.0]
    ours = gaussian_blur(views, torch.tensor(sigmas))
    for i, s in enumerate(sigmas):
        ref = TF.gaussian_blur(views[i], kernel_size=9, sigma=s)
        torch.testing.assert_close(ours[i], ref, atol=1e-5, rtol=1e-5)


def test_view_augment_neutral_parameters_only_z_score() -> None:
    views = torch.randn(4, 1, 8, 8) * 3 + 5
    neutral = ViewAugment(
        contrast=np.ones(4),
        brightness=np.zeros(4),
        gamma=np.ones(4),
        blur_sigma=np.zeros(4),
        noise_std=np.zeros(4),
        noise_seed=0,
    )
    out = apply_view_augment(
        views.clone(), neutral, image_mean=torch.full((4,), 5.0), image_std=torch.full((4,), 3.0)
    )
    torch.testing.assert_close(out, (views - 5.0) / (3.0 + 1e-6))
    strong = ViewAugment(
        contrast=np.full(4, 2.0),
        brightness=np.full(4, 0.5),
        gamma=np.ones(4),
        blur_sigma=np.zeros(4),
        noise_std=np.zeros(4),
        noise_seed=0,
    )
    out = apply_view_augment(views.clone(), strong)
    m = views.mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(out, (views - m) * 2.0 + m + 0.5)


def multicrop(**kwargs: Any) -> MultiCrop:
    defaults: dict[str, Any] = dict(global_size=64, local_size=32, local_count=4, patch_size=16)
    return MultiCrop(**(defaults | kwargs))


@pytest.mark.parametrize(
    ("modality", "window", "dtype", "shape"),
    [
        ("CT", "raw", np.int16, (96, 128)),
        ("CT", "soft_tissue", np.uint8, (64, 64)),
        ("MR", "raw", np.uint16, (80, 80)),
    ],
)
def test_views_of_every_stored_dtype_and_shape(
    modality: str, window: str, dtype: type, shape: tuple[int, int]
) -> None:
    factory = ct_phantom if modality == "CT" else mr_phantom
    array = factory(shape=(5, *shape), seed=2).array[2]
    if dtype is np.uint8:
        array = window_to_uint8(array, CT_PRESETS[window])
    image, fg, meta = stored(array.astype(dtype), modality, window)
    views = multicrop()(image, fg, meta, rng=np.random.default_rng(0))
    assert views.global_crops.shape == (2, 1, 64, 64) and views.global_crops.dtype == torch.float32
    assert views.local_crops.shape == (4, 1, 32, 32)
    assert views.priors.shape == (2, 4, 4)
    assert torch.isfinite(views.global_crops).all() and torch.isfinite(views.local_crops).all()
    assert 0.2 < views.global_crops.std().item() < 5.0


def test_plain_views_are_z_scored_crops_of_the_slice() -> None:
    image, fg, meta = stored(ct_phantom(shape=(5, 128, 128), seed=0).array[2].astype(np.int16))
    plain = multicrop(
        hflip_p=0.0,
        rotation_p=0.0,
        contrast_p=0.0,
        gamma_p=0.0,
        blur_p=(0, 0, 0),
        noise_p=0.0,
        global_scale=(0.2, 0.3),
    )
    views = plain(image, fg, meta, rng=np.random.default_rng(5))
    plan = plain.plan(image.shape, fg, meta, rng=np.random.default_rng(5))
    z = to_input(torch.as_tensor(image), modality="CT", window="raw")
    r0, c0, r1, c1 = plan.global_boxes[0]
    ref = torch.nn.functional.interpolate(
        z[r0:r1, c0:c1][None, None], size=(64, 64), mode="bilinear", antialias=True
    )
    torch.testing.assert_close(views.global_crops[0], ref[0], atol=1e-4, rtol=1e-4)


def test_flipped_views_carry_flipped_priors() -> None:
    image, fg, meta = stored(
        ct_phantom(shape=(5, 128, 128), seed=0, body_offset=(0.0, 0.3)).array[2].astype(np.int16)
    )
    mc = multicrop(hflip_p=1.0, rotation_p=0.0, content_aware=False, global_scale=(1.0, 1.0))
    plan = mc.plan(image.shape, fg, meta, rng=np.random.default_rng(0))
    unflipped = box_foreground(fg, plan.global_boxes, image_shape=image.shape, cell=16, grid=4)
    np.testing.assert_allclose(plan.priors, unflipped[:, :, ::-1], atol=1e-6)


def test_batch_rendering_equals_per_slice_rendering() -> None:
    vol = ct_phantom(shape=(8, 96, 96), seed=4)
    samples = [stored(vol.array[z].astype(np.int16)) for z in range(2, 6)]
    mc = multicrop(noise_p=0.0)  # noise is drawn once per render call: same law, different draws
    plans = [mc.plan(s[0].shape, s[1], s[2], rng=np.random.default_rng(i)) for i, s in enumerate(samples)]
    together = mc.render(samples, plans)
    for sample, plan, views in zip(samples, plans, together, strict=True):
        alone = mc.render([sample], [plan])[0]
        torch.testing.assert_close(views.global_crops, alone.global_crops, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(views.local_crops, alone.local_crops, atol=1e-5, rtol=1e-5)


def test_collate_is_crop_major_with_masks_on_the_patch_grid() -> None:
    vol = ct_phantom(shape=(8, 96, 96), seed=4)
    samples = [stored(vol.array[z].astype(np.int16)) for z in range(2, 6)]
    rng = np.random.default_rng(0)
    views = multicrop().batch(samples, rng=rng)
    batch = collate_views(views, masks=MaskSampler(), rng=rng)
    assert batch.batch_size == 4 and batch.n_global == 2 and batch.n_local == 4
    assert batch.global_crops.shape == (8, 1, 64, 64) and batch.local_crops.shape == (16, 1, 32, 32)
    torch.testing.assert_close(batch.global_crops[1], views[1].global_crops[0])  # crop 0 of image 1
    torch.testing.assert_close(batch.global_crops[4 + 2], views[2].global_crops[1])  # crop 1 of image 2
    assert batch.masks.shape == (8, 16) and batch.masks.dtype == torch.bool
    assert (batch.masks.sum(1) > 0).sum() == 4


def test_pyramid_resize_stays_close_to_a_direct_antialiased_resize() -> None:
    image = ct_phantom(shape=(5, 512, 512), seed=0).array[2].astype(np.int16)
    z = to_input(torch.as_tensor(image), modality="CT", window="raw")
    boxes = np.array(
        [[20, 30, 480, 490], [100, 100, 390, 390], [200, 150, 320, 270]]
    )  # shrink 2.05, 3.0, 1.25
    for size in (224, 96):
        ours = _resize([z[None, None]], boxes, size)
        for (r0, c0, r1, c1), view in zip(boxes.tolist(), ours, strict=True):
            ref = torch.nn.functional.interpolate(
                z[r0:r1, c0:c1][None, None], size=(size, size), mode="bilinear", antialias=True
            )[0]
            assert (view - ref).abs().mean().item() < 0.05  # z-score units; edges blur slightly differently
