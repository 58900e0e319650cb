"""The ``make demo`` sample archive: real files nobody here wrote, plus a synthetic export.

Real DICOM files come from pydicom's test files and pydicom-data, NIfTI files from nibabel's test
data and nilearn's MNI152 template; ``build_synthetic_archive`` adds the synthetic part with planted
PHI. The expected outcome of each real file is computed from its header.

Outcome rules assumed for real files (``_classify_dicom``), in this order: not a readable DICOM
object with a SOP Class -> quarantined/unreadable; Secondary Capture SOP classes ->
secondary_capture; non-image SOP classes (SR, RT, SEG, waveforms, PR, KO, ...) -> not_image;
modality other than CT/MR -> unsupported_modality; ImageType LOCALIZER/SCOUT -> localizer;
BurnedInAnnotation YES -> burned_in_annotation; header readable but the object cut off in its pixel
data -> decode_failed; no pixel data -> no_pixel_data; pixel data that pydicom cannot decode ->
decode_failed; no orientation and positions (top level or functional groups) -> inconsistent_geometry
(the ingest decodes before it assembles geometry). A NIfTI is CT when at least 10% of its voxels
are <= -900 (air in HU), MR otherwise; a 4D NIfTI is quarantined with reason inconsistent_geometry.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from radforge.synthetic.archive import ArchiveSpec, ArchiveWriter, ExpectedSeries, build_synthetic_archive

__all__ = ["build_sample_archive"]

# (file name for pydicom.data.get_testdata_file, why it is in the sample)
# emri_small_jpeg_2k_lossless_too_short.dcm is left out: it is the same SOP instance as
# emri_small_RLE.dcm, and the ingest uses one copy of an instance (the test expects one entry per file).
_REAL_DICOM = (
    ("CT_small.dcm", "CT slice, explicit VR little endian"),
    ("693_J2KR.dcm", "CT 512x512, JPEG 2000 lossless"),
    ("explicit_VR-UN.dcm", "CT with UN value representations and rows running anterior, JPEG 2000"),
    ("eCT_Supplemental.dcm", "enhanced CT, 2 frames, geometry in functional groups"),
    ("MR-SIEMENS-DICOM-WithOverlays.dcm", "MR 484x484 with overlay planes, ImageType DERIVED/SECONDARY/MPR"),
    ("MR_truncated.dcm", "MR whose pixel data is cut short (deliberately corrupt)"),
    ("emri_small_RLE.dcm", "enhanced MR, 10 frames without any geometry, RLE"),
    ("rtplan.dcm", "RT plan"),
    ("test-SR.dcm", "comprehensive SR"),
    ("waveform_ecg.dcm", "ECG waveform"),
    ("liver_1frame.dcm", "segmentation"),
    ("OBXXXX1A_rle.dcm", "ultrasound, RLE"),
)
# real multi-file series from pydicom's DICOMDIR test tree (file names without extension)
_REAL_DICOM_SERIES = (
    ("dicomdirtests/98892001/CT5N", "CT series of 5 slices, 16x16"),
    ("dicomdirtests/77654033/CR1", "computed radiography"),
)
_REAL_NIFTI = (
    ("anatomical.nii", "big-endian int16 LAS"),
    ("reoriented_anat_moved.nii", "float32 RAS"),
    ("example4d.nii.gz", "4D (two volumes)"),
)
_MNI152_FILE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
_NON_IMAGE_SOP_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.88.",  # structured reports (incl. dose reports), key objects
    "1.2.840.10008.5.1.4.1.1.481.",  # RT plan, structure set, dose, ...
    "1.2.840.10008.5.1.4.1.1.66",  # raw data, spatial registration, segmentation, surface
    "1.2.840.10008.5.1.4.1.1.9.",  # waveforms (ECG, ...)
    "1.2.840.10008.5.1.4.1.1.11.",  # presentation states
    "1.2.840.10008.5.1.4.1.1.104.",  # encapsulated documents
)
_SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"


def _has_geometry(ds: Dataset) -> bool:
    if "ImageOrientationPatient" in ds and "ImagePositionPatient" in ds:
        return True
    frames = ds.get("PerFrameFunctionalGroupsSequence")
    shared = ds.get("SharedFunctionalGroupsSequence")
    if not frames:
        return False

    def has(item: Dataset | None, seq: str) -> bool:
        return item is not None and seq in item

    shared_item = shared[0] if shared else None
    return all(
        (has(f, "PlaneOrientationSequence") or has(shared_item, "PlaneOrientationSequence"))
        and (has(f, "PlanePositionSequence") or has(shared_item, "PlanePositionSequence"))
        for f in frames
    )


def _classify_dicom(path: Path) -> tuple[str | None, Dataset | None]:
    """Return the expected reason for a real DICOM object (None: ingested), by the module's rules."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pixels_parsed = True
        try:
            ds = pydicom.dcmread(path)
        except Exception:  # noqa: BLE001 - the pixel data may be what is broken
            pixels_parsed = False
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:  # noqa: BLE001 - the header itself is broken: unreadable
                return "unreadable", None
        if not ds.get("SOPClassUID"):
            # pydicom can return an empty dataset for an object cut off in its pixel data.
            try:
                header = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:  # noqa: BLE001 - the header itself is broken: unreadable
                header = None
            if header is not None and header.get("SOPClassUID"):
                ds, pixels_parsed = header, False
        sop_class = str(ds.get("SOPClassUID", ""))
        if not sop_class or "SOPInstanceUID" not in ds:
            return "unreadable", None
        if sop_class.startswith(_SECONDARY_CAPTURE_PREFIX):
            return "secondary_capture", ds
        if sop_class.startswith(_NON_IMAGE_SOP_PREFIXES):
            return "not_image", ds
        if ds.get("Modality") not in ("CT", "MR"):
            return "unsupported_modality", ds
        if {"LOCALIZER", "SCOUT"} & {str(v).upper() for v in ds.get("ImageType", [])}:
            return "localizer", ds
        if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
            return "burned_in_annotation", ds
        if not pixels_parsed:
            return "decode_failed", ds
        if "PixelData" not in ds:
            return "no_pixel_data", ds
        try:
            ds.pixel_array  # noqa: B018 - decoding is the check
        except Exception:  # noqa: BLE001 - whatever the decoder raises, the pixels are unusable
            return "decode_failed", ds
        if not _has_geometry(ds):
            return "inconsistent_geometry", ds
    return None, ds


def _n_frames(ds: Dataset | None) -> int:
    if ds is None:
        return 0
    try:
        return max(int(ds.get("NumberOfFrames", 1) or 1), 1)
    except (TypeError, ValueError):
        return 1


def _real_dicom_entry(b: ArchiveWriter, case: str, files: list[Path], source: str) -> ExpectedSeries:
    """Return one entry for a real object or series (all files of one series, one outcome)."""
    outcomes = [_classify_dicom(f) for f in files]
    reasons = {r for r, _ in outcomes}
    reason = next(iter(reasons)) if len(reasons) == 1 else "decode_failed"
    ds = outcomes[0][1]
    n_slices = sum(_n_frames(d) for _, d in outcomes)
    ts = (
        str(ds.file_meta.TransferSyntaxUID)
        if ds is not None and "TransferSyntaxUID" in ds.file_meta
        else None
    )
    return ExpectedSeries(
        folder=b.rel(files[0].parent),
        modality=str(ds.Modality) if ds is not None and "Modality" in ds else None,
        n_slices=n_slices,
        reason=reason,
        transfer_syntax=ts,
        study_uid=str(ds.StudyInstanceUID) if ds is not None and "StudyInstanceUID" in ds else None,
        series_uid=str(ds.SeriesInstanceUID) if ds is not None and "SeriesInstanceUID" in ds else None,
        case=case,
        files=[b.rel(f) for f in files],
        shape=_canonical_shape(ds, n_slices) if reason is None and ds is not None else None,
        source=source,
    )


def _canonical_shape(ds: Dataset, n_slices: int) -> tuple[int, int, int] | None:
    """Return the (z, y, x) shape of ``n_slices`` images of ``ds``'s orientation, reoriented to LPS."""
    orientation = ds.get("ImageOrientationPatient")
    if orientation is None and "SharedFunctionalGroupsSequence" in ds:
        shared = ds.SharedFunctionalGroupsSequence[0]
        if "PlaneOrientationSequence" in shared:
            orientation = shared.PlaneOrientationSequence[0].ImageOrientationPatient
    if orientation is None:
        return None
    iop = np.array([float(v) for v in orientation])
    row_axis, col_axis = int(np.argmax(np.abs(iop[:3]))), int(np.argmax(np.abs(iop[3:])))
    if row_axis == col_axis:
        return None
    sizes = [0, 0, 0]  # along LPS x, y, z
    sizes[row_axis], sizes[col_axis] = int(ds.Columns), int(ds.Rows)
    sizes[3 - row_axis - col_axis] = n_slices
    return sizes[2], sizes[1], sizes[0]


def _nifti_entry(b: ArchiveWriter, case: str, path: Path, source: str) -> ExpectedSeries:
    """Return the entry of a real NIfTI: canonical shape from its affine, modality from its values."""
    import nibabel as nib

    image = nib.load(str(path))
    assert isinstance(image, nib.Nifti1Image | nib.Nifti2Image)
    data = np.asanyarray(image.dataobj)
    reason: str | None = None
    if data.ndim > 3 and int(np.prod(data.shape[3:])) > 1:
        reason = "inconsistent_geometry"
    elif not np.isfinite(data).all():
        reason = "non_finite_values"
    canonical = nib.as_closest_canonical(image)  # RAS+: (x, y, z) sizes
    nx, ny, nz = (int(n) for n in canonical.shape[:3])
    zooms = canonical.header.get_zooms()[:3]
    extra = int(np.prod(data.shape[3:])) if data.ndim > 3 else 1
    modality = "CT" if np.mean(data <= -900) >= 0.1 else "MR"
    return ExpectedSeries(
        folder=b.rel(path.parent),
        modality=modality,
        n_slices=nz * extra,
        reason=reason,
        transfer_syntax=None,
        study_uid=None,
        series_uid=None,
        case=case,
        files=[b.rel(path)],
        shape=(nz, ny, nx) if reason is None else None,
        spacing=(float(zooms[2]), float(zooms[1]), float(zooms[0])) if reason is None else None,
        source=source,
    )


def _stem(name: str) -> str:
    return name.removesuffix(".gz").removesuffix(".nii").removesuffix(".dcm")


def build_sample_archive(dest: str, *, seed: int = 0) -> ArchiveSpec:
    """Assemble the ``make demo`` archive in ``dest``: real files plus a synthetic export with planted PHI.

    ``real/`` holds DICOM files from pydicom and pydicom-data (CT, MR, enhanced multi-frame, several
    transfer syntaxes, deliberately corrupt files, SR, RT plan, ECG, SEG, US, CR, a 5-slice series
    with extension-less names), NIfTI files shipped with nibabel (a 4D one included) and nilearn's
    MNI152 T1 template. ``synthetic/`` is :func:`build_synthetic_archive` at 96x96, 16 slices. The
    expected outcome of each real file is computed from its header (module docstring rules).
    About 10 MB.
    """
    from pydicom.data import get_testdata_file

    root = Path(dest)
    root.mkdir(parents=True, exist_ok=True)
    spec = build_synthetic_archive(str(root / "synthetic"), size=96, n_slices=16, seed=seed)
    for entry in spec.series:
        entry.folder = f"synthetic/{entry.folder}"
        entry.files = [f"synthetic/{f}" for f in entry.files]
    b = ArchiveWriter(root, seed=seed, transfer_syntaxes=())
    b.entries, b.phi = spec.series, spec.phi

    for name, _why in _REAL_DICOM:
        src = Path(str(get_testdata_file(name)))
        source = "pydicom-data" if "data_store" in src.parts else "pydicom"
        target = root / "real" / "dicom" / _stem(name) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
        b.entries.append(_real_dicom_entry(b, f"real_{_stem(name)}", [target], source))

    test_files = Path(pydicom.data.__file__).parent / "test_files"
    for rel, _why in _REAL_DICOM_SERIES:
        src_folder = test_files / rel
        target_folder = root / "real" / "dicom" / src_folder.name
        target_folder.mkdir(parents=True, exist_ok=True)
        copies = []
        for src in sorted(src_folder.iterdir()):
            shutil.copyfile(src, target_folder / src.name)
            copies.append(target_folder / src.name)
        b.entries.append(_real_dicom_entry(b, f"real_{src_folder.name}", copies, "pydicom"))

    import nibabel as nib

    nib_data = Path(nib.__file__).parent / "tests" / "data"
    for name, _why in _REAL_NIFTI:
        target = root / "real" / "nifti" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(nib_data / name, target)
        b.entries.append(_nifti_entry(b, f"real_{_stem(name)}", target, "nibabel"))

    target = root / "real" / "nifti" / "mni152_t1.nii.gz"
    _save_mni152(target)
    b.entries.append(_nifti_entry(b, "real_mni152", target, "nilearn"))
    return ArchiveSpec(root=str(root), series=b.entries, phi=b.phi)


def _save_mni152(target: Path) -> None:
    """Save nilearn's MNI152 2009a T1 template as shipped (uint8), else as its loader returns it."""
    import importlib.util

    spec = importlib.util.find_spec("nilearn")  # locating the file avoids importing nilearn (seconds)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    target.parent.mkdir(parents=True, exist_ok=True)
    for location in locations:
        shipped = Path(location) / "datasets" / "data" / _MNI152_FILE
        if shipped.exists():
            shutil.copyfile(shipped, target)
            return
    import nibabel as nib
    import nilearn.datasets

    nib.save(nilearn.datasets.load_mni152_template(), str(target))
