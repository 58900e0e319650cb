"""radforge.ingest.dicom against real files from pydicom and pydicom-data, and crafted broken headers.

References are independent of radforge.ingest.dicom: pydicom's own pixel pipeline (``ds.pixel_array`` with
its default plugin choice, rescale by ``apply_modality_lut`` or the functional groups read here)
and SimpleITK (GDCM) for a cross-check.
"""

from __future__ import annotations

import io
import logging
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_modality_lut
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    HTJ2KLossless,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
)

from radforge.ingest.dicom import (
    MAX_FRAMES,
    MAX_INFLATED_BYTES,
    Frames,
    decode_file_fast,
    decode_instance,
    supported_transfer_syntaxes,
)
from radforge.ingest.errors import IngestError, Reason

# --------------------------------------------------------------------------------------------
# helpers


def _path(name: str) -> str:
    path = get_testdata_file(name)
    assert path is not None, name
    return str(path)


def _bytes(name: str) -> bytes:
    return Path(_path(name)).read_bytes()


def _dataset(name: str) -> Dataset:
    return pydicom.dcmread(_path(name))


def _write(ds: Dataset, **kwargs: object) -> bytes:
    """Serialise as a standard file; the encoding follows the (possibly changed) transfer syntax."""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True, **kwargs)  # type: ignore[arg-type]
    return buffer.getvalue()


def _reference(path: str) -> np.ndarray:
    """Modality values (float64, frames x rows x cols) computed by pydicom, independently of us."""
    ds = pydicom.dcmread(path)
    frames = int(ds.get("NumberOfFrames") or 1)
    stored = ds.pixel_array.reshape(frames, ds.Rows, ds.Columns)
    if ds.PhotometricInterpretation == "MONOCHROME1":  # mirrored within the stored range
        top = 2**ds.BitsStored - 1
        lo, hi = (-(top + 1) // 2, top // 2) if ds.PixelRepresentation else (0, top)
        stored = (lo + hi) - stored.astype(np.int64)
    if "SharedFunctionalGroupsSequence" in ds or "PerFrameFunctionalGroupsSequence" in ds:
        out = np.empty(stored.shape)
        for i in range(frames):
            slope, intercept = 1.0, 0.0
            items = [ds.SharedFunctionalGroupsSequence[0]] if "SharedFunctionalGroupsSequence" in ds else []
            if "PerFrameFunctionalGroupsSequence" in ds:
                items.append(ds.PerFrameFunctionalGroupsSequence[i])
            for item in items:  # per-frame last: it overrides the shared value
                if "PixelValueTransformationSequence" in item:
                    slope = float(item.PixelValueTransformationSequence[0].RescaleSlope)
                    intercept = float(item.PixelValueTransformationSequence[0].RescaleIntercept)
            out[i] = stored[i] * slope + intercept
        return out
    return np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)


def _assert_matches(pixels: np.ndarray, reference: np.ndarray) -> None:
    assert pixels.dtype == np.float32
    assert pixels.shape == reference.shape
    if np.array_equal(reference, np.round(reference)) and np.abs(reference).max() < 2**24:
        np.testing.assert_array_equal(pixels, reference)  # integral values: float32 holds them exactly
    else:  # non-integer rescale: float32 rounding only
        np.testing.assert_allclose(pixels, reference, rtol=2e-7, atol=1e-7 * np.abs(reference).max())


def _raises(data: bytes, reason: Reason, **kwargs: object) -> IngestError:
    with pytest.raises(IngestError) as caught:
        decode_instance(data, **kwargs)  # type: ignore[arg-type]
    assert caught.value.reason == reason, caught.value
    return caught.value


# --------------------------------------------------------------------------------------------
# real files decode like pydicom's own pipeline

# CT and MR in every transfer syntax the packages ship, plus grayscale NM/CR/OT/RTDOSE files that
# exercise bit depths, MONOCHROME1, a Modality LUT, 32-bit and multi-frame data
REAL_GRAYSCALE = [
    "CT_small.dcm",
    "693_UNCI.dcm",
    "693_UNCR.dcm",
    "693_J2KR.dcm",
    "693_J2KI.dcm",
    "J2K_pixelrep_mismatch.dcm",
    "explicit_VR-UN.dcm",
    "bad_sequence.dcm",
    "eCT_Supplemental.dcm",
    "MR_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_expb.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_padded.dcm",
    "emri_small.dcm",
    "emri_small_big_endian.dcm",
    "emri_small_RLE.dcm",
    "emri_small_jpeg_2k_lossless.dcm",
    "emri_small_jpeg_ls_lossless.dcm",
    "MR2_UNCR.dcm",
    "MR2_UNCI.dcm",
    "MR2_J2KR.dcm",
    "MR2_J2KI.dcm",
    "MR-SIEMENS-DICOM-WithOverlays.dcm",
    "examples_overlay.dcm",
    "JPEG-LL.dcm",
    "JPGLosslessP14SV1_1s_1f_8b.dcm",
    "JPGExtended.dcm",
    "JPEG2000.dcm",
    "JPEG2000_UNC.dcm",
    "JPEGLSNearLossless_16.dcm",
    "image_dfl.dcm",
    "RG3_UNCR.dcm",
    "RG3_J2KR.dcm",
    "RG1_UNCI.dcm",
    "mlut_18.dcm",
    "vlut_04.dcm",
    "rtdose.dcm",
    "rtdose_expb.dcm",
    "rtdose_rle.dcm",
]


@pytest.mark.parametrize("name", REAL_GRAYSCALE)
def test_real_file_matches_pydicom(name: str) -> None:
    frames = decode_instance(_bytes(name))
    _assert_matches(frames.pixels, _reference(_path(name)))


def _dicomdir_images() -> list[str]:
    """The CT, MR and CR images of pydicom's DICOMDIR tree (one folder per patient)."""
    root = Path(_path("CT_small.dcm")).parent / "dicomdirtests"
    patients = ("77654033", "98892001", "98892003")
    return sorted(str(p) for patient in patients for p in (root / patient).rglob("*") if p.is_file())


@pytest.mark.parametrize("path", _dicomdir_images(), ids=lambda p: "/".join(Path(p).parts[-2:]))
def test_dicomdir_tree_images_match_pydicom(path: str) -> None:
    frames = decode_instance(Path(path).read_bytes())
    _assert_matches(frames.pixels, _reference(path))


@pytest.mark.parametrize(
    "name",
    ["CT_small.dcm", "MR_small_bigendian.dcm", "693_J2KR.dcm", "emri_small_RLE.dcm", "eCT_Supplemental.dcm"]
    + ["RG3_UNCR.dcm", "MR2_UNCR.dcm"],
)
def test_real_file_matches_simpleitk(name: str) -> None:
    """GDCM is a different decoder and applies rescale (and MONOCHROME1 mirroring) itself."""
    frames = decode_instance(_bytes(name))
    expected = sitk.GetArrayFromImage(sitk.ReadImage(_path(name))).astype(np.float64)
    _assert_matches(frames.pixels, expected.reshape(frames.pixels.shape))


def test_ct_is_in_hounsfield_units() -> None:
    ds = _dataset("CT_small.dcm")
    assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, -1024.0)
    frames = decode_instance(_bytes("CT_small.dcm"))
    np.testing.assert_array_equal(frames.pixels[0], ds.pixel_array.astype(np.float64) - 1024.0)


def test_source_may_be_a_binary_file() -> None:
    with open(_path("MR_small_RLE.dcm"), "rb") as f:
        from_file = decode_instance(f)
    np.testing.assert_array_equal(from_file.pixels, decode_instance(_bytes("MR_small_RLE.dcm")).pixels)


# --------------------------------------------------------------------------------------------
# fast path: ordinary files never go through pydicom's parser, and give the same values


@pytest.mark.parametrize(
    "name",
    ["CT_small.dcm", "693_UNCI.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm"]
    + ["emri_small.dcm", "emri_small_jpeg_2k_lossless.dcm", "image_dfl.dcm", "explicit_VR-UN.dcm"],
)
def test_ordinary_files_take_the_fast_path(name: str) -> None:
    fast = decode_file_fast(_bytes(name))
    assert fast is not None
    _assert_matches(fast, _reference(_path(name)))


@pytest.mark.parametrize("name", ["eCT_Supplemental.dcm", "mlut_18.dcm"])
def test_functional_groups_and_modality_lut_take_the_general_path(name: str) -> None:
    assert decode_file_fast(_bytes(name)) is None
    _assert_matches(decode_instance(_bytes(name)).pixels, _reference(_path(name)))


def test_file_without_meta_takes_the_general_path() -> None:
    ds = _dataset("CT_small.dcm")
    del ds.file_meta
    ds.preamble = None
    buffer = io.BytesIO()
    ds.save_as(buffer, implicit_vr=True, little_endian=True)  # bare data set, as old archives hold
    data = buffer.getvalue()
    assert data[128:132] != b"DICM"
    assert decode_file_fast(data) is None
    np.testing.assert_array_equal(
        decode_instance(data).pixels, decode_instance(_bytes("CT_small.dcm")).pixels
    )


def test_deflated_ct_decodes_on_the_fast_path() -> None:
    data = _write(_dataset("CT_small.dcm"), implicit_vr=False, little_endian=True)
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    deflated = _write(ds)
    assert len(deflated) < len(data)
    fast = decode_file_fast(deflated)
    assert fast is not None
    np.testing.assert_array_equal(fast, decode_instance(_bytes("CT_small.dcm")).pixels)


def test_deflate_bomb_is_refused() -> None:
    ds = _dataset("CT_small.dcm")
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    deflated = _write(ds)
    assert deflated[132:138] == b"\x02\x00\x00\x00UL"  # (0002,0000) group length comes first
    start = 144 + int.from_bytes(deflated[140:144], "little")  # the deflated data set starts here
    packer = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
    data_set = zlib.decompress(deflated[start:], -zlib.MAX_WBITS)
    head = packer.compress(data_set) + packer.flush(zlib.Z_FULL_FLUSH)
    zeros = packer.compress(bytes(1 << 20)) + packer.flush(zlib.Z_FULL_FLUSH)  # self-contained: repeatable
    repeats = MAX_INFLATED_BYTES // (1 << 20) + 1
    bomb = deflated[:start] + head + zeros * repeats + packer.flush()
    assert len(bomb) < 2_000_000
    _raises(bomb, Reason.ABSURD_DIMENSIONS)


# --------------------------------------------------------------------------------------------
# compressed: our own synthetic CT through pydicom's encoders decodes back exactly


def _phantom_ct() -> tuple[Dataset, np.ndarray]:
    ds = _dataset("CT_small.dcm")
    yy, xx = np.mgrid[: ds.Rows, : ds.Columns]
    body = ((yy - 64) ** 2 / 55**2 + (xx - 64) ** 2 / 45**2) < 1
    bone = ((yy - 64) ** 2 + (xx - 40) ** 2) < 8**2
    hu = np.where(body, 40, -1000) + np.where(bone, 960, 0)
    hu = hu + np.random.default_rng(0).integers(-20, 21, hu.shape)
    return ds, (hu + 1024).astype(np.int16)  # stored = HU - intercept


@pytest.mark.parametrize(
    ("uid", "decoder"),
    [
        (RLELossless, "pylibjpeg-rle"),
        (JPEG2000Lossless, "pylibjpeg-openjpeg"),
        (ExplicitVRBigEndian, "numpy"),
    ],
)
def test_synthetic_ct_round_trips_exactly(uid: str, decoder: str) -> None:
    ds, stored = _phantom_ct()
    if uid == ExplicitVRBigEndian:
        ds.file_meta.TransferSyntaxUID = UID(uid)
        ds.PixelData = stored.astype(">i2").tobytes()
        data = _write(ds)
    else:
        ds.compress(uid, stored)
        data = _write(ds)
    frames = decode_instance(data)
    assert frames.decoder == decoder
    np.testing.assert_array_equal(frames.pixels[0], stored.astype(np.float64) - 1024)


def test_jpeg_baseline_goes_to_pillow_and_matches_it() -> None:
    """8-bit JPEG baseline: pillow (libjpeg-turbo) is ~4x faster here than libjpeg."""
    _, stored = _phantom_ct()
    image = np.clip((stored.astype(np.int32) - 800) // 4, 0, 255).astype(np.uint8)
    encoded = io.BytesIO()
    Image.fromarray(image).save(encoded, "JPEG", quality=90)
    ds = _dataset("MR_small.dcm")
    ds.Rows, ds.Columns = image.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([encoded.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    frames = decode_instance(_write(ds))
    assert frames.decoder == "pillow"
    expected = np.asarray(Image.open(io.BytesIO(encoded.getvalue())), dtype=np.float64)
    np.testing.assert_array_equal(frames.pixels[0], expected)
    assert np.abs(expected - image).mean() < 2  # it is the image, lossy-compressed


def test_htj2k_label_routes_to_openjpeg() -> None:
    """No HTJ2K encoder is installed: a Part 1 codestream labelled HTJ2K (openjpeg reads both)."""
    ds, stored = _phantom_ct()
    ds.compress(JPEG2000Lossless, stored)
    ds.file_meta.TransferSyntaxUID = HTJ2KLossless
    frames = decode_instance(_write(ds))
    assert frames.decoder == "pylibjpeg-openjpeg"
    np.testing.assert_array_equal(frames.pixels[0], stored.astype(np.float64) - 1024)


def test_supported_transfer_syntaxes_name_the_fastest_installed_decoders() -> None:
    supported = supported_transfer_syntaxes()
    assert supported[RLELossless] == "pylibjpeg-rle"  # not pydicom's 5x slower native RLE
    assert supported["1.2.840.10008.1.2.4.70"] == "pylibjpeg-libjpeg"  # JPEG lossless SV1
    assert supported["1.2.840.10008.1.2.4.80"] == "pylibjpeg-libjpeg"  # JPEG-LS lossless
    assert supported[JPEG2000Lossless] == "pylibjpeg-openjpeg"
    assert supported[HTJ2KLossless] == "pylibjpeg-openjpeg"
    assert supported["1.2.840.10008.1.2.4.51"] == "pylibjpeg-libjpeg"  # 12-bit JPEG: pillow cannot
    assert supported[JPEGBaseline8Bit] == "pillow"
    for uid in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", ExplicitVRBigEndian):
        assert supported[uid] == "numpy"
    assert supported[DeflatedExplicitVRLittleEndian] == "zlib+numpy"


# --------------------------------------------------------------------------------------------
# bits stored, sign, MONOCHROME1


def _with_pixels(stored: np.ndarray, *, bits_stored: int, signed: bool, big_endian: bool = False) -> bytes:
    ds = _dataset("CT_small.dcm")
    ds.Rows, ds.Columns = stored.shape
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, bits_stored - 1, int(signed)
    ds.PixelData = stored.astype(">u2" if big_endian else "<u2").tobytes()
    if big_endian:
        ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    return _write(ds)


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("signed", [True, False])
def test_bits_above_bits_stored_are_ignored(signed: bool, big_endian: bool) -> None:
    rng = np.random.default_rng(3)
    values = rng.integers(-2048, 2048, (32, 48)) if signed else rng.integers(0, 4096, (32, 48))
    garbage = rng.integers(0, 16, values.shape) << 12  # the 4 unused high bits hold noise
    raw = ((values & 0xFFF) | garbage).astype(np.uint16)
    data = _with_pixels(raw, bits_stored=12, signed=signed, big_endian=big_endian)
    frames = decode_instance(data)
    np.testing.assert_array_equal(frames.pixels[0], values.astype(np.float64) - 1024)
    _assert_matches(frames.pixels, _reference_from_bytes(data))


def _reference_from_bytes(data: bytes) -> np.ndarray:
    ds = pydicom.dcmread(io.BytesIO(data))
    return np.asarray(apply_modality_lut(ds.pixel_array, ds), dtype=np.float64)[None]


def test_monochrome1_is_inverted_so_higher_is_brighter() -> None:
    ds = _dataset("RG3_UNCR.dcm")
    assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.BitsStored == 10
    frames = decode_instance(_bytes("RG3_UNCR.dcm"))
    np.testing.assert_array_equal(frames.pixels[0], 1023.0 - ds.pixel_array)


def test_monochrome1_ct_mirrors_before_rescale() -> None:
    ds = _dataset("CT_small.dcm")
    ds.PhotometricInterpretation = "MONOCHROME1"
    frames = decode_instance(_write(ds))
    stored = ds.pixel_array.astype(np.float64)
    np.testing.assert_array_equal(frames.pixels[0], (-32768 + 32767 - stored) - 1024.0)
    normal = decode_instance(_bytes("CT_small.dcm")).pixels[0]
    assert np.argmax(frames.pixels[0]) == np.argmin(normal)


# --------------------------------------------------------------------------------------------
# multi-frame and geometry


def test_single_frame_geometry_is_the_header_geometry() -> None:
    ds = _dataset("CT_small.dcm")
    frames = decode_instance(_bytes("CT_small.dcm"))
    assert isinstance(frames, Frames)
    assert frames.positions is not None
    np.testing.assert_array_equal(frames.positions, [[float(v) for v in ds.ImagePositionPatient]])
    assert frames.orientation == tuple(float(v) for v in ds.ImageOrientationPatient)
    assert frames.pixel_spacing == tuple(float(v) for v in ds.PixelSpacing)
    assert frames.slice_thickness == float(ds.SliceThickness)


def test_classic_multi_frame_gives_every_frame() -> None:
    frames = decode_instance(_bytes("emri_small_RLE.dcm"))
    assert frames.pixels.shape == (10, 64, 64)
    assert len({frames.pixels[i].tobytes() for i in range(10)}) == 10  # ten distinct frames
    assert frames.positions is None  # one position for ten frames says nothing per frame


def test_enhanced_ct_geometry_comes_from_functional_groups() -> None:
    ds = _dataset("eCT_Supplemental.dcm")
    frames = decode_instance(_bytes("eCT_Supplemental.dcm"))
    per_frame = ds.PerFrameFunctionalGroupsSequence
    expected = [[float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient] for item in per_frame]
    assert frames.positions is not None
    np.testing.assert_array_equal(frames.positions, expected)
    shared = ds.SharedFunctionalGroupsSequence[0]
    orientation = shared.PlaneOrientationSequence[0].ImageOrientationPatient
    assert frames.orientation == tuple(float(v) for v in orientation)
    assert frames.pixel_spacing == tuple(float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    assert frames.slice_thickness == float(shared.PixelMeasuresSequence[0].SliceThickness)


def test_enhanced_ct_rescale_is_applied_per_frame() -> None:
    ds = _dataset("eCT_Supplemental.dcm")
    transform = ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence
    del ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence
    for i, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        item.PixelValueTransformationSequence = pydicom.Sequence([Dataset()])
        item.PixelValueTransformationSequence[0].RescaleSlope = 2 if i else 1
        item.PixelValueTransformationSequence[0].RescaleIntercept = -1000 - 24 * i
        item.PixelValueTransformationSequence[0].RescaleType = transform[0].RescaleType
    frames = decode_instance(_write(ds))
    stored = ds.pixel_array.astype(np.float64)
    np.testing.assert_array_equal(frames.pixels[0], stored[0] - 1000)
    np.testing.assert_array_equal(frames.pixels[1], stored[1] * 2 - 1024)


def test_enhanced_frames_that_disagree_on_orientation_are_inconsistent() -> None:
    ds = _dataset("eCT_Supplemental.dcm")
    shared_orientation = ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence
    del ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence
    for i, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        item.PlaneOrientationSequence = pydicom.Sequence([Dataset()])
        cosines = list(shared_orientation[0].ImageOrientationPatient)
        item.PlaneOrientationSequence[0].ImageOrientationPatient = cosines if i == 0 else [0, 1, 0, 0, 0, -1]
    _raises(_write(ds), Reason.INCONSISTENT_GEOMETRY)


# --------------------------------------------------------------------------------------------
# broken and unsupported input: IngestError with the right reason, never anything else


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("MR_truncated.dcm", Reason.DECODE_FAILED),  # pixel data cut short
        ("emri_small_jpeg_2k_lossless_too_short.dcm", Reason.DECODE_FAILED),  # pydicom-data's truncated file
        ("JPEG2000-embedded-sequence-delimiter.dcm", Reason.DECODE_FAILED),  # corrupt codestream
        ("JPEG-lossy.dcm", Reason.DECODE_FAILED),  # malformed JPEG (JPGExtended is the fixed copy)
        ("badVR.dcm", Reason.DECODE_FAILED),  # NumberOfFrames '1A'
        ("meta_missing_tsyntax.dcm", Reason.DECODE_FAILED),  # pixel data without image pixel module
        ("rtplan_truncated.dcm", Reason.UNREADABLE),  # cut inside the header
        ("no_meta.dcm", Reason.UNREADABLE),  # starts with a stray byte: no data set
        ("zipMR.gz", Reason.UNREADABLE),
        ("README.txt", Reason.UNREADABLE),
        ("crayons.icc", Reason.UNREADABLE),
        ("rtplan.dcm", Reason.NO_PIXEL_DATA),
        ("test-SR.dcm", Reason.NO_PIXEL_DATA),
        ("waveform_ecg.dcm", Reason.NO_PIXEL_DATA),
        ("ExplVR_BigEndNoMeta.dcm", Reason.NO_PIXEL_DATA),
        ("SC_rgb.dcm", Reason.UNSUPPORTED_MODALITY),
        ("SC_rgb_rle.dcm", Reason.UNSUPPORTED_MODALITY),
        ("US1_J2KR.dcm", Reason.UNSUPPORTED_MODALITY),
        ("examples_ybr_color.dcm", Reason.UNSUPPORTED_MODALITY),
        ("OBXXXX1A.dcm", Reason.UNSUPPORTED_MODALITY),  # palette colour
        ("liver.dcm", Reason.UNSUPPORTED_MODALITY),  # 1-bit segmentation
    ],
)
def test_bad_and_unsupported_files_raise_the_right_reason(name: str, reason: Reason) -> None:
    _raises(_bytes(name), reason)


@pytest.mark.parametrize("data", [b"", b"DICM", b"\x00" * 128 + b"DICM", b"not a dicom file at all\n" * 10])
def test_empty_and_non_dicom_bytes_are_unreadable(data: bytes) -> None:
    _raises(data, Reason.UNREADABLE)


@pytest.mark.parametrize(
    "name",
    ["CT_small.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small_RLE.dcm", "image_dfl.dcm"]
    + ["emri_small_jpeg_2k_lossless.dcm", "eCT_Supplemental.dcm"],
)
def test_truncation_anywhere_raises_ingest_error_or_loses_nothing(name: str) -> None:
    """A cut object fails with a reason, unless the cut only took trailing bytes after the pixels."""
    data = _bytes(name)
    whole = decode_instance(data).pixels
    cuts = sorted(set(np.linspace(1, len(data) - 1, 60).astype(int)) | {128, 132, 140, 200, 300, 500})
    complete = 0
    for cut in cuts:
        try:
            pixels = decode_instance(data[:cut]).pixels
        except IngestError as error:
            assert error.reason in (Reason.UNREADABLE, Reason.DECODE_FAILED, Reason.NO_PIXEL_DATA), cut
            continue
        np.testing.assert_array_equal(pixels, whole)  # e.g. only trailing padding (FFFC,FFFC) was cut
        complete += 1
    assert complete <= 3


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm"])
def test_corrupted_header_bytes_decode_or_raise_ingest_error(name: str) -> None:
    data = bytearray(_bytes(name))
    pixel_start = len(data) - 2 * 64 * 64 if "MR" in name else len(data) - 2 * 128 * 128
    rng = np.random.default_rng(7)
    for _ in range(150):
        corrupt = bytearray(data)
        for offset in rng.integers(132, pixel_start, 3):
            corrupt[offset] = int(rng.integers(0, 256))
        try:
            frames = decode_instance(bytes(corrupt))
        except IngestError:
            continue
        assert frames.pixels.dtype == np.float32 and frames.pixels.ndim == 3


def test_pixel_data_shorter_than_the_header_implies() -> None:
    ds = _dataset("CT_small.dcm")
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]  # well-formed element, too few pixels
    error = _raises(_write(ds), Reason.DECODE_FAILED)
    assert "16384 bytes" in error.detail and "32768" in error.detail


def test_missing_pixel_data() -> None:
    ds = _dataset("CT_small.dcm")
    del ds.PixelData
    _raises(_write(ds), Reason.NO_PIXEL_DATA)


@pytest.mark.parametrize("name", ["CT_small.dcm", "emri_small_RLE.dcm", "693_J2KR.dcm"])
def test_absurd_dimensions_are_refused_before_allocating(name: str) -> None:
    ds = _dataset(name)
    ds.Rows, ds.Columns = 60000, 60000  # 3.6e9 pixels: 14 GB as float32
    data = _write(ds)
    tracemalloc.start()
    try:
        _raises(data, Reason.ABSURD_DIMENSIONS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * len(data) + 1_000_000


def test_absurd_frame_count_is_refused_without_reading_functional_groups() -> None:
    ds = _dataset("eCT_Supplemental.dcm")
    ds.NumberOfFrames = MAX_FRAMES + 1
    _raises(_write(ds), Reason.ABSURD_DIMENSIONS)


@pytest.mark.parametrize(("rows", "columns"), [(0, 128), (128, 0)])
def test_zero_dimensions_are_absurd(rows: int, columns: int) -> None:
    ds = _dataset("CT_small.dcm")
    ds.Rows, ds.Columns = rows, columns
    _raises(_write(ds), Reason.ABSURD_DIMENSIONS)


def test_pixel_limit_is_a_keyword_option() -> None:
    _raises(_bytes("CT_small.dcm"), Reason.ABSURD_DIMENSIONS, max_pixels=128 * 127)
    assert decode_instance(_bytes("CT_small.dcm"), max_pixels=128 * 128).pixels.shape == (1, 128, 128)


@pytest.mark.parametrize(
    ("uid", "shown"),
    [
        ("1.2.3.4.5.6", "a private or malformed transfer syntax UID (not shown)"),
        ("1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.100 (MPEG2"),  # a real syntax nothing decodes
        ("1.2.840.10008.1.2.4.94", "1.2.840.10008.1.2.4.94 (JPIP"),
    ],
)
def test_unknown_transfer_syntax_is_unsupported(uid: str, shown: str) -> None:
    ds = _dataset("CT_small.dcm")
    ds.file_meta.TransferSyntaxUID = UID(uid)
    ds.PixelData = encapsulate([ds.PixelData])  # what a compressed syntax would hold
    error = _raises(_write(ds, implicit_vr=False, little_endian=True), Reason.UNSUPPORTED_TRANSFER_SYNTAX)
    assert shown in error.detail


def test_malformed_transfer_syntax_is_not_echoed() -> None:
    ds = _dataset("CT_small.dcm")
    malformed = "1.2.840.10008.9^PLANTED"
    placeholder = "1.2.3." + "4" * (len(malformed) - 6)  # a private UID pydicom will write, same length
    ds.file_meta.TransferSyntaxUID = UID(placeholder)
    ds.PixelData = encapsulate([ds.PixelData])
    data = _write(ds, implicit_vr=False, little_endian=True).replace(placeholder.encode(), malformed.encode())
    error = _raises(data, Reason.UNSUPPORTED_TRANSFER_SYNTAX)
    assert "PLANTED" not in str(error) and "(not shown)" in error.detail


# --------------------------------------------------------------------------------------------
# nothing identifying in errors or logs


def test_errors_and_logs_carry_no_header_values(caplog: pytest.LogCaptureFixture) -> None:
    secret = "PLANTED^SECRET"
    broken: list[bytes] = []
    for change in ("absurd", "truncate", "colour", "syntax", "bits", "no_meta"):
        ds = _dataset("CT_small.dcm")
        ds.PatientName = secret
        ds.PatientID = secret
        if change == "absurd":
            ds.Rows = 60000
        elif change == "colour":
            ds.PhotometricInterpretation = "RGB"
        elif change == "syntax":
            ds.file_meta.TransferSyntaxUID = UID("1.2.3.4." + "9" * 20)
        elif change == "bits":
            ds.BitsAllocated = 12
        data = _write(ds, implicit_vr=False, little_endian=True)
        if change == "truncate":
            data = data[:-300]  # into the pixels (126 bytes of trailing padding follow them)
        if change == "no_meta":
            data = data[132 + 200 :]  # neither meta nor a plausible start: unreadable
        broken.append(data)
    ds = _dataset("CT_small.dcm")  # general path (no file meta), so its debug log runs too
    ds.PatientName, ds.Rows = secret, 60000
    del ds.file_meta
    buffer = io.BytesIO()
    ds.save_as(buffer, implicit_vr=True, little_endian=True)
    broken.append(buffer.getvalue())
    with caplog.at_level(logging.DEBUG):
        for data in broken:
            with pytest.raises(IngestError) as caught:
                decode_instance(data)
            assert "PLANTED" not in str(caught.value) and "SECRET" not in str(caught.value)
    assert "general decode path" in caplog.text  # the log ran, and said nothing identifying
    assert "PLANTED" not in caplog.text


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "emri_small_big_endian.dcm"])
def test_integer_path_is_exact_and_matches_the_float_path(name: str) -> None:
    from pydicom.data import get_testdata_file

    data = Path(str(get_testdata_file(name))).read_bytes()
    as_float = decode_instance(data).pixels
    as_int = decode_instance(data, integer_ok=True).pixels
    assert as_int.dtype in (np.int16, np.int32)
    assert np.array_equal(as_int.astype(np.float32), as_float)


@pytest.mark.parametrize(("slope", "intercept"), [(1, -1024), (2, -1024), (1, 0), (3, -3000)])
def test_int16_results_lie_inside_int16_range(slope: int, intercept: int) -> None:
    # The volume builder copies int16 slices as they are and clips only wider results: an int16
    # result must already be inside the range the caller asked for, whatever the rescale.
    rng = np.random.default_rng(5)
    values = rng.integers(0, 4096, (32, 48))
    values.flat[:2] = (0, 4095)
    ds = pydicom.dcmread(io.BytesIO(_with_pixels(values.astype(np.uint16), bits_stored=12, signed=False)))
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    lo, hi = -1024, 3071
    pixels = decode_instance(_write(ds), integer_ok=True, int16_range=(lo, hi)).pixels
    want = np.clip(values.astype(np.int64) * slope + intercept, lo, hi)
    if pixels.dtype == np.int16:
        np.testing.assert_array_equal(pixels[0], want)
    else:  # a wider result is the caller's to clip; its values are exact
        assert pixels.dtype == np.int32
        np.testing.assert_array_equal(np.clip(pixels[0], lo, hi), want)
    assert pixels.dtype == np.int16  # 12-bit stored with these rescales fits int16: the fast case
