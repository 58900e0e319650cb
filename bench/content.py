"""Content analysis speed: ``radforge.ingest.content.analyse`` on 512x512 CT and MR slices, one core.

CPU time per slice (process time, so less sensitive to a shared machine; best of ``--rounds``
passes), each slice freshly copied before its call so it is in cache as a just-decoded slice is.
Inputs: CT phantoms (body of varying size, lungs, table), the same as MR-like uint16, and air-only
slices. As a load-independent yardstick the same passes time the decode floor, ``pydicom.dcmread``
(from memory) + ``pixel_array`` + HU, and report analyse / decode (ingest has ~1 ms per slice).

    .venv/bin/python -m bench.content [--slices 200] [--rounds 10]

Ends with one JSON line: {"bench": "content", "ms_per_slice": ..., ...} (CT, the ingest default).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from radforge.ingest.content import analyse

log = logging.getLogger("bench.content")


def phantom_slices(n: int, *, seed: int = 0) -> list[np.ndarray]:
    """CT-like 512x512 int16 HU slices: an elliptic body of varying size with lungs and a table, on air."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:512, :512]
    out = []
    for i in range(n):
        scale = 0.3 + 0.7 * (i % 10) / 9  # from a small cross-section to a full torso
        img = np.full((512, 512), -1000, dtype=np.int16)
        body = ((yy - 250) / (190 * scale)) ** 2 + ((xx - 256) / (230 * scale)) ** 2 < 1
        img[body] = 40
        for side in (-1, 1):
            cx = 256 + side * 66 * scale
            lung = ((yy - 230) / (90 * scale)) ** 2 + ((xx - cx) / (50 * scale)) ** 2 < 1
            img[lung] = -800
        img[470:480, 60:452] = 300  # table
        img += rng.integers(-30, 30, size=img.shape, dtype=np.int16)
        out.append(img)
    return out


def dicom_bytes(hu: np.ndarray) -> bytes:
    """An uncompressed CT instance holding ``hu`` (stored as HU + 1024)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = hu.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelData = (hu.astype(np.int32) + 1024).astype(np.uint16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def pydicom_decode(raw: bytes) -> np.ndarray:
    ds = pydicom.dcmread(io.BytesIO(raw))
    return ds.pixel_array * np.float32(ds.RescaleSlope) + np.float32(ds.RescaleIntercept)


def cpu_ms_per_item(fn: Callable[[object], object], items: Sequence[object]) -> float:
    """CPU ms per call, each call on a freshly written copy (cache-warm, as a just-decoded slice is)."""
    total = 0
    for item in items:
        fresh = item.copy() if isinstance(item, np.ndarray) else item
        start = time.process_time_ns()
        fn(fresh)
        total += time.process_time_ns() - start
    return total / len(items) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ct = phantom_slices(args.slices)
    mr = [np.clip(s.astype(np.int32) + 1000, 0, None).astype(np.uint16) for s in ct]
    air = [np.full((512, 512), -1000, dtype=np.int16)] * args.slices
    raws = [dicom_bytes(s) for s in ct]
    runs: dict[str, tuple[Callable[[object], object], Sequence[object]]] = {
        "ct": (lambda s: analyse(s, modality="CT"), ct),
        "mr": (lambda s: analyse(s, modality="MR"), mr),
        "air": (lambda s: analyse(s, modality="CT"), air),
        "decode": (pydicom_decode, raws),
    }
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(args.rounds):  # interleaved, so a burst of load hits every measurement alike
        for name, (fn, items) in runs.items():
            best[name] = min(best[name], cpu_ms_per_item(fn, items))
    ratio = best["ct"] / best["decode"]
    log.info(
        "analyse 512x512: CT %.3f ms, MR %.3f ms, air-only %.3f ms; pydicom decode %.3f ms; CT/decode %.2f",
        best["ct"], best["mr"], best["air"], best["decode"], ratio,
    )  # fmt: skip
    result = {
        "bench": "content",
        "ms_per_slice": round(best["ct"], 4),
        "mr_ms_per_slice": round(best["mr"], 4),
        "air_ms_per_slice": round(best["air"], 4),
        "pydicom_decode_ms_per_slice": round(best["decode"], 4),
        "ratio_vs_decode": round(ratio, 3),
        "slices": args.slices,
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
