"""Decode speed: pydicom's pixel pipeline vs radforge.ingest.dicom on the same uncompressed 512x512 CT
series.

Writes a synthetic CT series (int16, RescaleIntercept -1024, a scanner-like header of ~90 elements
with a nested sequence and private tags) to a temporary folder, warms the page cache, then times
one core on the same files:

  (a) ``pydicom.dcmread(path)`` + ``ds.pixel_array`` + HU as float32 (slope/intercept),
  (b) ``radforge.ingest.dicom.decode_instance(path.read_bytes())`` (float32 HU as well).

Each is the best of ``--repeats`` passes over all files (passes of (a) and (b) alternate).
Values are checked to be identical.
Ends with one JSON line: {"bench": "decode", "pydicom_slices_per_s", "radforge_slices_per_s", "ratio"}.

    .venv/bin/python bench/decode.py [--slices 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from radforge.ingest.dicom import decode_instance

SIZE = 512


def _slice_pixels(index: int, rng: np.random.Generator) -> np.ndarray:
    """Stored values (HU + 1024) of an elliptical body with a spine and noise, varying along z."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    radius = 0.85 + 0.1 * np.sin(index / 15)
    body = ((yy - 256) / (200 * radius)) ** 2 + ((xx - 256) / (240 * radius)) ** 2 < 1
    spine = (yy - 330) ** 2 + (xx - 256) ** 2 < 22**2
    hu = np.where(body, 40, -1000) + np.where(spine, 700, 0) + rng.integers(-15, 16, (SIZE, SIZE))
    return (hu + 1024).astype(np.int16)


def _write_series(folder: Path, slices: int) -> list[Path]:
    rng = np.random.default_rng(0)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    paths = []
    for index in range(slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = "20240101"
        ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = "120000"
        ds.AccessionNumber, ds.Modality, ds.Manufacturer = "A1", "CT", "BENCH"
        ds.InstitutionName, ds.ReferringPhysicianName = "Bench Hospital", "Doe^Ref"
        ds.StationName, ds.StudyDescription, ds.SeriesDescription = "CT01", "CT CHEST", "AXIAL 1mm"
        ds.ManufacturerModelName = "Model"
        ds.ReferencedImageSequence = Sequence([Dataset()])
        ds.ReferencedImageSequence[0].ReferencedSOPClassUID = CTImageStorage
        ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID = generate_uid()
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = (
            "Bench^Patient",
            "P1",
            "19700101",
            "O",
        )
        ds.PatientAge = "054Y"
        ds.BodyPartExamined, ds.SliceThickness, ds.KVP = "CHEST", "1.0", "120"
        ds.DataCollectionDiameter, ds.SoftwareVersions, ds.ProtocolName = "500", "1.0", "CHEST"
        ds.ReconstructionDiameter, ds.DistanceSourceToDetector, ds.DistanceSourceToPatient = (
            "400",
            "1000",
            "540",
        )
        ds.GantryDetectorTilt, ds.TableHeight, ds.RotationDirection = "0", "150", "CW"
        ds.ExposureTime, ds.XRayTubeCurrent, ds.Exposure = "500", "200", "100"
        ds.FilterType, ds.GeneratorPower, ds.FocalSpots = "BODY", "24", "1.2"
        ds.ConvolutionKernel, ds.PatientPosition = "B30f", "HFS"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyID, ds.SeriesNumber, ds.AcquisitionNumber, ds.InstanceNumber = "1", 2, 1, index + 1
        ds.ImagePositionPatient = [-200.0, -200.0, -float(index)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PositionReferenceIndicator, ds.SliceLocation = "", str(-float(index))
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = SIZE
        ds.PixelSpacing = [0.78125, 0.78125]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 1
        ds.WindowCenter, ds.WindowWidth = "40", "400"
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
        ds.add_new(0x00090010, "LO", "BENCH PRIVATE")
        for element in range(0x1001, 0x1020):
            ds.add_new(0x00090000 | element, "LO", f"private value {element}")
        ds.PixelData = _slice_pixels(index, rng).tobytes()
        path = folder / f"slice_{index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _pydicom_hu(path: Path) -> np.ndarray:
    ds = pydicom.dcmread(path)
    return ds.pixel_array.astype(np.float32) * np.float32(ds.RescaleSlope) + np.float32(ds.RescaleIntercept)


def _radforge_hu(path: Path) -> np.ndarray:
    return decode_instance(path.read_bytes()).pixels[0]


def _best_rates(
    paths: list[Path], decoders: dict[str, Callable[[Path], np.ndarray]], repeats: int
) -> dict[str, float]:
    """Slices/s of each decoder: best pass of ``repeats``, passes interleaved so load hits both alike."""
    best = dict.fromkeys(decoders, float("inf"))
    for _ in range(repeats):
        for name, decode in decoders.items():
            start = time.perf_counter()
            for path in paths:
                decode(path)
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: len(paths) / seconds for name, seconds in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="radforge-bench-decode-") as tmp:
        paths = _write_series(Path(tmp), args.slices)
        for path in paths:  # warm page cache; check both give the same HU
            np.testing.assert_array_equal(_pydicom_hu(path), _radforge_hu(path))
        rates = _best_rates(paths, {"pydicom": _pydicom_hu, "radforge": _radforge_hu}, args.repeats)
    pydicom_rate, radforge_rate = rates["pydicom"], rates["radforge"]
    result = {
        "bench": "decode",
        "slices": args.slices,
        "pydicom_slices_per_s": round(pydicom_rate, 1),
        "radforge_slices_per_s": round(radforge_rate, 1),
        "ratio": round(radforge_rate / pydicom_rate, 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
