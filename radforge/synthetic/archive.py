"""Synthetic and sample archives, with the outcome every object in them must get.

``build_synthetic_archive`` writes a small hospital-like export (patient-named folders, several
series per folder, shuffled names, a localizer mixed into a series, coronal and sagittal
acquisitions, NIfTI) plus every kind of bad input the ingest job must survive, and returns an
``ArchiveSpec`` listing each object's expected manifest entry. ``build_uncompressed_ct_archive``
writes 512x512 CT series for benchmarks. ``radforge.synthetic.sample.build_sample_archive`` adds real
files nobody here wrote for ``make demo``.

Conventions of the spec (``ExpectedSeries``):

- one entry per series the job should report: a DICOM series is (StudyInstanceUID,
  SeriesInstanceUID) split further where the job must split it (a localizer mixed into a series is
  its own entry, skipped with reason ``localizer``); each NIfTI file is one entry; an object that
  cannot be read at all (zero-byte, not DICOM, ...) is its own entry, quarantined ``unreadable``,
  with ``modality`` None and ``n_slices`` 0;
- ``n_slices`` counts distinct 2D images of the source (SOP instances, frames of a multi-frame
  object, or for NIfTI the slices along the canonical z axis times any extra dimensions), so a
  copied file does not count twice while ``files`` lists every object (relative POSIX paths);
- ``shape`` gives the canonical (z, y, x) volume an ingested series must produce (for real DICOM
  from the dominant axes of its orientation), ``spacing`` its (z, y, x) mm where known, and
  ``phantom`` the exact synthetic volume (HU or MR intensities) when there is one;
- ``reason`` is the reason value (a plain string, e.g. ``"localizer"``) the ingest must record, None
  when the series must be ingested. The generator is a core package below the ingest, so it does not
  import the ingest's ``Reason``/``Status``: tests map reasons to statuses (skipped or quarantined).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ComprehensiveSRStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from radforge.synthetic.dicom import (
    SeriesInfo,
    check_transfer_syntax,
    slice_geometry,
    transfer_syntax_available,
    write_dicom_series,
)
from radforge.synthetic.mosaic import write_mosaic_series
from radforge.synthetic.multiframe import write_enhanced_4d
from radforge.synthetic.phantom import Phantom, ct_phantom, mr_phantom
from radforge.synthetic.phi import PlantedPHI

__all__ = [
    "DEFAULT_TRANSFER_SYNTAXES",
    "PRIVATE_TRANSFER_SYNTAX",
    "ArchiveSpec",
    "ExpectedSeries",
    "build_synthetic_archive",
    "build_uncompressed_ct_archive",
]

DEFAULT_TRANSFER_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    RLELossless,
    JPEG2000Lossless,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
)
# A UID under pydicom's root that no standard or plugin knows: the "unknown private transfer syntax".
PRIVATE_TRANSFER_SYNTAX = "1.2.826.0.1.3680043.8.498.1.2.99"
_SMALL_SERIES = 4  # slices of the side-case series (bad inputs, odd names): enough for geometry


@dataclass
class ExpectedSeries:
    """The manifest entry the ingest job must produce for one series or object (see module docstring)."""

    folder: str  # relative POSIX folder in the archive
    modality: str | None
    n_slices: int
    reason: str | None  # the manifest's reason value when not ingested (None: ingested)
    transfer_syntax: str | None
    study_uid: str | None
    series_uid: str | None
    case: str = ""  # short unique name of the scenario, e.g. "ct_localizer"
    files: list[str] = field(default_factory=list)  # relative POSIX paths of every object
    shape: tuple[int, int, int] | None = None  # canonical (z, y, x) volume when ingested
    spacing: tuple[float, float, float] | None = None  # (z, y, x) mm when ingested
    source: str = "synthetic"  # synthetic | pydicom | pydicom-data | nibabel | nilearn
    phantom: Phantom | None = field(default=None, repr=False, compare=False)

    @property
    def ingested(self) -> bool:
        """Whether the ingest must ingest this series (no reason to skip or quarantine it)."""
        return self.reason is None

    @property
    def n_files(self) -> int:
        """Number of objects (files) behind this entry, copies included."""
        return len(self.files)


@dataclass
class ArchiveSpec:
    """Where an archive was written and what the ingest job must report for it."""

    root: str
    series: list[ExpectedSeries]
    phi: list[PlantedPHI]

    def markers(self) -> list[str]:
        """Every planted identifying string across the archive (no output may contain any)."""
        return list(dict.fromkeys(m for p in self.phi for m in p.markers()))

    def case(self, name: str) -> ExpectedSeries:
        """Return the entry of scenario ``name``."""
        for entry in self.series:
            if entry.case == name:
                return entry
        raise KeyError(f"no case {name!r}; cases: {sorted(e.case for e in self.series)}")

    def ingested(self) -> list[ExpectedSeries]:
        """Entries the ingest must ingest."""
        return [e for e in self.series if e.ingested]

    def files(self) -> list[str]:
        """Every object written, as relative POSIX paths."""
        return [f for e in self.series for f in e.files]


def _expected(
    info: SeriesInfo | None,
    *,
    case: str,
    folder: str,
    files: list[str],
    reason: str | None = None,
    n_slices: int | None = None,
    phantom: Phantom | None = None,
    modality: str | None = None,
    source: str = "synthetic",
) -> ExpectedSeries:
    ingested = reason is None
    return ExpectedSeries(
        folder=folder,
        modality=modality if modality is not None else (info.modality if info else None),
        n_slices=n_slices if n_slices is not None else (info.n_slices if info else 0),
        reason=reason,
        transfer_syntax=info.transfer_syntax if info else None,
        study_uid=info.study_uid if info else None,
        series_uid=info.series_uid if info else None,
        case=case,
        files=files,
        shape=phantom.shape if ingested and phantom is not None else None,
        spacing=phantom.spacing if ingested and phantom is not None else None,
        source=source,
        phantom=phantom if ingested else None,
    )


class ArchiveWriter:
    """Writes objects under ``root`` and records their expected entries (shared by the archive builders)."""

    def __init__(self, root: Path, *, seed: int, transfer_syntaxes: Sequence[str], prefix: str = "") -> None:
        for ts in transfer_syntaxes:
            check_transfer_syntax(ts, 512, 512)  # unknown or missing encoder: fail before writing
        self.root = root
        self.prefix = prefix
        self.seed = seed
        self.transfer_syntaxes = list(transfer_syntaxes)
        self._next_ts = 0
        self.entries: list[ExpectedSeries] = []
        self.phi: list[PlantedPHI] = []

    def rel(self, path: str | Path) -> str:
        return (Path(self.prefix) / Path(path).relative_to(self.root)).as_posix()

    def uid(self, *parts: object) -> str:
        return str(generate_uid(entropy_srcs=["radforge-archive", str(self.seed), *map(str, parts)]))

    def patient(self) -> PlantedPHI:
        phi = PlantedPHI.from_seed(self.seed * 10_007 + len(self.phi))
        self.phi.append(phi)
        return phi

    def next_transfer_syntax(self, rows: int, columns: int) -> str:
        """Cycle through the requested syntaxes, passing over those that cannot encode this size."""
        for _ in range(len(self.transfer_syntaxes)):
            ts = self.transfer_syntaxes[self._next_ts % len(self.transfer_syntaxes)]
            self._next_ts += 1
            if transfer_syntax_available(ts, rows=rows, columns=columns):
                return ts
        return ExplicitVRLittleEndian

    def series(
        self,
        case: str,
        phantom: Phantom,
        folder: Path,
        *,
        phi: PlantedPHI | None,
        orientation: str = "axial",
        transfer_syntax: str | None = None,
        reason: str | None = None,
        study_uid: str | None = None,
        series_uid: str | None = None,
        **kwargs: Any,
    ) -> tuple[SeriesInfo, ExpectedSeries]:
        """Write one DICOM series and record its expected entry."""
        if transfer_syntax is None:
            geometry = slice_geometry(phantom.shape, phantom.spacing, orientation=orientation)
            transfer_syntax = self.next_transfer_syntax(geometry.rows, geometry.columns)
        info = write_dicom_series(
            phantom,
            folder,
            transfer_syntax=transfer_syntax,
            study_uid=study_uid or self.uid(case, "study"),
            series_uid=series_uid or self.uid(case, "series"),
            phi=phi,
            orientation=orientation,
            seed=self.seed + len(self.entries),
            **kwargs,
        )
        entry = _expected(
            info,
            case=case,
            folder=self.rel(folder),
            files=[self.rel(p) for p in info.paths],
            reason=reason,
            phantom=phantom,
        )
        self.entries.append(entry)
        return info, entry

    def folder_of(self, case: str) -> Path | None:
        """Return the absolute folder of an entry already written, None when there is no such case."""
        for entry in self.entries:
            if entry.case == case:
                return self.root / Path(entry.folder).relative_to(self.prefix or ".")
        return None

    def unreadable(self, case: str, path: Path, content: bytes) -> None:
        """Write an object no reader can parse, recorded as its own quarantined entry."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        entry = _expected(
            None, case=case, folder=self.rel(path.parent), files=[self.rel(path)], reason="unreadable"
        )
        self.entries.append(entry)


def _study_folder(builder: ArchiveWriter, phi: PlantedPHI, label: str) -> Path:
    """Return a hospital-style folder: patient name, then study date and a label."""
    return builder.root / phi.folder_name / f"{phi.study_date}_{label}"


def build_synthetic_archive(
    dest: str,
    *,
    n_ct: int = 2,
    n_mr: int = 1,
    size: int = 64,
    n_slices: int = 12,
    seed: int = 0,
    transfer_syntaxes: Sequence[str] = DEFAULT_TRANSFER_SYNTAXES,
    include_bad: bool = True,
    include_non_image: bool = True,
    include_vendor: bool = True,
) -> ArchiveSpec:
    """Write a synthetic hospital export into the local folder ``dest``; return what the job must report.

    Good series: ``n_ct`` CT series (the first with shuffled names and a LOCALIZER slice of the
    same SeriesInstanceUID mixed in; the second in the same folder and study, with one file copied
    under a second name), ``n_mr`` MR series, a coronal CT and a sagittal MR acquisition, and a CT
    NIfTI (.nii.gz, RAS affine). Transfer syntaxes cycle through ``transfer_syntaxes`` (those that
    cannot encode an image size are passed over). ``include_non_image`` adds an SR document and a
    secondary capture; ``include_bad`` adds a truncated series, a zero-byte file, a text file named
    .dcm, missing PixelData, an unknown private transfer syntax, duplicate positions, a 60000x60000
    header, BurnedInAnnotation YES, a NIfTI with NaN, and valid series with odd names (spaces and
    unicode, 200-character names, 12 nested folders). ``include_vendor`` adds what real scanners
    deliver beyond plain 3D series: Siemens MOSAIC series with and without a CSA header (two volumes
    each, one entry per volume) and a mosaic whose slice count cannot be established. Deterministic
    for a given ``seed``.
    """
    if n_slices < 3 or size < 8:
        raise ValueError(f"n_slices must be >= 3 and size >= 8, got n_slices={n_slices}, size={size}")
    root = Path(dest)
    root.mkdir(parents=True, exist_ok=True)
    builder = ArchiveWriter(root, seed=seed, transfer_syntaxes=transfer_syntaxes)
    _write_synthetic(
        builder,
        n_ct=n_ct,
        n_mr=n_mr,
        size=size,
        n_slices=n_slices,
        include_bad=include_bad,
        include_non_image=include_non_image,
        include_vendor=include_vendor,
    )
    return ArchiveSpec(root=str(root), series=builder.entries, phi=builder.phi)


def _write_synthetic(
    b: ArchiveWriter,
    *,
    n_ct: int,
    n_mr: int,
    size: int,
    n_slices: int,
    include_bad: bool,
    include_non_image: bool,
    include_vendor: bool = False,
) -> None:
    shape = (n_slices, size, size)
    small = (min(n_slices, _SMALL_SERIES), size, size)
    seed = b.seed

    # --- CT: shuffled names + localizer, a second series in the same folder with a copied file
    ct_folder: Path | None = None
    first_ct: SeriesInfo | None = None
    p0 = b.patient() if n_ct else None
    for i in range(n_ct):
        phi = p0 if i < 2 and p0 is not None else b.patient()
        folder = _study_folder(b, phi, "CT")
        phantom = ct_phantom(shape=shape, seed=seed + 100 + i, lesion=i % 2 == 0)
        case = "ct_shuffled" if i == 0 else ("ct_shared_folder" if i == 1 else f"ct_{i}")
        study = b.uid("p0", "study") if i < 2 else None
        info, entry = b.series(
            case, phantom, folder, phi=phi, study_uid=study, shuffle_names=i != 1, series_number=i + 1
        )
        if i == 0:
            ct_folder, first_ct = folder, info
            _add_localizer(b, phantom, folder, info, phi)
        if i == 1:  # the same SOP instance twice under two names, as a careless copy leaves it
            src = Path(info.paths[len(info.paths) // 2])
            copy = src.with_name(f"{src.stem} - Copy{src.suffix}")
            shutil.copyfile(src, copy)
            entry.files.append(b.rel(copy))

    # --- MR, and acquisitions in other orientations
    for j in range(n_mr):
        phi = b.patient()
        b.series(
            f"mr_{j}" if j else "mr",
            mr_phantom(shape=shape, seed=seed + 200 + j),
            _study_folder(b, phi, "MR"),
            phi=phi,
            shuffle_names=True,
        )
    phi = b.patient()
    b.series(
        "ct_coronal",
        ct_phantom(shape=shape, seed=seed + 300, lesion=True),
        _study_folder(b, phi, "CT_COR"),
        phi=phi,
        orientation="coronal",
        image_type=("ORIGINAL", "PRIMARY", "OTHER"),
    )
    phi = b.patient()
    b.series(
        "mr_sagittal",
        mr_phantom(shape=shape, seed=seed + 301),
        _study_folder(b, phi, "MR_SAG"),
        phi=phi,
        orientation="sagittal",
        image_type=("ORIGINAL", "PRIMARY", "OTHER"),
    )

    # --- NIfTI, valid, named after the patient as exports often are
    phi = b.patient()
    nifti = ct_phantom(shape=shape, seed=seed + 400, lesion=True)
    path = b.root / "nifti" / f"{phi.folder_name}.nii.gz"
    _write_nifti(nifti.array.astype(np.int16), nifti.spacing, path, phi=phi)
    b.entries.append(
        _expected(
            None,
            case="nifti_ct",
            folder=b.rel(path.parent),
            files=[b.rel(path)],
            n_slices=nifti.shape[0],
            phantom=nifti,
            modality="CT",
        )
    )

    if include_non_image and first_ct is not None and p0 is not None:
        _add_non_image(b, p0, first_ct, size)

    if include_vendor:
        _add_mosaics(b, mr_phantom(shape=shape, seed=seed + 500))
        _add_4d(b, mr_phantom(shape=shape, seed=seed + 510))
        _add_geometry_cases(b, size=size, n_slices=n_slices)

    if include_bad:
        _add_bad(b, small, size, ct_folder)


def _add_volume(
    b: ArchiveWriter,
    case: str,
    phantom: Phantom,
    folder: Path,
    paths: Sequence[str | Path],
    uids: tuple[str, str],
    *,
    reason: str | None = None,
) -> None:
    """Record one MR volume written in explicit VR little endian by the vendor writers below."""
    b.entries.append(
        ExpectedSeries(
            folder=b.rel(folder),
            modality="MR",
            n_slices=phantom.shape[0],
            reason=reason,
            transfer_syntax=ExplicitVRLittleEndian,
            study_uid=uids[0],
            series_uid=uids[1],
            case=case,
            files=[b.rel(p) for p in paths],
            shape=phantom.shape,
            spacing=phantom.spacing,
            phantom=phantom,
        )
    )


def _add_mosaics(b: ArchiveWriter, phantom: Phantom) -> None:
    """Siemens MOSAIC series (two volumes each) with and without a CSA header, and an undecodable one."""
    base = phantom.array.astype(np.uint16)
    origin = (-phantom.shape[2] * phantom.spacing[2] / 2, -phantom.shape[1] * phantom.spacing[1] / 2, -40.0)
    for i, (case, csa, n_volumes, matrix) in enumerate(
        (
            ("mr_mosaic_csa", True, 2, None),
            ("mr_mosaic_no_csa", False, 2, None),
            ("mosaic_undecodable", False, 1, (0, 0, 0, 0)),  # no CSA, no usable acquisition matrix
        )
    ):
        volumes = [base + 5 * t + 50 * i for t in range(n_volumes)]  # every volume its own pixels
        phi = b.patient()
        folder = _study_folder(b, phi, f"MOSAIC_{case}")
        written = write_mosaic_series(
            volumes,
            folder,
            spacing=phantom.spacing,
            origin=origin,
            csa=csa,
            seed=b.seed * 1000 + len(b.entries),
            acquisition_matrix=matrix,
            phi=phi,
        )
        for t, path in enumerate(written.paths):
            _add_volume(
                b,
                case if n_volumes == 1 else f"{case}_v{t}",
                replace(phantom, array=volumes[t].astype(np.float32)),
                folder,
                [path],
                (written.study_uid, written.series_uid),
                reason="mosaic_undecodable" if matrix is not None else None,
            )


# Diffusion volumes of the classic 4D DWI case: (b-value, gradient direction), b0 first.
_DWI_VOLUMES = ((0.0, None), (1000.0, (1.0, 0.0, 0.0)), (1000.0, (0.0, 1.0, 0.0)), (1000.0, (0.0, 0.0, 1.0)))


def _add_4d(b: ArchiveWriter, phantom: Phantom) -> None:
    """A classic (one file per slice) 4D DWI series and an SWI series of magnitude and phase images.

    Every volume of one series revisits the same positions: the DWI's volumes differ only by
    DiffusionBValue and DiffusionGradientOrientation, the SWI's by ImageType (``M`` / ``P``). Each
    volume is one entry; the phase images are skipped as ``non_magnitude_image``.
    """
    study, series = b.uid("mr_dwi", "study"), b.uid("mr_dwi", "series")
    phi = b.patient()
    folder = _study_folder(b, phi, "DWI")
    for t, (b_value, gradient) in enumerate(_DWI_VOLUMES):

        def diffusion(ds: Dataset, _: int, b_value: float = b_value, gradient: Any = gradient) -> None:
            ds.DiffusionBValue = b_value
            if gradient is not None:
                ds.DiffusionGradientOrientation = list(gradient)

        weighted = np.rint(phantom.array * (1.0 if t == 0 else 0.5) + 3 * t).astype(np.float32)
        volume = replace(phantom, array=weighted)
        image_type = ("ORIGINAL", "PRIMARY", "DIFFUSION", "NONE")
        uids = {"phi": phi, "study_uid": study, "series_uid": series}
        _volume_series(b, f"mr_dwi_v{t}", volume, folder, f"DWI{t:02d}", image_type, extra=diffusion, **uids)
    # enhanced multi-frame fMRI: three time points of the same slices in one object, one entry each
    phi = b.patient()
    path = _study_folder(b, phi, "FMRI") / "fmri_4d.dcm"
    volumes = [np.rint(phantom.array + 11 * t).astype(np.uint16) for t in range(3)]
    origin = (-phantom.shape[2] * phantom.spacing[2] / 2, -phantom.shape[1] * phantom.spacing[1] / 2, -20.0)
    study, series = write_enhanced_4d(
        volumes, path, spacing=phantom.spacing, origin=origin, seed=b.seed * 1000 + len(b.entries), phi=phi
    )
    for t, volume in enumerate(volumes):  # one object holds every volume: its first entry lists it
        volume_phantom = replace(phantom, array=volume.astype(np.float32))
        files = [path] if t == 0 else []
        _add_volume(b, f"mr_fmri_enhanced_v{t}", volume_phantom, path.parent, files, (study, series))
    study, series = b.uid("mr_swi", "study"), b.uid("mr_swi", "series")
    phi = b.patient()
    folder = _study_folder(b, phi, "SWI")
    phase = np.rint(np.abs(phantom.array - phantom.array.mean())).astype(np.float32)
    for kind, array, reason in (("M", phantom.array, None), ("P", phase, "non_magnitude_image")):
        case = f"mr_swi_{'magnitude' if kind == 'M' else 'phase'}"
        image_type = ("ORIGINAL", "PRIMARY", kind, "SWI")
        uids = {"phi": phi, "study_uid": study, "series_uid": series}
        volume = replace(phantom, array=array)
        _volume_series(b, case, volume, folder, f"SWI_{kind}", image_type, reason=reason, **uids)


def _add_geometry_cases(b: ArchiveWriter, *, size: int, n_slices: int) -> None:
    """Geometry the plane policy and the gap rule decide on.

    A CT with one slice missing (uneven gaps: native slices only), a 2D sagittal MR of 5 mm slices
    (anisotropic: the acquired plane only) and a near-isotropic 3D CT (1 mm cubes: all three planes).
    """
    phi = b.patient()
    ct = ct_phantom(shape=(n_slices, size, size), seed=b.seed + 600)
    folder = _study_folder(b, phi, "CT_GAP")
    info, entry = b.series("ct_missing_slice", ct, folder, phi=phi, shuffle_names=False)
    missing = n_slices // 2
    Path(info.paths[missing]).unlink()
    phi.uids.remove(info.sop_instance_uids[missing])  # written nowhere now
    entry.files.remove(b.rel(info.paths[missing]))
    entry.n_slices -= 1
    entry.shape = (n_slices - 1, size, size)
    entry.phantom = replace(ct, array=np.delete(ct.array, missing, axis=0))
    phi = b.patient()
    thick = (size, size, max(3, n_slices // 2))
    sagittal = mr_phantom(shape=thick, spacing=(0.9, 0.9, 5.0), seed=b.seed + 601)
    b.series("mr_sagittal_2d", sagittal, _study_folder(b, phi, "MR_SAG2D"), phi=phi, orientation="sagittal")
    phi = b.patient()
    iso = ct_phantom(shape=(size, size, size), spacing=(1.0, 1.0, 1.0), seed=b.seed + 602)
    b.series("ct_isotropic", iso, _study_folder(b, phi, "CT_ISO"), phi=phi)


def _volume_series(
    b: ArchiveWriter,
    case: str,
    phantom: Phantom,
    folder: Path,
    name: str,
    image_type: tuple[str, ...],
    **kwargs: Any,
) -> None:
    """One volume of a series whose volumes share positions (files ``<name>_<k>.dcm``, uncompressed)."""
    b.series(
        case,
        phantom,
        folder,
        transfer_syntax=ExplicitVRLittleEndian,
        file_name=lambda k: f"{name}_{k:03d}.dcm",
        image_type=image_type,
        **kwargs,
    )


def _add_localizer(b: ArchiveWriter, ct: Phantom, folder: Path, info: SeriesInfo, phi: PlantedPHI) -> None:
    """Add a coronal projection image with the CT's own SeriesInstanceUID, as scanners export it."""
    projection = np.rint(ct.array.mean(axis=1, keepdims=True))
    scout = Phantom(
        array=projection.astype(np.float32),
        labels=ct.labels.max(axis=1, keepdims=True),
        spacing=ct.spacing,
        modality="CT",
        has_lesion=False,
        lesion_volume_ml=0.0,
    )
    loc_info = write_dicom_series(
        scout,
        folder,
        transfer_syntax=ExplicitVRLittleEndian,
        study_uid=info.study_uid,
        series_uid=info.series_uid,
        frame_of_reference_uid=info.frame_of_reference_uid,
        phi=phi,
        orientation="coronal",
        origin=(-(ct.shape[0] - 1) * ct.spacing[0] / 2, 0.0, -(ct.shape[2] - 1) * ct.spacing[2] / 2),
        seed=b.seed + 7,
        image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
    )
    b.entries.append(
        _expected(
            loc_info,
            case="ct_localizer",
            folder=b.rel(folder),
            files=[b.rel(p) for p in loc_info.paths],
            reason="localizer",
        )
    )


def _add_non_image(b: ArchiveWriter, phi: PlantedPHI, ct: SeriesInfo, size: int) -> None:
    """Add an SR report and a secondary capture (screenshot) to the first CT patient's study."""
    folder = _study_folder(b, phi, "SR")
    sr_uid = b.uid("sr", "series")
    sop_uid = b.uid("sr", "sop")
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = ComprehensiveSRStorage
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "SR"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = ct.study_uid, sr_uid
    ds.SeriesNumber, ds.InstanceNumber = 90, 1
    ds.Manufacturer = "radforge"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    title = Dataset()
    title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning = (
        "18748-4",
        "LN",
        "Diagnostic imaging report",
    )
    ds.ConceptNameCodeSequence = DicomSequence([title])
    finding = Dataset()
    finding.RelationshipType, finding.ValueType = "CONTAINS", "TEXT"
    name = Dataset()
    name.CodeValue, name.CodingSchemeDesignator, name.CodeMeaning = "121071", "DCM", "Finding"
    finding.ConceptNameCodeSequence = DicomSequence([name])
    finding.TextValue = f"Patient {phi.patient_name} ({phi.patient_id}): hypodense liver lesion."
    ds.ContentSequence = DicomSequence([finding])
    phi.plant(ds)
    phi.record_uids(sr_uid, sop_uid)
    path = folder / "report.dcm"
    _save(ds, path, ExplicitVRLittleEndian)
    b.entries.append(
        ExpectedSeries(
            folder=b.rel(folder),
            modality="SR",
            n_slices=1,
            reason="not_image",
            transfer_syntax=ExplicitVRLittleEndian,
            study_uid=ct.study_uid,
            series_uid=sr_uid,
            case="sr_report",
            files=[b.rel(path)],
        )
    )

    def screenshot(ds: Dataset, k: int) -> None:
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
        ds.ConversionType = "WSD"
        for keyword in (
            "ImagePositionPatient",
            "ImageOrientationPatient",
            "SliceLocation",
            "SpacingBetweenSlices",
            "SliceThickness",
        ):
            if keyword in ds:
                delattr(ds, keyword)

    capture = ct_phantom(shape=(1, size, size), seed=b.seed + 500, lesion=False)
    b.series(
        "secondary_capture",
        capture,
        _study_folder(b, phi, "SC"),
        phi=phi,
        study_uid=ct.study_uid,
        transfer_syntax=ExplicitVRLittleEndian,
        image_type=("DERIVED", "SECONDARY"),
        extra=screenshot,
        reason="secondary_capture",
        series_number=91,
    )


def _add_bad(b: ArchiveWriter, small: tuple[int, int, int], size: int, ct_folder: Path | None) -> None:
    """Add every bad input of the ingest issue, each with the reason value the ingest assigns to it."""
    seed = b.seed
    explicit = ExplicitVRLittleEndian

    def small_ct(offset: int) -> Phantom:
        return ct_phantom(shape=small, seed=seed + offset, lesion=False)

    # pixel data cut short in one file of the series (header intact) -> decode_failed
    phi = b.patient()
    info, _ = b.series(
        "truncated",
        small_ct(600),
        _study_folder(b, phi, "CT_TRUNC"),
        phi=phi,
        transfer_syntax=explicit,
        reason="decode_failed",
    )
    victim = Path(info.paths[1])
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) - size * size])  # half of the 16-bit pixel data

    # unreadable single objects, dropped into folders of good series
    first_folder = ct_folder if ct_folder is not None else b.root / "misc"
    b.unreadable("zero_byte", first_folder / "00000000.dcm", b"")
    mr_folder = b.folder_of("mr") or b.root / "misc"
    b.unreadable("not_dicom", mr_folder / "notes.dcm", b"Exported by PACS viewer. Not a DICOM file.\n" * 4)

    def drop_pixels(ds: Dataset, k: int) -> None:
        del ds.PixelData

    def absurd(ds: Dataset, k: int) -> None:
        ds.Rows = ds.Columns = 60000

    def burned_in(ds: Dataset, k: int) -> None:
        ds.BurnedInAnnotation = "YES"

    def broken_series(case: str, offset: int, folder: str, extra: Callable[[Dataset, int], None]) -> None:
        """A small CT whose every instance ``extra`` breaks the same way; the case names its reason."""
        phi = b.patient()
        b.series(
            case,
            small_ct(offset),
            _study_folder(b, phi, folder),
            phi=phi,
            transfer_syntax=explicit,
            extra=extra,
            reason=case,
        )

    broken_series("no_pixel_data", 610, "CT_NOPIX", drop_pixels)

    def private_syntax(ds: Dataset, k: int) -> None:
        ds.file_meta.TransferSyntaxUID = UID(PRIVATE_TRANSFER_SYNTAX)

    phi = b.patient()
    info, entry = b.series(
        "unknown_transfer_syntax",
        small_ct(620),
        _study_folder(b, phi, "CT_PRIVTS"),
        phi=phi,
        transfer_syntax=explicit,
        extra=private_syntax,
        reason="unsupported_transfer_syntax",
    )
    entry.transfer_syntax = PRIVATE_TRANSFER_SYNTAX

    # a second SOP instance at the position of slice 1 -> duplicate_positions
    phi = b.patient()
    info, entry = b.series(
        "duplicate_positions",
        small_ct(630),
        _study_folder(b, phi, "CT_DUP"),
        phi=phi,
        transfer_syntax=explicit,
        reason="duplicate_positions",
    )
    twin = pydicom.dcmread(info.paths[1])
    twin.SOPInstanceUID = twin.file_meta.MediaStorageSOPInstanceUID = UID(b.uid("duplicate", "sop"))
    twin.InstanceNumber = len(info.paths) + 1
    pixels = twin.pixel_array.copy()
    pixels[: size // 4] += 1
    twin.PixelData = pixels.tobytes()
    phi.record_uids(twin.SOPInstanceUID)
    twin_path = Path(info.paths[1]).with_name("rescan.dcm")
    twin.save_as(twin_path, enforce_file_format=True)
    entry.files.append(b.rel(twin_path))
    entry.n_slices += 1

    broken_series("absurd_dimensions", 640, "CT_HUGE", absurd)
    broken_series("burned_in_annotation", 650, "CT_BURNED", burned_in)

    phi = b.patient()
    nan_volume = small_ct(660).array.copy()
    nan_volume[1, : size // 2, : size // 2] = np.nan
    path = b.root / "nifti" / f"{phi.folder_name}_nan.nii.gz"
    _write_nifti(nan_volume, small_ct(660).spacing, path, phi=phi)
    b.entries.append(
        _expected(
            None,
            case="nifti_nan",
            folder=b.rel(path.parent),
            files=[b.rel(path)],
            n_slices=small[0],
            reason="non_finite_values",
            modality="CT",
        )
    )

    # odd names: otherwise valid series, all ingested
    phi = b.patient()
    b.series(
        "odd_unicode",
        small_ct(670),
        b.root / phi.folder_name / "Étude thorax é 日本" / "séries 1 日本",
        phi=phi,
        file_name=lambda k: f"image {k + 1} é 日本.dcm",
    )
    phi = b.patient()
    long_folder = b.root / phi.folder_name / ("long_folder_" + "d" * 188)
    b.series(
        "odd_long_names",
        mr_phantom(shape=small, seed=seed + 680),
        long_folder,
        phi=phi,
        file_name=lambda k: f"{k:04d}_" + "n" * 191 + ".dcm",
    )
    phi = b.patient()
    deep = b.root.joinpath(phi.folder_name, *(f"level{d:02d}" for d in range(1, 13)))
    b.series("odd_nested_deep", small_ct(690), deep, phi=phi)


def _save(ds: Dataset, path: Path, transfer_syntax: str) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _write_nifti(
    volume: np.ndarray, spacing: tuple[float, float, float], path: Path, *, phi: PlantedPHI | None = None
) -> None:
    """Save a canonical (z, y, x) LPS volume as NIfTI in RAS+ voxel order with the matching affine.

    The volume is centred on the isocentre like :func:`slice_geometry`'s default, so a reader that
    reorients to LPS gets back ``volume`` with the same world positions as the DICOM writer uses.
    With ``phi``, the patient name goes into ``descrip`` and every identifying value into a comment
    extension, as converters that copy DICOM headers into NIfTI leave them.
    """
    import nibabel as nib

    nz, ny, nx = volume.shape
    sz, sy, sx = spacing
    # NIfTI voxel (i, j, k) runs toward R, A, S: it is canonical voxel (z=k, y=ny-1-j, x=nx-1-i), whose
    # LPS position is (ox + (nx-1-i) sx, oy + (ny-1-j) sy, oz + k sz); RAS negates the first two.
    data = volume.transpose(2, 1, 0)[::-1, ::-1, :]
    ox, oy, oz = -(nx - 1) * sx / 2, -(ny - 1) * sy / 2, -(nz - 1) * sz / 2
    affine = np.array(
        [
            [sx, 0.0, 0.0, -ox - (nx - 1) * sx],
            [0.0, sy, 0.0, -oy - (ny - 1) * sy],
            [0.0, 0.0, sz, oz],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    image = nib.Nifti1Image(np.ascontiguousarray(data), affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    if phi is not None:
        image.header["descrip"] = phi.family_name.encode("ascii")
        text = " ".join(phi.markers()) + f" {phi.patient_name}"
        image.header.extensions.append(nib.nifti1.Nifti1Extension("comment", text.encode("ascii")))
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))


# --- benchmarks ----------------------------------------------------------------------------------


def build_uncompressed_ct_archive(
    dest: str, *, n_series: int, n_slices: int, size: int = 512, seed: int = 0
) -> ArchiveSpec:
    """``n_series`` CT series of ``n_slices`` uncompressed ``size`` x ``size`` int16 slices, for benchmarks.

    Stored signed with RescaleIntercept -1024 (as many scanners do), explicit VR little endian,
    shuffled names, planted PHI. Two phantoms are drawn and reused across series (only their UIDs
    and PHI differ), which keeps generation fast; ``phantom`` is not kept in the spec (memory).
    """
    root = Path(dest)
    root.mkdir(parents=True, exist_ok=True)
    b = ArchiveWriter(root, seed=seed, transfer_syntaxes=(ExplicitVRLittleEndian,))
    phantoms: dict[int, Phantom] = {}
    for i in range(n_series):
        key = i % 2
        if key not in phantoms:
            phantoms[key] = ct_phantom(shape=(n_slices, size, size), seed=seed + key, lesion=key == 0)
        phi = b.patient()
        _, entry = b.series(
            f"bench_ct_{i:04d}",
            phantoms[key],
            _study_folder(b, phi, f"CT_{i:04d}"),
            phi=phi,
            transfer_syntax=ExplicitVRLittleEndian,
            rescale=(1.0, -1024.0),
            signed=True,
        )
        entry.phantom = None
    return ArchiveSpec(root=str(root), series=b.entries, phi=b.phi)
