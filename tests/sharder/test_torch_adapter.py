"""The PyTorch/MONAI adapter and export-nifti on a dataset made by the real ingest (real Ray, DataLoader)."""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import tempfile
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from radforge.cli import main
from radforge.ingest.config import load_config
from radforge.ingest.pipeline import run_ingest
from radforge.ingest.volume import from_nifti
from radforge.sharder.torch_dataset import (
    FLOAT_FIELDS,
    INT_FIELDS,
    STR_FIELDS,
    RadforgeDataset,
    RadforgeIterableDataset,
    RadforgeMonaiDataset,
    RadforgeMonaiIterableDataset,
    SampleShapeError,
    read_series_volume,
)
from radforge.synthetic.dicom import write_dicom_series
from radforge.synthetic.phantom import ct_phantom
from tests.support import make_archive, read_all

SIZE, N_SLICES = 40, 8
# Two planes and two windows per modality: images of several shapes and dtypes in one dataset.
CFG = {
    "planes": ["axial", "coronal"],
    "windows": {"ct": ["raw", "soft_tissue"], "mr": ["raw", "pct"]},
    "reformat": {"min_side": 8},  # 40-pixel phantoms: reformats of 25 x 40
    "shards": {"size_limit": 1 << 16},
}
PAD = (64, 64)
CT_PHANTOM = ct_phantom(shape=(N_SLICES, SIZE, SIZE), seed=0)  # make_archive's first CT
GAP_PHANTOM = ct_phantom(shape=(N_SLICES, 32, 32), seed=7)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, ray_local: None) -> tuple[str, dict[str, dict]]:
    """(dataset path, every sample read by stock streaming by key)."""
    root = tmp_path_factory.mktemp("adapter")
    arch = make_archive(root / "archive", n_ct=1, n_mr=1, size=SIZE, n_slices=N_SLICES)
    # a CT with its middle slice missing: uneven gaps, so ingest keeps the acquired plane alone
    info = write_dicom_series(GAP_PHANTOM, arch / "ct-gap", shuffle_names=False, seed=7)
    Path(info.paths[N_SLICES // 2]).unlink()
    summary = run_ingest(str(arch), str(root / "ds"), load_config(overrides=CFG))
    assert summary.committed and summary.slices_dropped > 0
    return str(root / "ds"), read_all(root / "ds")


def _stored(batch_image: torch.Tensor, meta: dict[str, Any], i: int) -> np.ndarray:
    """Sample ``i`` of a padded batch cut back to its stored shape."""
    return batch_image[i, 0, : int(meta["height"][i]), : int(meta["width"][i])].numpy()


def _check_batch(batch: dict[str, Any], stock: dict[str, dict], seen: Counter[str]) -> None:
    """Pixels equal the stock reader's, padding holds the background, meta is typed and complete."""
    meta = batch["meta"]
    assert batch["image"].dtype == torch.float32 and batch["image"].shape[1:] == (1, *PAD)
    for f in STR_FIELDS:
        assert all(isinstance(v, str) for v in meta[f]), f
    for f in INT_FIELDS:
        assert meta[f].dtype == torch.int64, f
    for f in FLOAT_FIELDS:
        assert meta[f].dtype == torch.float64, f
    assert meta["pixel_spacing"].shape == (len(batch["key"]), 2)
    for i, key in enumerate(batch["key"]):
        seen[key] += 1
        ref = stock[key]
        np.testing.assert_array_equal(_stored(batch["image"], meta, i), ref["image"].astype(np.float32))
        assert meta["slice_index"][i] == ref["meta"]["slice_index"]
        assert meta["plane"][i] == ref["meta"]["plane"]
        assert meta["pixel_spacing"][i].tolist() == ref["meta"]["pixel_spacing"]
        if ref["meta"]["kvp"] is None:
            assert math.isnan(meta["kvp"][i])
        h, w = ref["image"].shape
        pad = -1024.0 if (ref["meta"]["modality"], ref["meta"]["window"]) == ("CT", "raw") else 0.0
        assert (batch["image"][i, 0, h:, :] == pad).all() and (batch["image"][i, 0, :, w:] == pad).all()


@pytest.mark.parametrize("workers", [0, 2])
def test_map_style_batches_every_sample_once_with_the_stored_pixels(dataset: tuple, workers: int) -> None:
    uri, stock = dataset
    assert len({s["image"].shape for s in stock.values()}) > 1  # a plain default_collate would fail
    assert len({s["image"].dtype for s in stock.values()}) > 1
    ds = RadforgeDataset(uri, pad_to=PAD)
    assert len(ds) == len(stock)
    seen: Counter[str] = Counter()
    for batch in DataLoader(ds, batch_size=5, shuffle=True, num_workers=workers):
        _check_batch(batch, stock, seen)
    assert seen == Counter(list(stock))


def test_iterable_streams_every_sample_once_per_epoch_across_workers(dataset: tuple) -> None:
    uri, stock = dataset
    ds = RadforgeIterableDataset(uri, pad_to=PAD, shuffle=True, seed=3, batch_size=4)
    # epochs in this process and in forked workers in turn (as in a notebook): a worker forked after
    # this process iterated inherited streaming's lock and thread pool (and failed or hung) before
    orders = []
    for workers in (0, 2, 0, 1):
        seen: Counter[str] = Counter()
        for batch in DataLoader(ds, batch_size=4, num_workers=workers):
            _check_batch(batch, stock, seen)
        assert seen == Counter(list(stock))
        orders.append(list(seen))
    plain = RadforgeIterableDataset(uri, shuffle=False)
    unshuffled = [k for batch in DataLoader(plain, batch_size=4) for k in batch["key"]]
    assert orders[0] != unshuffled and orders[2] != orders[0]  # shuffled, differently each epoch


def test_filters_keep_only_matching_samples_and_collate_without_padding(dataset: tuple) -> None:
    uri, stock = dataset
    want = {k for k, s in stock.items() if (s["meta"]["modality"], s["meta"]["plane"]) == ("CT", "axial")}
    want_raw = {k for k in want if stock[k]["meta"]["window"] == "raw"}
    mapped = RadforgeDataset(uri, modality="CT", plane="axial")
    streamed = RadforgeIterableDataset(uri, modality="CT", plane="axial", window="raw", shuffle=False)
    for ds, expected in ((mapped, want), (streamed, want_raw)):
        assert Counter(b for batch in DataLoader(ds, batch_size=3) for b in batch["key"]) == Counter(expected)


def test_transforms_apply_to_the_image_then_the_sample(dataset: tuple) -> None:
    uri, stock = dataset
    ds = RadforgeDataset(
        uri,
        plane="axial",
        transform=lambda img: img[:, ::2, ::2],
        sample_transform=lambda s: {**s, "hu_max": s["image"].max()},
    )
    sample = ds[0]
    ref = stock[sample["key"]]["image"]
    np.testing.assert_array_equal(sample["image"][0].numpy(), ref[::2, ::2].astype(np.float32))
    assert sample["hu_max"] == float(ref[::2, ::2].max()) and sample["meta"]["height"] == ref.shape[0]


def test_an_image_larger_than_pad_to_or_a_misspelt_option_is_one_error_naming_it(dataset: tuple) -> None:
    uri, _ = dataset
    with pytest.raises(TypeError, match="unknown option.* modalty; valid: part, cache_dir"):
        RadforgeDataset(uri, modalty="CT")  # type: ignore[call-arg]
    ds = RadforgeDataset(uri, pad_to=(8, 8))
    expected = r"sample .*/\d{5}/.*: image of \d+x\d+ does not fit pad_to=8x8"
    with pytest.raises(SampleShapeError, match=expected):
        ds[0]


def test_monai_metatensor_carries_spacing_and_orientation_through_a_transform_chain(dataset: tuple) -> None:
    from monai.data import MetaTensor
    from monai.transforms import Compose, Resize, ScaleIntensityRange

    uri, stock = dataset
    chain = Compose(
        [ScaleIntensityRange(a_min=-1000, a_max=1000, b_min=0.0, b_max=1.0, clip=True), Resize((20, 20))]
    )
    plain = RadforgeMonaiDataset(uri, modality="CT", window="raw", plane="axial")
    raw = plain[0]
    assert isinstance(raw["image"], MetaTensor)
    row_mm, col_mm = stock[raw["key"]]["meta"]["pixel_spacing"]
    assert raw["image"].pixdim.tolist() == pytest.approx([row_mm, col_mm])
    assert nib.aff2axcodes(raw["image"].affine.numpy()) == ("P", "L", "S")  # rows posterior, columns left
    slice_mm = stock[raw["key"]]["meta"]["slice_spacing"]
    assert float(raw["image"].affine[2, 3]) == pytest.approx(slice_mm * raw["meta"]["slice_index"])

    ds = RadforgeMonaiDataset(uri, modality="CT", window="raw", plane="axial", transform=chain)
    streamed = RadforgeMonaiIterableDataset(uri, modality="CT", window="raw", transform=chain, batch_size=3)
    for source in (ds, streamed):
        batch = next(iter(DataLoader(source, batch_size=3, num_workers=2)))
        assert isinstance(batch["image"], MetaTensor) and batch["image"].shape == (3, 1, 20, 20)
    one = ds[0]
    assert one["image"].pixdim.tolist() == pytest.approx([row_mm * SIZE / 20, col_mm * SIZE / 20])
    ref = np.clip((stock[one["key"]]["image"].astype(np.float32) + 1000) / 2000, 0, 1)
    expected = Resize((20, 20))(torch.from_numpy(ref)[None])
    np.testing.assert_allclose(one["image"].as_tensor().numpy(), np.asarray(expected), atol=1e-6)


def _ct_series(stock: dict[str, dict], volume: np.ndarray) -> str:
    """The key of the series whose axial raw slices are slices of ``volume`` (a generator's CT)."""
    for s in stock.values():
        m = s["meta"]
        if (m["plane"], m["window"], s["image"].dtype) != ("axial", "raw", volume.dtype):
            continue
        if s["image"].shape == volume.shape[1:] and np.array_equal(s["image"], volume[m["slice_index"]]):
            return str(m["series_key"])
    raise AssertionError("no axial raw slice of that volume in the dataset")


def _export(uri: str, key: str, out: Path, *args: str) -> tuple[Any, np.ndarray]:
    """Run ``radforge dataset export-nifti``; the image and its data as (slice, row, column)."""
    assert main(["dataset", "export-nifti", uri, key, str(out), *args]) == 0
    img = nib.load(out)
    return img, np.asarray(img.dataobj).transpose(2, 1, 0)  # NIfTI (column, row, slice)


def test_export_nifti_rebuilds_the_ct_volume_exactly(
    dataset: tuple, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri, stock = dataset
    phantom = CT_PHANTOM.array.astype(np.int16)
    key = _ct_series(stock, phantom)
    img, data = _export(uri, key, tmp_path / "ct.nii.gz", "--json")
    summary = json.loads(capsys.readouterr().out)
    assert data.dtype == np.int16 and data.shape == phantom.shape and summary["plane"] == "axial"
    series = [s["meta"] for s in stock.values() if s["meta"]["series_key"] == key]
    kept = {m["slice_index"] for m in series if m["plane"] == "axial"}
    assert 0 < len(kept) < N_SLICES and summary["slices_filled"] == N_SLICES - len(kept)
    for k in range(N_SLICES):
        expected = phantom[k] if k in kept else np.full(phantom[k].shape, -1024, np.int16)
        np.testing.assert_array_equal(data[k], expected, err_msg=f"slice {k}")
    z, (row, col) = series[0]["slice_spacing"], series[0]["pixel_spacing"]
    assert img.header.get_zooms() == pytest.approx((col, row, z))
    np.testing.assert_allclose(img.affine, np.diag([-col, -row, z, 1.0]))
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
    assert img.header["qform_code"] == 1 and img.header["sform_code"] == 1
    # ingest's own NIfTI reader brings the file back to the canonical volume it was cut from
    again = from_nifti(np.asarray(img.dataobj), img.affine)
    np.testing.assert_array_equal(again.array, data)
    assert again.spacing == pytest.approx((z, row, col)) and again.acquired_plane == "axial"


def test_export_nifti_of_a_reformatted_plane_and_of_an_unknown_series(
    dataset: tuple, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri, stock = dataset
    key = _ct_series(stock, CT_PHANTOM.array.astype(np.int16))
    img, data = _export(uri, key, tmp_path / "coronal.nii", "--plane", "coronal", "--window", "soft_tissue")
    assert nib.aff2axcodes(img.affine) == ("L", "I", "P") and data.shape[0] == SIZE  # one slice per y
    for s in stock.values():
        m = s["meta"]
        if (m["series_key"], m["plane"], m["window"]) == (key, "coronal", "soft_tissue"):
            np.testing.assert_array_equal(data[m["slice_index"]], s["image"])
    capsys.readouterr()
    assert main(["dataset", "export-nifti", uri, "nope", str(tmp_path / "x.nii")]) == 1
    assert "has no ingested series 'nope'" in capsys.readouterr().err
    assert main(["dataset", "export-nifti", uri, key, str(tmp_path / "x.nii"), "--window", "lung"]) == 1
    assert "stored: axial/raw, axial/soft_tissue, coronal/raw, coronal/soft_tissue" in capsys.readouterr().err


def test_export_nifti_of_a_series_with_a_missing_slice_says_its_spacing_is_uneven(
    dataset: tuple, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri, stock = dataset
    present = np.delete(GAP_PHANTOM.array.astype(np.int16), N_SLICES // 2, axis=0)  # what the scanner sent
    key = _ct_series(stock, present)
    img, data = _export(uri, key, tmp_path / "gap.nii.gz", "--json")
    summary = json.loads(capsys.readouterr().out)
    assert summary["uniform_spacing"] is False and summary["plane"] == "axial" and data.shape == present.shape
    for k in range(len(present)):
        if (data[k] != -1024).any():  # a stored slice (the others were dropped as empty)
            np.testing.assert_array_equal(data[k], present[k], err_msg=f"slice {k}")
    assert img.header.get_zooms()[2] == pytest.approx(GAP_PHANTOM.spacing[0])  # the median gap


def test_a_remote_dataset_reads_like_a_local_one(dataset: tuple, s3_bucket: str) -> None:
    from radforge.storage import filesystem

    uri, stock = dataset
    filesystem("s3").put(uri, f"{s3_bucket}/ds", recursive=True)
    ds = RadforgeIterableDataset(f"s3://{s3_bucket}/ds", pad_to=PAD, shuffle=False)
    seen: Counter[str] = Counter()
    for batch in DataLoader(ds, batch_size=4, num_workers=2):
        _check_batch(batch, stock, seen)
    assert seen == Counter(list(stock))
    cache = Path(ds.stream.streams[0].local)
    assert any(cache.rglob("shard.*.mds")) and cache.is_relative_to(tempfile.gettempdir())
    del ds, batch
    gc.collect()
    assert not cache.parent.exists()  # the temporary cache goes with the dataset


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_datasets_and_export_give_back_their_descriptors(dataset: tuple, tmp_path: Path) -> None:
    """A process that opens datasets one after another (a notebook, a service, this test suite) keeps
    no descriptor per dataset: streaming's /dev/shm segments are closed with close(), on leaving a
    ``with`` block and when the dataset is collected, and export-nifti closes its own."""
    uri, stock = dataset
    key = next(iter(stock.values()))["meta"]["series_key"]
    gc.collect()
    before = _open_fds()
    for _ in range(3):
        ds = RadforgeDataset(uri, pad_to=PAD)
        next(iter(DataLoader(ds, batch_size=2, num_workers=1)))
        assert _open_fds() > before  # the stream's segments are open while it is in use
        del ds
        gc.collect()
    assert _open_fds() == before
    with RadforgeIterableDataset(uri, pad_to=PAD, shuffle=False) as it:
        next(iter(it))
    assert _open_fds() == before
    it.close()  # a second close is harmless
    mapped = RadforgeDataset(uri)
    mapped[0]
    mapped.close()
    assert _open_fds() == before
    read_series_volume(uri, key)
    assert _open_fds() == before


def test_closing_an_iterable_dataset_mid_epoch_stops_streamings_threads(
    dataset: tuple, caplog: pytest.LogCaptureFixture
) -> None:
    """Leaving a ``with`` block after one sample (the epoch unfinished) stops streaming's prepare and
    ready threads before its shared memory goes: a fresh-clone make test saw the prepare thread
    still running after close (AttributeError on the removed shard states, and two descriptors it
    held left open)."""
    uri, _ = dataset
    before = set(threading.enumerate())
    with RadforgeIterableDataset(uri, pad_to=PAD, shuffle=False) as it:
        next(iter(it))
        assert set(threading.enumerate()) - before  # the epoch's threads run while it is read
    assert set(threading.enumerate()) - before == set()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
