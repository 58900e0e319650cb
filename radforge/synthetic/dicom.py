"""Write a phantom as a multi-file DICOM series, in any orientation and transfer syntax pydicom can write.

The files are what a scanner export looks like to a reader: one SOP instance per slice with valid
UIDs, patient geometry (ImagePositionPatient / ImageOrientationPatient / PixelSpacing) consistent
with the phantom's canonical (z, y, x) LPS grid, CT rescale to HU, and by default random file
names with shuffled InstanceNumbers so that only the geometry can order the slices.

Geometry, with ``origin`` the LPS position of voxel (0, 0, 0) and ``spacing`` (sz, sy, sx):

- axial: slice k is ``array[k]``; rows along +y (P), columns along +x (L); IOP ``1,0,0,0,1,0``.
- coronal: slice j is ``array[::-1, j, :]``; rows go from superior to inferior (-z), columns along
  +x; IOP ``1,0,0,0,0,-1``; the slice normal is +y.
- sagittal: slice i is ``array[::-1, :, i]``; rows from superior to inferior, columns along +y;
  IOP ``0,1,0,0,0,-1``; the slice normal is -x.

A reader that orders slices by ImagePositionPatient projected on the normal and reorients to LPS
recovers ``phantom.array`` exactly for the lossless transfer syntaxes.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.charset import convert_encodings
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.pixels import encoders
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

from radforge.synthetic.phantom import Phantom
from radforge.synthetic.phi import PlantedPHI

__all__ = [
    "ORIENTATIONS",
    "WRITABLE_TRANSFER_SYNTAXES",
    "EncoderUnavailableError",
    "check_transfer_syntax",
    "SeriesInfo",
    "SliceGeometry",
    "slice_geometry",
    "transfer_syntax_available",
    "write_dicom_series",
]

NATIVE_TRANSFER_SYNTAXES = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
)
# lossless encoders only: the tests compare HU exactly after a round trip
_ENCODERS = {
    RLELossless: encoders.RLELosslessEncoder,
    JPEG2000Lossless: encoders.JPEG2000LosslessEncoder,
    JPEGLSLossless: encoders.JPEGLSLosslessEncoder,
}
WRITABLE_TRANSFER_SYNTAXES: tuple[str, ...] = (*NATIVE_TRANSFER_SYNTAXES, *_ENCODERS)
_PLAIN_NATIVE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian)  # not deflated
_IMPLEMENTATION_VERSION = "RADFORGE_SYNTH"
ORIENTATIONS = ("axial", "coronal", "sagittal")
J2K_MIN_SIZE = 32  # openjpeg's encoder always uses 6 DWT resolutions: 2**5 pixels per side at least

_SOP_CLASS = {"CT": CTImageStorage, "MR": MRImageStorage}
_MANUFACTURERS = (
    ("SIEMENS", "SOMATOM Force", "MAGNETOM Vida"),
    ("GE MEDICAL SYSTEMS", "Revolution CT", "SIGNA Premier"),
    ("Philips", "IQon Spectral CT", "Ingenia"),
    ("Canon Medical Systems", "Aquilion ONE", "Vantage Orian"),
)


class EncoderUnavailableError(RuntimeError):
    """The requested transfer syntax needs an encoder plugin that is not installed."""


@dataclass
class SeriesInfo:
    """What :func:`write_dicom_series` wrote; ``paths`` and ``sop_instance_uids`` are in slice order."""

    study_uid: str
    series_uid: str
    n_slices: int
    transfer_syntax: str
    modality: str
    paths: list[str]
    sop_instance_uids: list[str] = field(default_factory=list)
    frame_of_reference_uid: str = ""
    orientation: str = "axial"


@dataclass(frozen=True)
class SliceGeometry:
    """Patient geometry of the slices of a phantom taken along one axis (see the module docstring)."""

    n_slices: int
    rows: int
    columns: int
    orientation: tuple[float, ...]  # ImageOrientationPatient: row cosines then column cosines (LPS)
    pixel_spacing: tuple[float, float]  # (between rows, between columns) mm
    slice_spacing: float
    positions: tuple[tuple[float, float, float], ...]  # ImagePositionPatient (x, y, z) per slice

    @property
    def normal(self) -> np.ndarray:
        """Unit slice normal: row cosines x column cosines."""
        iop = np.asarray(self.orientation, dtype=np.float64)
        return np.cross(iop[:3], iop[3:])


def slice_geometry(
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    *,
    orientation: str = "axial",
    origin: tuple[float, float, float] | None = None,
) -> SliceGeometry:
    """Geometry of slicing a canonical (z, y, x) volume along ``orientation``.

    ``origin`` is the (z, y, x) LPS position in mm of voxel (0, 0, 0); by default the volume is
    centred on the isocentre.
    """
    nz, ny, nx = shape
    sz, sy, sx = (float(s) for s in spacing)
    oz, oy, ox = (
        origin if origin is not None else (-(nz - 1) * sz / 2, -(ny - 1) * sy / 2, -(nx - 1) * sx / 2)
    )
    top = oz + (nz - 1) * sz  # coronal and sagittal images start at the most superior row
    if orientation == "axial":
        return SliceGeometry(
            nz,
            ny,
            nx,
            (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
            (sy, sx),
            sz,
            tuple((ox, oy, oz + k * sz) for k in range(nz)),
        )
    if orientation == "coronal":
        return SliceGeometry(
            ny,
            nz,
            nx,
            (1.0, 0.0, 0.0, 0.0, 0.0, -1.0),
            (sz, sx),
            sy,
            tuple((ox, oy + j * sy, top) for j in range(ny)),
        )
    if orientation == "sagittal":
        return SliceGeometry(
            nx,
            nz,
            ny,
            (0.0, 1.0, 0.0, 0.0, 0.0, -1.0),
            (sz, sy),
            sx,
            tuple((ox + i * sx, oy, top) for i in range(nx)),
        )
    raise ValueError(f"orientation must be one of {ORIENTATIONS}, got {orientation!r}")


def _take_slice(volume: np.ndarray, orientation: str, index: int) -> np.ndarray:
    if orientation == "axial":
        return volume[index]
    if orientation == "coronal":
        return volume[::-1, index, :]
    return volume[::-1, :, index]


def transfer_syntax_available(transfer_syntax: str, *, rows: int = 512, columns: int = 512) -> bool:
    """Whether :func:`write_dicom_series` can write ``transfer_syntax`` for images of this size."""
    try:
        check_transfer_syntax(transfer_syntax, rows, columns)
    except (ValueError, EncoderUnavailableError):
        return False
    return True


def check_transfer_syntax(transfer_syntax: str, rows: int, columns: int) -> None:
    """Raise unless ``transfer_syntax`` can be written for ``rows`` x ``columns`` images here."""
    if transfer_syntax in NATIVE_TRANSFER_SYNTAXES:
        return
    if transfer_syntax == JPEG2000Lossless and min(rows, columns) < J2K_MIN_SIZE:
        raise ValueError(
            f"JPEG 2000 needs images of at least {J2K_MIN_SIZE}x{J2K_MIN_SIZE} pixels (openjpeg uses "
            f"6 wavelet resolutions), got {rows}x{columns}: choose another transfer syntax"
        )
    encoder = _ENCODERS.get(UID(transfer_syntax))
    if encoder is None:
        names = ", ".join(f"{UID(t).name} ({t})" for t in WRITABLE_TRANSFER_SYNTAXES)
        raise ValueError(f"cannot write transfer syntax {transfer_syntax!r}; writable: {names}")
    if not encoder.is_available:
        missing = "; ".join(encoder.missing_dependencies)
        raise EncoderUnavailableError(
            f"no encoder installed for {UID(transfer_syntax).name} ({transfer_syntax}); "
            f"install one of: {missing}"
        )


def _stored_values(
    phantom: Phantom, rescale: tuple[float, float], signed: bool | None
) -> tuple[np.ndarray, bool, bool]:
    """Return stored pixel values of the volume, whether they are signed, whether rescale applies."""
    # float32 holds every integer up to 2**24 exactly, far beyond 16-bit stored values
    if phantom.modality == "CT":
        slope, intercept = rescale
        if slope <= 0:
            raise ValueError(f"rescale slope must be positive, got {slope}")
        stored = phantom.array - np.float32(intercept)
        if slope != 1.0:
            stored /= np.float32(slope)
        use_rescale = True
    else:  # MR: no rescale, unsigned
        stored = phantom.array
        use_rescale = False
        signed = False if signed is None else signed
    stored = np.rint(stored)
    lo_value, hi_value = float(stored.min()), float(stored.max())
    if signed is None:
        signed = lo_value < 0
    lo, hi = (-32768, 32767) if signed else (0, 65535)
    if lo_value < lo or hi_value > hi:
        kind = "int16" if signed else "uint16"
        raise ValueError(
            f"stored values span {lo_value:.0f}..{hi_value:.0f}, outside {kind}; "
            f"choose another rescale (slope, intercept) than {rescale}"
        )
    return stored.astype(np.int16 if signed else np.uint16), signed, use_rescale


def _fingerprint(phantom: Phantom, orientation: str, seed: int) -> str:
    """Return a short digest of what is written, the entropy of the default UIDs."""
    nz = phantom.shape[0]
    digest = hashlib.blake2b(digest_size=16)
    digest.update(np.ascontiguousarray(phantom.array[:: max(nz // 8, 1), ::4, ::4]).tobytes())
    digest.update(f"{phantom.modality}|{phantom.shape}|{phantom.spacing}|{orientation}|{seed}".encode())
    return digest.hexdigest()


def _file_names(n: int, shuffle: bool, rng: random.Random) -> list[str]:
    if shuffle:
        return [f"{rng.getrandbits(64):016x}.dcm" for _ in range(n)]
    return [f"IM{k + 1:05d}.dcm" for k in range(n)]


def write_dicom_series(
    phantom: Phantom,
    folder: str | os.PathLike[str],
    *,
    transfer_syntax: str = ExplicitVRLittleEndian,
    study_uid: str | None = None,
    series_uid: str | None = None,
    phi: PlantedPHI | None = None,
    orientation: str = "axial",
    rescale: tuple[float, float] = (1.0, -1024.0),
    shuffle_names: bool = True,
    seed: int = 0,
    file_name: Callable[[int], str] | None = None,
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    extra: Callable[[Dataset, int], None] | None = None,
    origin: tuple[float, float, float] | None = None,
    signed: bool | None = None,
    series_number: int = 1,
    frame_of_reference_uid: str | None = None,
) -> SeriesInfo:
    """Write ``phantom`` into ``folder`` as one DICOM file per slice; returns what was written.

    CT is stored so that HU = stored * slope + intercept with ``rescale = (slope, intercept)``,
    unsigned when every stored value is non-negative, else signed (``signed`` forces one). MR is
    stored unsigned without rescale. ``orientation`` picks the axis the slices are taken along.
    ``shuffle_names`` gives random file names and shuffled InstanceNumbers; otherwise names are
    ``IM00001.dcm``... in slice order. ``file_name(k)`` overrides the name of slice ``k`` (slice
    order along the normal). ``extra(ds, k)`` may edit each dataset just before it is saved.
    Every UID not given is derived from the content (phantom, orientation, ``seed``), so writing
    the same input twice gives the same series: to get two distinct series from one phantom, pass
    another ``seed`` or explicit UIDs. With
    ``phi``, every identifying value is planted and every UID written is recorded in ``phi.uids``.
    ``origin`` is the (z, y, x) LPS position of voxel (0, 0, 0) (default: centred on the isocentre).
    """
    if phantom.modality not in _SOP_CLASS:
        raise ValueError(f"phantom modality must be CT or MR, got {phantom.modality!r}")
    geometry = slice_geometry(phantom.shape, phantom.spacing, orientation=orientation, origin=origin)
    check_transfer_syntax(transfer_syntax, geometry.rows, geometry.columns)
    stored, is_signed, use_rescale = _stored_values(phantom, rescale, signed)

    rng = random.Random(f"radforge-dicom-{seed}")
    fingerprint = _fingerprint(phantom, orientation, seed)
    study_uid = study_uid or generate_uid(entropy_srcs=["study", fingerprint])
    series_uid = series_uid or generate_uid(entropy_srcs=["series", fingerprint])
    for_uid = frame_of_reference_uid or generate_uid(entropy_srcs=[series_uid, "frame-of-reference"])
    sop_uids = [
        generate_uid(entropy_srcs=[series_uid, str(seed), orientation, str(phantom.shape), "sop", str(k)])
        for k in range(geometry.n_slices)
    ]
    names = (
        [file_name(k) for k in range(geometry.n_slices)]
        if file_name
        else _file_names(geometry.n_slices, shuffle_names, rng)
    )
    instance_numbers = list(range(1, geometry.n_slices + 1))
    if shuffle_names:
        rng.shuffle(instance_numbers)
    if phi is not None:
        phi.record_uids(study_uid, series_uid, for_uid, *sop_uids)

    base = _series_header(phantom, rng, phi=phi, image_type=tuple(image_type), series_number=series_number)
    base.StudyInstanceUID = study_uid
    base.SeriesInstanceUID = series_uid
    base.FrameOfReferenceUID = for_uid
    base.ImageOrientationPatient = [f"{v:g}" for v in geometry.orientation]
    base.PixelSpacing = [f"{v:g}" for v in geometry.pixel_spacing]
    base.SliceThickness = f"{geometry.slice_spacing:g}"
    base.SpacingBetweenSlices = f"{geometry.slice_spacing:g}"
    base.Rows, base.Columns = geometry.rows, geometry.columns
    base.SamplesPerPixel = 1
    base.PhotometricInterpretation = "MONOCHROME2"
    base.BitsAllocated, base.BitsStored, base.HighBit = 16, 16, 15
    base.PixelRepresentation = 1 if is_signed else 0
    if use_rescale:
        base.RescaleIntercept = f"{rescale[1]:g}"
        base.RescaleSlope = f"{rescale[0]:g}"
        base.RescaleType = "HU"

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    normal = geometry.normal
    # the series attributes are encoded once when nothing but the per-slice elements changes
    fast = (
        _NativeWriter(base, transfer_syntax) if extra is None and transfer_syntax in _PLAIN_NATIVE else None
    )
    paths = []
    for k in range(geometry.n_slices):
        per_slice = Dataset()
        per_slice.SOPInstanceUID = sop_uids[k]
        per_slice.InstanceNumber = instance_numbers[k]
        per_slice.ImagePositionPatient = [f"{v:.4f}" for v in geometry.positions[k]]
        per_slice.SliceLocation = f"{float(np.dot(geometry.positions[k], normal)):.4f}"
        pixels = np.ascontiguousarray(_take_slice(stored, orientation, k))
        path = out / names[k]
        path.parent.mkdir(parents=True, exist_ok=True)
        if fast is not None:
            _set_pixels(per_slice, pixels, transfer_syntax)
            fast.write(path, per_slice)
        else:
            ds = _slice_dataset(base, transfer_syntax)
            ds.update(per_slice)
            ds.file_meta.MediaStorageSOPInstanceUID = sop_uids[k]
            _set_pixels(ds, pixels, transfer_syntax)
            if extra is not None:
                extra(ds, k)
            # explicit encoding, so that ``extra`` may swap in a private transfer syntax UID
            ds.save_as(
                path,
                enforce_file_format=True,
                implicit_vr=transfer_syntax == ImplicitVRLittleEndian,
                little_endian=transfer_syntax != ExplicitVRBigEndian,
            )
        paths.append(str(path))
    return SeriesInfo(
        study_uid=study_uid,
        series_uid=series_uid,
        n_slices=geometry.n_slices,
        transfer_syntax=str(transfer_syntax),
        modality=phantom.modality,
        paths=paths,
        sop_instance_uids=[str(u) for u in sop_uids],
        frame_of_reference_uid=for_uid,
        orientation=orientation,
    )


def _series_header(
    phantom: Phantom,
    rng: random.Random,
    *,
    phi: PlantedPHI | None,
    image_type: tuple[str, ...],
    series_number: int,
) -> Dataset:
    """Attributes shared by every slice: patient, study, equipment, acquisition."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = _SOP_CLASS[phantom.modality]
    ds.Modality = phantom.modality
    ds.ImageType = list(image_type)
    maker, ct_model, mr_model = rng.choice(_MANUFACTURERS)
    ds.Manufacturer = maker
    ds.ManufacturerModelName = ct_model if phantom.modality == "CT" else mr_model
    ds.SoftwareVersions = "radforge-synthetic"
    ds.BodyPartExamined = rng.choice(["CHEST", "ABDOMEN", "CHEST"])
    ds.PatientPosition = "HFS"
    ds.SeriesNumber = series_number
    ds.AcquisitionNumber = 1
    ds.PositionReferenceIndicator = ""
    if rng.random() < 0.5:
        ds.ContrastBolusAgent = "IOMEPROL 350" if phantom.modality == "CT" else "GADOTERATE"
    if phantom.modality == "CT":
        ds.KVP = rng.choice(["100", "120", "120", "140"])
        ds.ConvolutionKernel = rng.choice(["B30f", "STANDARD", "FC13"])
        ds.XRayTubeCurrent = rng.randint(80, 400)
        ds.WindowCenter, ds.WindowWidth = "40", "400"
    else:
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "SE", "NONE", ""
        ds.MRAcquisitionType = "2D"
        ds.RepetitionTime, ds.EchoTime, ds.EchoNumbers = "500", "12", 1
        ds.MagneticFieldStrength = rng.choice(["1.5", "3"])
    if phi is not None:
        phi.plant(ds)
    else:
        ds.PatientName = "SYNTHETIC^PHANTOM"
        ds.PatientID = "SYNTHETIC"
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = "20200101"
        ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = "120000"
        ds.AccessionNumber = ""
        ds.ReferringPhysicianName = ""
        ds.StudyID = "1"
    return ds


class _NativeWriter:
    """Writes files of one uncompressed series, encoding the shared attributes only once.

    pydicom spends ~10 ms per file re-encoding the same ~80 attributes; here each file costs the
    encoding of its own few elements plus a join. The bytes are those ``Dataset.save_as`` writes
    (the tests compare them), so this is purely a speed-up for large benchmark archives.
    """

    def __init__(self, base: Dataset, transfer_syntax: str) -> None:
        self.transfer_syntax = UID(transfer_syntax)
        self.sop_class = base.SOPClassUID
        self.implicit_vr = transfer_syntax == ImplicitVRLittleEndian
        self.little_endian = transfer_syntax != ExplicitVRBigEndian
        self.encodings = convert_encodings(base.get("SpecificCharacterSet", "ISO_IR 6"))
        self.encoded = {elem.tag: self._encode(elem) for elem in base}

    def _encode(self, elem: pydicom.DataElement) -> bytes:
        fp = DicomBytesIO()
        fp.is_implicit_VR, fp.is_little_endian = self.implicit_vr, self.little_endian
        write_data_element(fp, elem, self.encodings)
        return fp.getvalue()

    def write(self, path: Path, per_slice: Dataset) -> None:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = self.sop_class
        meta.MediaStorageSOPInstanceUID = per_slice.SOPInstanceUID
        meta.TransferSyntaxUID = self.transfer_syntax
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = _IMPLEMENTATION_VERSION
        fp = DicomBytesIO()
        fp.is_implicit_VR, fp.is_little_endian = False, True
        write_file_meta_info(fp, meta, enforce_standard=True)
        elements = dict(self.encoded)
        elements.update({elem.tag: self._encode(elem) for elem in per_slice})
        body = b"".join(elements[tag] for tag in sorted(elements))
        path.write_bytes(b"\x00" * 128 + b"DICM" + fp.getvalue() + body)


def _slice_dataset(base: Dataset, transfer_syntax: str) -> Dataset:
    """Return a fresh dataset with the series attributes (sequences copied, not shared)."""
    ds = Dataset()
    for elem in base:
        ds.add(pydicom.DataElement(elem.tag, elem.VR, elem.value))
    if any(elem.VR == "SQ" for elem in base):  # nested items must not be shared between files
        for elem in base:
            if elem.VR == "SQ":
                ds[elem.tag].value = pydicom.Sequence([_copy(item) for item in elem.value])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = base.SOPClassUID
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = _IMPLEMENTATION_VERSION
    ds.file_meta = meta
    return ds


def _copy(item: Dataset) -> Dataset:
    out = Dataset()
    for elem in item:
        out.add(pydicom.DataElement(elem.tag, elem.VR, elem.value))
    return out


def _set_pixels(ds: Dataset, pixels: np.ndarray, transfer_syntax: str) -> None:
    """Native pixel bytes in the transfer syntax's byte order, or compressed through pydicom's encoders."""
    if transfer_syntax == ExplicitVRBigEndian:
        ds.PixelData = pixels.astype(pixels.dtype.newbyteorder(">")).tobytes()
        ds["PixelData"].VR = "OW"
        return
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    ds["PixelData"].VR = "OW"
    if transfer_syntax in NATIVE_TRANSFER_SYNTAXES:
        return
    plugin = ""
    if transfer_syntax == RLELossless:  # pylibjpeg-rle is ~5x faster than pydicom's own
        plugin = "pylibjpeg" if "pylibjpeg" in encoders.RLELosslessEncoder.available_plugins else ""
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian  # compress() starts from native data
    ds.compress(transfer_syntax, encoding_plugin=plugin, generate_instance_uid=False)
