"""The synthetic archive generator: phantoms, DICOM series, planted PHI, archive specs."""

from __future__ import annotations

import datetime as dt
import gzip
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
)

from radforge.ingest.errors import Reason, Status, status_for
from radforge.synthetic import (
    ArchiveSpec,
    PlantedPHI,
    build_sample_archive,
    build_synthetic_archive,
    build_uncompressed_ct_archive,
    ct_phantom,
    mr_phantom,
    write_dicom_series,
)
from radforge.synthetic.archive import PRIVATE_TRANSFER_SYNTAX
from radforge.synthetic.dicom import (
    WRITABLE_TRANSFER_SYNTAXES,
    EncoderUnavailableError,
    slice_geometry,
    transfer_syntax_available,
)
from radforge.synthetic.phantom import Label

PLAIN_NATIVE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian)

# --- helpers: an independent reader that trusts nothing but the geometry -------------------------


def _read_canonical(paths: list[str], spacing: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Place every pixel at its LPS position; return the (z, y, x) volume and sorted normal positions."""
    datasets = [pydicom.dcmread(p) for p in paths]
    iop = np.array(datasets[0].ImageOrientationPatient, dtype=np.float64)
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    positions, values = [], []
    for ds in datasets:
        ipp = np.array(ds.ImagePositionPatient, dtype=np.float64)
        dr, dc = (float(v) for v in ds.PixelSpacing)
        pixels = ds.pixel_array.astype(np.float64)
        if "RescaleSlope" in ds:
            pixels = pixels * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        r, c = np.meshgrid(np.arange(ds.Rows), np.arange(ds.Columns), indexing="ij")
        pos = ipp + c[..., None] * dc * row_dir + r[..., None] * dr * col_dir
        positions.append(pos.reshape(-1, 3))
        values.append(pixels.reshape(-1))
    xyz = np.concatenate(positions)
    step = np.array([spacing[2], spacing[1], spacing[0]])
    index = np.rint((xyz - xyz.min(axis=0)) / step).astype(int)
    shape = index.max(axis=0) + 1
    volume = np.full((shape[2], shape[1], shape[0]), np.nan)
    volume[index[:, 2], index[:, 1], index[:, 0]] = np.concatenate(values)
    along = np.sort(
        [float(np.dot(np.array(ds.ImagePositionPatient, dtype=np.float64), normal)) for ds in datasets]
    )
    return volume, along


def _archive_bytes(path: Path) -> bytes:
    """File bytes, with a deflated DICOM dataset inflated so its text can be searched."""
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.suffix == ".dcm" and data[128:132] == b"DICM":
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - truncated or odd files are searched as they are
            return data
        if ds.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian:
            meta_end = 132 + 12 + int(ds.file_meta.FileMetaInformationGroupLength)
            return data[:meta_end] + zlib.decompress(data[meta_end:], -15)
    return data


def _all_bytes(root: Path) -> bytes:
    chunks = [
        str(p.relative_to(root)).encode() + b"\n" + _archive_bytes(p) for p in root.rglob("*") if p.is_file()
    ]
    return b"\n".join(chunks)


# --- phantoms --------------------------------------------------------------------------------------


@pytest.mark.parametrize("factory", [ct_phantom, mr_phantom])
def test_phantom_is_deterministic_per_seed(factory) -> None:
    a = factory(shape=(10, 48, 48), seed=3)
    b = factory(shape=(10, 48, 48), seed=3)
    c = factory(shape=(10, 48, 48), seed=4)
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.array, c.array)
    assert a.array.dtype == np.float32 and a.labels.dtype == np.uint8
    np.testing.assert_array_equal(a.array, np.rint(a.array))  # whole numbers: lossless round trips


def test_ct_phantom_structure_and_hu_ranges() -> None:
    p = ct_phantom(shape=(20, 96, 96), spacing=(2.0, 0.9, 0.9), seed=1, lesion=True)
    assert p.modality == "CT" and p.shape == (20, 96, 96) and p.spacing == (2.0, 0.9, 0.9)
    # air-only slices at both ends of z, and air along the edges of the field of view
    for z in (0, 1, -2, -1):
        assert (p.labels[z] == Label.BACKGROUND).all()
        assert p.array[z].max() < -900
    assert (p.labels[:, 0, :] == 0).all() and (p.labels[:, :, -1] == 0).all()
    assert set(np.unique(p.labels)) == {int(v) for v in Label}

    def hu(label: Label) -> np.ndarray:
        return p.array[p.labels == label]

    assert abs(hu(Label.BACKGROUND).mean() + 1000) < 5
    assert -150 < hu(Label.BODY).min() and hu(Label.BODY).max() < 100
    assert 400 <= np.median(hu(Label.BONE)) <= 1200 and hu(Label.BONE).min() > 350
    assert abs(hu(Label.LUNG).mean() + 850) < 10
    assert abs(hu(Label.LIVER).mean() - 65) < 5
    assert abs(hu(Label.KIDNEY).mean() - 160) < 5
    assert abs(hu(Label.LESION).mean() - hu(Label.LIVER).mean()) > 40  # contrasting lesion
    # lungs sit in the upper (superior, high z) part, kidneys below them
    lung_z = np.nonzero((p.labels == Label.LUNG).any(axis=(1, 2)))[0]
    kidney_z = np.nonzero((p.labels == Label.KIDNEY).any(axis=(1, 2)))[0]
    assert lung_z.mean() > kidney_z.mean()
    # liver on the patient's right: x decreases toward the right
    liver_x = np.nonzero(p.labels == Label.LIVER)[2].mean()
    assert liver_x < 48
    # spine posterior: y increases toward posterior
    bone_y = np.nonzero(p.labels[10] == Label.BONE)[0]
    body_y = np.nonzero(p.labels[10] > 0)[0]
    assert np.median(bone_y) > body_y.mean()


def test_lesion_presence_and_volume() -> None:
    spacing = (2.5, 0.8, 0.8)
    with_lesion = ct_phantom(shape=(16, 64, 64), spacing=spacing, seed=5, lesion=True)
    count = int((with_lesion.labels == Label.LESION).sum())
    assert with_lesion.has_lesion and count > 0
    assert with_lesion.lesion_volume_ml == pytest.approx(count * 2.5 * 0.8 * 0.8 / 1000)
    without = ct_phantom(shape=(16, 64, 64), spacing=spacing, seed=5, lesion=False)
    assert not without.has_lesion and without.lesion_volume_ml == 0.0
    assert not (without.labels == Label.LESION).any()
    drawn = {ct_phantom(shape=(8, 32, 32), seed=s).has_lesion for s in range(12)}
    assert drawn == {True, False}  # lesion=None: decided by the seed, both outcomes occur


def test_body_offset_moves_the_anatomy_into_a_corner() -> None:
    centred = ct_phantom(shape=(8, 64, 64), seed=2, lesion=False)
    corner = ct_phantom(shape=(8, 64, 64), seed=2, lesion=False, body_offset=(0.25, 0.25))
    cy0, cx0 = np.argwhere(centred.labels[4] > 0).mean(axis=0)
    cy1, cx1 = np.argwhere(corner.labels[4] > 0).mean(axis=0)
    assert cy1 - cy0 > 10 and cx1 - cx0 > 10


def test_mr_phantom_intensities() -> None:
    p = mr_phantom(shape=(16, 64, 64), seed=2, lesion=True)
    assert p.modality == "MR" and p.array.min() >= 0
    background = p.array[p.labels == Label.BACKGROUND]
    assert 0 < background.mean() < 40  # Rician noise floor, not exactly zero
    assert p.array[p.labels == Label.BODY].max() > 700  # bright fat
    assert p.array[p.labels == Label.LIVER].mean() > p.array[p.labels == Label.BONE].mean()
    assert p.array[p.labels == Label.LUNG].mean() < 100


def test_phantoms_import_without_pydicom() -> None:
    # the trainer's tests use the phantoms on machines where pydicom and nibabel are absent
    code = (
        "import sys; sys.modules['pydicom'] = None; sys.modules['nibabel'] = None\n"
        "from radforge.synthetic import ct_phantom\n"
        "from radforge.synthetic.phantom import mr_phantom\n"
        "print(ct_phantom(shape=(4, 16, 16)).shape, mr_phantom(shape=(4, 16, 16)).modality)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "(4, 16, 16) MR"


def test_phantom_is_fast() -> None:
    start = time.perf_counter()
    ct_phantom(shape=(64, 128, 128), seed=0)
    assert time.perf_counter() - start < 1.0


# --- DICOM series ------------------------------------------------------------------------------------


@pytest.mark.parametrize("transfer_syntax", WRITABLE_TRANSFER_SYNTAXES, ids=lambda t: pydicom.uid.UID(t).name)
def test_series_round_trip_per_transfer_syntax(tmp_path: Path, transfer_syntax: str) -> None:
    phantom = ct_phantom(shape=(6, 48, 40), spacing=(3.0, 0.7, 0.75), seed=4, lesion=True)
    if not transfer_syntax_available(transfer_syntax):
        with pytest.raises(EncoderUnavailableError, match="no encoder installed"):
            write_dicom_series(phantom, tmp_path, transfer_syntax=transfer_syntax)
        assert not list(tmp_path.iterdir())  # refused before writing anything
        return
    info = write_dicom_series(phantom, tmp_path / "s", transfer_syntax=transfer_syntax)
    assert info.n_slices == 6 and len(info.paths) == 6 and info.transfer_syntax == transfer_syntax
    ds = pydicom.dcmread(info.paths[0])
    assert ds.file_meta.TransferSyntaxUID == transfer_syntax
    assert ds.SOPClassUID == CTImageStorage and ds.Modality == "CT"
    assert ds.BitsAllocated == 16 and ds.PhotometricInterpretation == "MONOCHROME2"
    assert (ds.Rows, ds.Columns) == (48, 40)
    assert pydicom.uid.UID(ds.SOPInstanceUID).is_valid and pydicom.uid.UID(ds.SeriesInstanceUID).is_valid
    volume, along = _read_canonical(info.paths, phantom.spacing)
    np.testing.assert_array_equal(volume, phantom.array)  # lossless, HU through the rescale
    np.testing.assert_allclose(np.diff(along), 3.0, atol=1e-3)


@pytest.mark.parametrize("orientation", ["axial", "coronal", "sagittal"])
@pytest.mark.parametrize("factory", [ct_phantom, mr_phantom])
def test_orientation_geometry_recovers_the_volume(tmp_path: Path, orientation: str, factory) -> None:
    phantom = factory(shape=(5, 24, 20), spacing=(2.5, 0.8, 0.9), seed=6)
    info = write_dicom_series(phantom, tmp_path, orientation=orientation, seed=1)
    expected_n = {"axial": 5, "coronal": 24, "sagittal": 20}[orientation]
    assert info.n_slices == expected_n
    ds = pydicom.dcmread(info.paths[0])
    iop = [float(v) for v in ds.ImageOrientationPatient]
    assert (
        iop
        == {
            "axial": [1, 0, 0, 0, 1, 0],
            "coronal": [1, 0, 0, 0, 0, -1],
            "sagittal": [0, 1, 0, 0, 0, -1],
        }[orientation]
    )
    if phantom.modality == "MR":
        assert ds.SOPClassUID == MRImageStorage and ds.PixelRepresentation == 0 and "RescaleSlope" not in ds
    volume, along = _read_canonical(info.paths, phantom.spacing)
    np.testing.assert_array_equal(volume, phantom.array)
    slice_spacing = {"axial": 2.5, "coronal": 0.8, "sagittal": 0.9}[orientation]
    np.testing.assert_allclose(np.diff(along), slice_spacing, atol=1e-3)
    assert float(ds.SpacingBetweenSlices) == pytest.approx(slice_spacing)


@pytest.mark.parametrize("transfer_syntax", PLAIN_NATIVE, ids=lambda t: pydicom.uid.UID(t).name)
def test_fast_native_writer_writes_what_pydicom_writes(tmp_path: Path, transfer_syntax: str) -> None:
    phantom = mr_phantom(shape=(4, 20, 24), seed=3)

    def write(folder: str, extra: Callable[[pydicom.Dataset, int], None] | None) -> list[str]:
        info = write_dicom_series(
            phantom, tmp_path / folder, transfer_syntax=transfer_syntax, series_uid="1.2.3.4",
            study_uid="1.2.3.5", phi=PlantedPHI.from_seed(1), seed=2, extra=extra,
        )  # fmt: skip
        return info.paths

    # any ``extra`` hook takes pydicom's own Dataset.save_as path
    fast, slow = write("fast", None), write("slow", lambda ds, k: None)
    for a, b in zip(fast, slow, strict=True):
        assert Path(a).read_bytes() == Path(b).read_bytes()


def test_default_uids_follow_the_content(tmp_path: Path) -> None:
    phantom = ct_phantom(shape=(4, 16, 16), seed=1)
    a = write_dicom_series(phantom, tmp_path / "a", seed=5)
    b = write_dicom_series(phantom, tmp_path / "b", seed=5)
    c = write_dicom_series(phantom, tmp_path / "c", seed=6)
    d = write_dicom_series(ct_phantom(shape=(4, 16, 16), seed=2), tmp_path / "d", seed=5)
    assert (a.study_uid, a.series_uid, a.sop_instance_uids) == (
        b.study_uid,
        b.series_uid,
        b.sop_instance_uids,
    )
    assert len({a.series_uid, c.series_uid, d.series_uid}) == 3 and a.study_uid != c.study_uid


def test_shuffled_names_and_instance_numbers_carry_no_order(tmp_path: Path) -> None:
    phantom = ct_phantom(shape=(12, 32, 32), seed=0)
    info = write_dicom_series(phantom, tmp_path, shuffle_names=True, seed=3)
    z = [float(pydicom.dcmread(p).ImagePositionPatient[2]) for p in info.paths]
    assert z == sorted(z)  # info.paths is in geometric order...
    names = [Path(p).name for p in info.paths]
    assert names != sorted(names)  # ...which neither the names
    numbers = [int(pydicom.dcmread(p).InstanceNumber) for p in info.paths]
    assert sorted(numbers) == list(range(1, 13)) and numbers != sorted(numbers)  # nor InstanceNumber give
    plain = write_dicom_series(phantom, tmp_path / "plain", shuffle_names=False)
    assert [Path(p).name for p in plain.paths] == [f"IM{k:05d}.dcm" for k in range(1, 13)]


@pytest.mark.parametrize(
    ("rescale", "signed_expected"), [((1.0, -1024.0), 0), ((1.0, 0.0), 1), ((0.5, -1024.0), 0)]
)
def test_ct_rescale_and_pixel_representation(tmp_path: Path, rescale, signed_expected: int) -> None:
    phantom = ct_phantom(shape=(4, 32, 32), seed=2)
    info = write_dicom_series(phantom, tmp_path, rescale=rescale)
    ds = pydicom.dcmread(info.paths[2])
    assert ds.PixelRepresentation == signed_expected
    assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == rescale
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(hu, phantom.array[2])


def test_bad_arguments_are_named(tmp_path: Path) -> None:
    phantom = ct_phantom(shape=(4, 16, 16), seed=0)
    with pytest.raises(ValueError, match="orientation"):
        write_dicom_series(phantom, tmp_path, orientation="oblique")
    with pytest.raises(ValueError, match="transfer syntax"):
        write_dicom_series(phantom, tmp_path, transfer_syntax="1.2.3.4")
    with pytest.raises(ValueError, match="JPEG 2000 needs images of at least 32"):
        write_dicom_series(phantom, tmp_path, transfer_syntax=pydicom.uid.JPEG2000Lossless)


# --- planted PHI -------------------------------------------------------------------------------------


def test_planted_markers_are_in_the_written_files(tmp_path: Path) -> None:
    phi = PlantedPHI.from_seed(11)
    assert PlantedPHI.from_seed(11).markers() == phi.markers()  # deterministic
    assert phi.family_name.startswith("PHINAME") and len(phi.family_name) == 15
    for value in (phi.birth_date, phi.study_date):
        dt.datetime.strptime(value, "%Y%m%d")  # valid DICOM dates
    info = write_dicom_series(ct_phantom(shape=(4, 32, 32), seed=1), tmp_path, phi=phi)
    # every UID written is a marker too
    ds = pydicom.dcmread(info.paths[0])
    markers = phi.markers()
    for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.FrameOfReferenceUID):
        assert uid in markers
    blob = b"".join(Path(p).read_bytes() for p in info.paths)
    missing = [m for m in markers if m.encode() not in blob]
    assert not missing
    # the hiding places de-identification must clean
    assert ds.RequestAttributesSequence[0].RequestedProcedureID == phi.requested_procedure_id
    assert ds.OtherPatientIDsSequence[0].PatientID == phi.sequence_patient_id
    block = ds.private_block(0x0019, "RADFORGE SYNTHETIC PHI")
    assert block[0x10].value == phi.private_value
    assert str(block[0x11].value[0].PatientName) == phi.patient_name
    assert ds.PatientAge == f"{phi.age_years:03d}Y" and ds.PatientSex in ("F", "M")


# --- archives ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> ArchiveSpec:
    return build_synthetic_archive(str(tmp_path_factory.mktemp("synthetic")), size=32, n_slices=6, seed=7)


def test_synthetic_archive_spec_lists_every_object(synthetic: ArchiveSpec) -> None:
    root = Path(synthetic.root)
    on_disk = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert on_disk == sorted(synthetic.files())
    cases = [e.case for e in synthetic.series]
    assert len(cases) == len(set(cases))
    assert set(cases) >= {
        "ct_shuffled", "ct_localizer", "ct_shared_folder", "mr", "ct_coronal", "mr_sagittal", "nifti_ct",
        "sr_report", "secondary_capture", "truncated", "zero_byte", "not_dicom", "no_pixel_data",
        "unknown_transfer_syntax", "duplicate_positions", "absurd_dimensions", "burned_in_annotation",
        "nifti_nan", "odd_unicode", "odd_long_names", "odd_nested_deep",
        "mr_mosaic_csa_v0", "mr_mosaic_csa_v1", "mr_mosaic_no_csa_v0", "mr_mosaic_no_csa_v1",
        "mosaic_undecodable",
    }  # fmt: skip
    for entry in synthetic.series:
        if entry.ingested:
            assert entry.shape is not None and entry.phantom is not None
        else:
            assert Reason(entry.reason or "")  # a reason the ingest knows
        for f in entry.files:
            assert f.startswith(entry.folder + "/")
    assert (
        status_for(Reason(synthetic.case("zero_byte").reason or "")) == Status.QUARANTINED
        and synthetic.case("zero_byte").reason == "unreadable"
    )
    expected_reasons = {
        "ct_localizer": "localizer", "sr_report": "not_image", "secondary_capture": "secondary_capture",
        "truncated": "decode_failed", "not_dicom": "unreadable", "no_pixel_data": "no_pixel_data",
        "unknown_transfer_syntax": "unsupported_transfer_syntax",
        "duplicate_positions": "duplicate_positions",
        "absurd_dimensions": "absurd_dimensions", "burned_in_annotation": "burned_in_annotation",
        "nifti_nan": "non_finite_values",
    }  # fmt: skip
    assert {c: synthetic.case(c).reason for c in expected_reasons} == expected_reasons
    # odd names are what they claim to be
    assert "日本" in synthetic.case("odd_unicode").folder and " " in synthetic.case("odd_unicode").files[0]
    assert max(len(Path(f).name) for f in synthetic.case("odd_long_names").files) >= 200
    assert synthetic.case("odd_nested_deep").folder.count("/") >= 12


def test_synthetic_archive_objects_match_their_entries(synthetic: ArchiveSpec) -> None:
    root = Path(synthetic.root)

    def headers(case: str) -> list[pydicom.Dataset]:
        return [pydicom.dcmread(root / f, stop_before_pixels=True) for f in synthetic.case(case).files]

    for entry in synthetic.series:
        if entry.transfer_syntax is None or entry.reason in ("unreadable",):
            continue
        for ds in [pydicom.dcmread(root / f, stop_before_pixels=True) for f in entry.files]:
            assert (ds.StudyInstanceUID, ds.SeriesInstanceUID) == (entry.study_uid, entry.series_uid)
            assert ds.file_meta.TransferSyntaxUID == entry.transfer_syntax
    # the localizer hides in the CT's own series and folder, with another orientation
    ct, loc = synthetic.case("ct_shuffled"), synthetic.case("ct_localizer")
    assert (loc.series_uid, loc.folder) == (ct.series_uid, ct.folder)
    (scout,) = headers("ct_localizer")
    assert "LOCALIZER" in scout.ImageType
    assert [float(v) for v in scout.ImageOrientationPatient] != [1, 0, 0, 0, 1, 0]
    # two series share one folder (and study); one file of the second is a copy
    shared = synthetic.case("ct_shared_folder")
    assert (
        shared.folder == ct.folder and shared.study_uid == ct.study_uid and shared.series_uid != ct.series_uid
    )
    sops = [ds.SOPInstanceUID for ds in headers("ct_shared_folder")]
    assert len(sops) == shared.n_slices + 1 and len(set(sops)) == shared.n_slices
    # bad inputs are bad in the stated way
    positions = [tuple(ds.ImagePositionPatient) for ds in headers("duplicate_positions")]
    assert len(set(positions)) == len(positions) - 1
    assert len({ds.SOPInstanceUID for ds in headers("duplicate_positions")}) == len(positions)
    assert all(ds.Rows == 60000 and ds.Columns == 60000 for ds in headers("absurd_dimensions"))
    assert all(
        len(pydicom.dcmread(root / f).PixelData) < 10_000 for f in synthetic.case("absurd_dimensions").files
    )
    assert all("PixelData" not in pydicom.dcmread(root / f) for f in synthetic.case("no_pixel_data").files)
    assert all(
        ds.file_meta.TransferSyntaxUID == PRIVATE_TRANSFER_SYNTAX for ds in headers("unknown_transfer_syntax")
    )
    assert all(ds.BurnedInAnnotation == "YES" for ds in headers("burned_in_annotation"))
    # mosaics: one image per volume, tiles of the volume's slices, a CSA header only where stated
    for case in ("mr_mosaic_csa_v0", "mr_mosaic_no_csa_v1", "mosaic_undecodable"):
        (ds,) = headers(case)
        entry = synthetic.case(case)
        has_csa = ds.get((0x0029, 0x0010)) is not None
        assert "MOSAIC" in ds.ImageType and has_csa == case.startswith("mr_mosaic_csa")
        assert ds.Rows > entry.shape[1] and ds.Columns > entry.shape[2]
    assert all(
        ds.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage for ds in headers("secondary_capture")
    )
    assert all(ds.Modality == "SR" and "PixelData" not in ds for ds in headers("sr_report"))
    decode_errors = 0
    for f in synthetic.case("truncated").files:
        ds = pydicom.dcmread(root / f, stop_before_pixels=True)  # header intact
        try:
            pydicom.dcmread(root / f).pixel_array  # noqa: B018
        except Exception:  # noqa: BLE001
            decode_errors += 1
    assert ds.Rows == 32 and decode_errors == 1
    assert (root / synthetic.case("zero_byte").files[0]).stat().st_size == 0
    with pytest.raises(pydicom.errors.InvalidDicomError):
        pydicom.dcmread(root / synthetic.case("not_dicom").files[0])
    nan_image = nib.load(root / synthetic.case("nifti_nan").files[0])
    assert isinstance(nan_image, nib.Nifti1Image) and np.isnan(nan_image.get_fdata()).any()


def test_synthetic_nifti_affine_matches_the_dicom_geometry(synthetic: ArchiveSpec) -> None:
    entry = synthetic.case("nifti_ct")
    assert entry.phantom is not None
    image = nib.load(Path(synthetic.root) / entry.files[0])
    assert isinstance(image, nib.Nifti1Image)
    data = np.asanyarray(image.dataobj)
    geometry = slice_geometry(entry.phantom.shape, entry.phantom.spacing)  # default origin, as DICOM
    nz, ny, nx = entry.phantom.shape
    z, y, x = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    ox, oy, oz = geometry.positions[0]
    sz, sy, sx = entry.phantom.spacing
    lps = np.stack([ox + x * sx, oy + y * sy, oz + z * sz], axis=-1)
    ras = lps * np.array([-1.0, -1.0, 1.0])
    ijk = np.rint(nib.affines.apply_affine(np.linalg.inv(image.affine), ras)).astype(int)
    np.testing.assert_array_equal(data[ijk[..., 0], ijk[..., 1], ijk[..., 2]], entry.phantom.array)


def test_synthetic_archive_plants_every_marker(synthetic: ArchiveSpec) -> None:
    blob = _all_bytes(Path(synthetic.root))
    markers = synthetic.markers()
    assert len(markers) > 100
    assert [m for m in markers if m.encode() not in blob] == []
    for entry in synthetic.series:  # hospitals name folders after patients
        if entry.source == "synthetic" and not entry.folder.startswith("nifti"):
            assert entry.folder.startswith("PHINAME")


def test_synthetic_archive_is_deterministic(tmp_path: Path, synthetic: ArchiveSpec) -> None:
    again = build_synthetic_archive(str(tmp_path), size=32, n_slices=6, seed=7)
    assert sorted(again.files()) == sorted(synthetic.files())
    assert again.markers() == synthetic.markers()
    assert [(e.case, e.series_uid) for e in again.series] == [
        (e.case, e.series_uid) for e in synthetic.series
    ]


def test_good_only_archive(tmp_path: Path) -> None:
    spec = build_synthetic_archive(
        str(tmp_path),
        n_ct=3,
        n_mr=2,
        size=16,
        n_slices=4,
        include_bad=False,
        include_non_image=False,
        include_vendor=False,
    )
    assert [(e.case, e.reason) for e in spec.series if not e.ingested] == [("ct_localizer", "localizer")]
    assert len([e for e in spec.series if e.modality == "MR"]) == 2 + 1  # two MR plus the sagittal
    assert all(e.transfer_syntax != pydicom.uid.JPEG2000Lossless for e in spec.series)  # 16 px: no J2K
    with pytest.raises(ValueError, match="n_slices must be >= 3"):
        build_synthetic_archive(str(tmp_path / "x"), n_slices=2)
    with pytest.raises(ValueError, match="cannot write transfer syntax"):
        build_synthetic_archive(str(tmp_path / "x"), transfer_syntaxes=["1.2.3.4"])


def test_sample_archive(tmp_path: Path) -> None:
    spec = build_sample_archive(str(tmp_path))
    root = Path(spec.root)
    on_disk = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert on_disk == sorted(spec.files())
    assert sum((root / f).stat().st_size for f in on_disk) < 40 * 2**20
    sources = {e.source for e in spec.series}
    assert sources == {"synthetic", "pydicom", "pydicom-data", "nibabel", "nilearn"}
    assert spec.case("real_CT_small").ingested and spec.case("real_CT_small").modality == "CT"
    assert spec.case("real_MR_truncated").reason == "decode_failed"
    assert spec.case("real_rtplan").reason == "not_image" and spec.case("real_test-SR").reason == "not_image"
    assert spec.case("real_OBXXXX1A_rle").reason == "unsupported_modality"
    assert spec.case("real_example4d").reason == "inconsistent_geometry"
    assert spec.case("real_CT5N").n_slices == 5 and spec.case("real_CT5N").ingested
    assert spec.case("real_CT5N").shape == (5, 16, 16)
    assert spec.case("real_eCT_Supplemental").shape == (2, 512, 512)  # enhanced CT: 2 frames
    mni = spec.case("real_mni152")
    assert mni.ingested and mni.modality == "MR" and mni.shape == (189, 233, 197)
    assert spec.case("secondary_capture").folder.startswith("synthetic/")
    blob = _all_bytes(root / "synthetic")
    assert [m for m in spec.markers() if m.encode() not in blob] == []


def test_uncompressed_ct_archive(tmp_path: Path) -> None:
    spec = build_uncompressed_ct_archive(str(tmp_path), n_series=3, n_slices=4, size=64, seed=1)
    assert len(spec.series) == 3 and len(spec.files()) == 12
    assert len({e.series_uid for e in spec.series}) == 3
    for entry in spec.series:
        assert entry.ingested and entry.shape == (4, 64, 64)
        ds = pydicom.dcmread(Path(spec.root) / entry.files[0])
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert (
            ds.pixel_array.dtype == np.int16
            and ds.PixelRepresentation == 1
            and (ds.Rows, ds.Columns) == (64, 64)
        )
        assert float(ds.RescaleIntercept) == -1024.0
