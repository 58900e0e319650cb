"""Enhanced multi-frame 4D MR (an fMRI run in one object): every volume's axial slices as frames.

``write_enhanced_4d`` writes one Enhanced MR Image Storage object whose frames are the slices of
``len(volumes)`` volumes in acquisition order (volume-major). Frames of different volumes share
positions: they are told apart only by the per-frame Frame Content macro (TemporalPositionIndex,
with StackID and InStackPositionNumber), as scanners write fMRI and dynamic series. Geometry is
in the functional groups (PixelMeasures and PlaneOrientation shared, PlanePosition per frame).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, generate_uid

from radforge.synthetic.mosaic import mr_dataset
from radforge.synthetic.phi import PlantedPHI

ENHANCED_MR_STORAGE = UID("1.2.840.10008.5.1.4.1.1.4.1")


def _item(**values: object) -> Sequence:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return Sequence([item])


def write_enhanced_4d(
    volumes: list[np.ndarray],
    path: str | Path,
    *,
    spacing: tuple[float, float, float],
    origin: tuple[float, float, float],
    seed: int = 0,
    phi: PlantedPHI | None = None,
) -> tuple[str, str]:
    """Write ``volumes`` (each ``(z, y, x)`` uint16, canonical LPS, axial) as one 4D object.

    ``spacing`` is (z, y, x) mm, ``origin`` the LPS (x, y, z) position of voxel (0, 0, 0). Returns
    (StudyInstanceUID, SeriesInstanceUID), derived from ``seed``.
    """
    n, rows, cols = volumes[0].shape
    sz, sy, sx = spacing
    study_uid = generate_uid(entropy_srcs=["enhanced-4d-study", str(seed)])
    series_uid = generate_uid(entropy_srcs=["enhanced-4d-series", str(seed)])
    sop = generate_uid(entropy_srcs=[series_uid, "sop"])
    image_type = ("ORIGINAL", "PRIMARY", "M", "NONE")
    ds = mr_dataset(
        ENHANCED_MR_STORAGE, sop, study_uid, series_uid, manufacturer="PHILIPS", image_type=image_type
    )
    ds.NumberOfFrames = n * len(volumes)
    ds.Rows, ds.Columns = rows, cols
    shared = Dataset()
    shared.PixelMeasuresSequence = _item(PixelSpacing=[sy, sx], SliceThickness=sz)
    shared.PlaneOrientationSequence = _item(ImageOrientationPatient=[1, 0, 0, 0, 1, 0])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for t in range(len(volumes)):
        for k in range(n):
            frame = Dataset()
            position = [origin[0], origin[1], origin[2] + k * sz]
            frame.PlanePositionSequence = _item(ImagePositionPatient=position)
            frame.FrameContentSequence = _item(
                TemporalPositionIndex=t + 1, StackID="1", InStackPositionNumber=k + 1
            )
            per_frame.append(frame)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    if phi is not None:
        phi.plant(ds)
        phi.record_uids(study_uid, series_uid, sop, ds.FrameOfReferenceUID)
    ds.PixelData = np.ascontiguousarray(np.concatenate([v.astype(np.uint16) for v in volumes])).tobytes()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return str(study_uid), str(series_uid)
