r"""Siemens-style MOSAIC series: each instance tiles the axial slices of one volume (fMRI / DWI).

``write_mosaic_series`` writes one MR instance per volume. A volume of ``n`` slices ``(r, c)`` is
laid out row by row on a square grid of ``g = ceil(sqrt(n))`` tiles a side (an ``(g*r, g*c)``
image, unused tiles zero), ImageType ends with ``MOSAIC``, and ImagePositionPatient is what Siemens
writes: the top-left of the whole tiled image, placed so that its centre is the first slice's
centre, i.e. the first slice's top-left minus ``row_dir * col_spacing * (g*c - c) / 2 + col_dir *
row_spacing * (g*r - r) / 2``. With ``csa`` the private Siemens CSA Image Header (CSA2, ``SV10``)
states ``NumberOfImagesInMosaic`` and ``SliceNormalVector``; without it a reader has only the
Acquisition Matrix (``r\\0\\0\\c``) to go by.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from radforge.synthetic.phi import PlantedPHI

_CSA_CREATOR = "SIEMENS CSA HEADER"
_AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
_CSA_VR = {"SliceNormalVector": "FD", "AcquisitionMatrixText": "SH"}  # others: IS


@dataclass
class MosaicSeries:
    """What :func:`write_mosaic_series` wrote: one path per volume, in acquisition order."""

    study_uid: str
    series_uid: str
    paths: list[str]
    n_slices: int  # slices per volume
    grid: int  # tiles per side
    sop_instance_uids: list[str] = field(default_factory=list)


def mr_dataset(
    sop_class: str,
    sop: str,
    study_uid: str,
    series_uid: str,
    *,
    manufacturer: str,
    image_type: tuple[str, ...],
) -> Dataset:
    """An MR image's identity, file meta (explicit VR little endian) and placeholder patient."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[series_uid, "for"])
    ds.Modality, ds.Manufacturer, ds.ImageType = "MR", manufacturer, list(image_type)
    ds.PatientName, ds.PatientID, ds.PatientSex = "SYNTHETIC^PHANTOM", "SYNTHETIC", "O"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    return ds


def build_csa2(tags: dict[str, list[str]]) -> bytes:
    """Write ``tags`` (name -> text values) as a Siemens CSA2 (``SV10``) header."""
    out = bytearray(b"SV10\x04\x03\x02\x01" + struct.pack("<II", len(tags), 77))
    for name, values in tags.items():
        n = len(values)
        vr = _CSA_VR.get(name, "IS").encode().ljust(4, b"\x00")
        out += struct.pack("<64si4s3i", name.encode("latin-1"), n, vr, 6, n, 77)
        for value in values:
            data = value.encode("latin-1") + b"\x00"
            out += struct.pack("<4i", len(data), len(data), 77, len(data))
            out += data + b"\x00" * (-len(data) % 4)
    return bytes(out)


def tile(volume: np.ndarray) -> np.ndarray:
    """Lay out the slices ``(n, r, c)`` of ``volume`` as one mosaic image (row by row, zero padding)."""
    n, r, c = volume.shape
    g = math.ceil(math.sqrt(n))
    padded = np.zeros((g * g, r, c), dtype=volume.dtype)
    padded[:n] = volume
    return padded.reshape(g, g, r, c).swapaxes(1, 2).reshape(g * r, g * c)


def write_mosaic_series(
    volumes: list[np.ndarray],
    folder: str | Path,
    *,
    spacing: tuple[float, float, float],
    origin: tuple[float, float, float],
    csa: bool = True,
    seed: int = 0,
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC"),
    acquisition_matrix: tuple[int, int, int, int] | None = None,
    phi: PlantedPHI | None = None,
) -> MosaicSeries:
    """Write each ``(z, y, x)`` uint16 volume (canonical LPS, axial) as one MOSAIC MR instance.

    ``spacing`` is (z, y, x) mm and ``origin`` the LPS (x, y, z) position of voxel (0, 0, 0). UIDs are
    derived from ``seed``: the same call writes the same series. ``acquisition_matrix`` replaces the
    true ``(r, 0, 0, c)`` (e.g. zeros, as some reconstructions leave it). With ``phi`` every
    identifying value is planted and every UID recorded.
    """
    n, r, c = volumes[0].shape
    g = math.ceil(math.sqrt(n))
    sz, sy, sx = spacing
    row_dir, col_dir = np.asarray(_AXIAL[:3]), np.asarray(_AXIAL[3:])
    mosaic_ipp = np.asarray(origin) - row_dir * sx * (g * c - c) / 2 - col_dir * sy * (g * r - r) / 2
    study_uid = generate_uid(entropy_srcs=["mosaic-study", str(seed)])
    series_uid = generate_uid(entropy_srcs=["mosaic-series", str(seed), str(csa)])
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[str] = []
    sops: list[str] = []
    for t, volume in enumerate(volumes):
        sop = generate_uid(entropy_srcs=[series_uid, "volume", str(t)])
        ds = mr_dataset(
            MRImageStorage, sop, study_uid, series_uid, manufacturer="SIEMENS", image_type=image_type
        )
        ds.InstanceNumber, ds.AcquisitionNumber = t + 1, t + 1
        ds.ImagePositionPatient = [f"{v:.4f}" for v in mosaic_ipp]
        ds.ImageOrientationPatient = [f"{v:g}" for v in _AXIAL]
        ds.PixelSpacing = [f"{sy:g}", f"{sx:g}"]
        ds.SliceThickness = ds.SpacingBetweenSlices = f"{sz:g}"
        ds.AcquisitionMatrix = list(acquisition_matrix or (r, 0, 0, c))
        ds.Rows, ds.Columns = g * r, g * c
        if csa:
            block = ds.private_block(0x0029, _CSA_CREATOR, create=True)
            header = build_csa2(
                {
                    "NumberOfImagesInMosaic": [str(n)],
                    "SliceNormalVector": ["0", "0", "1"],
                    "AcquisitionMatrixText": [f"{r}*{c}"],
                }
            )
            block.add_new(0x10, "OB", header)
        if phi is not None:
            phi.plant(ds)
            phi.record_uids(study_uid, series_uid, sop, ds.FrameOfReferenceUID)
        ds.PixelData = np.ascontiguousarray(tile(volume.astype(np.uint16))).tobytes()
        path = out / f"MOSAIC{t + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(str(path))
        sops.append(str(sop))
    return MosaicSeries(study_uid, series_uid, paths, n, g, sops)
