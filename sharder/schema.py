"""The sample schema: the one contract between ingest (writer) and trainer/eval (readers).

Every sample is one 2D slice in one plane and one intensity representation ("window"):

- ``key``   str: ``<series key>/<plane>/<slice index:05d>/<window>`` — unique and stable across runs
  (the series key is a salted hash, so it reveals nothing);
- ``image`` ndarray (dtype and shape stored per sample): int16 HU for raw CT, uint8 for a windowed
  preset or percentile-normalised MR, uint16 for raw MR;
- ``fg``    ndarray uint8 (ceil(H/p), ceil(W/p)): per-cell foreground fraction scaled to 0..255,
  p = ``meta["fg_patch"]`` pixels (16 by default);
- ``meta``  json: de-identified attributes (see :data:`META_FIELDS`).

The version is stored in the dataset's root index; readers refuse a dataset whose major version differs.
"""

from __future__ import annotations

from typing import Any, Final

SCHEMA_VERSION: Final = "1.0"

# MDS column name -> MDS encoding. ``ndarray`` without a dtype stores dtype and shape per sample,
# which lets CT (int16), windows (uint8) and MR (uint16) share one dataset.
COLUMNS: Final[dict[str, str]] = {
    "key": "str",
    "image": "ndarray",
    "fg": "ndarray",
    "meta": "json",
}

# What ``meta`` holds. Nothing here identifies a patient: only acquisition physics, geometry,
# anatomy and salted keys. ``sex`` and ``age_bucket`` are written only when the config keeps them.
META_FIELDS: Final[dict[str, str]] = {
    "schema": "schema version of this sample",
    "series_key": "salted hash of (study, series, sub-series); stable across runs with the same salt",
    "study_key": "salted hash of the study",
    "archive_id": "id of the archive (source) the slice came from, as given to ingest",
    "source_format": "dicom | nifti",
    "modality": "CT | MR",
    "plane": "axial | coronal | sagittal",
    "window": "raw | a CT preset name (soft_tissue, lung, ...) | pct (MR percentile-normalised)",
    "slice_index": "index of the slice along the plane's normal, 0-based, in the canonical volume",
    "series_length": "number of slices of the series in this plane before empty-slice filtering",
    "pixel_spacing": "[row, col] mm",
    "slice_spacing": "distance between neighbouring slices in this plane, mm",
    "slice_thickness": "nominal slice thickness (DICOM SliceThickness), mm, or null",
    "fg_patch": "cell size (pixels) of the fg map",
    "fg_fraction": "foreground fraction of the slice (0..1)",
    "body_box": "[row0, col0, row1, col1] half-open pixel box of the body, or null",
    "body_part": "BodyPartExamined, upper-case, or null",
    "manufacturer": "equipment manufacturer, or null",
    "kvp": "CT tube voltage (kV), or null",
    "contrast": "true if a contrast agent is recorded, false if not, null if unknown",
    "sex": "M | F | O | null (only when kept by config)",
    "age_bucket": "decade bucket such as '40-49' or '90+' (only when kept by config), or null",
    "gantry_tilt_deg": "gantry tilt of the acquisition in degrees",
}


class SchemaVersionError(ValueError):
    """The dataset was written with a schema this reader does not understand."""


def check_compatible(found: str | None, *, expected: str = SCHEMA_VERSION, where: str = "dataset") -> None:
    """Refuse a dataset whose schema major version differs from the reader's, naming both."""
    if found is None:
        raise SchemaVersionError(
            f"{where} has no radforge schema version (reader expects {expected}); "
            "was it written by radforge ingest?"
        )
    if found.split(".")[0] != expected.split(".")[0]:
        raise SchemaVersionError(
            f"{where} was written with sample schema {found}, this reader understands {expected}; "
            "re-ingest it or use a matching radforge release"
        )


def sample_key(series_key: str, plane: str, index: int, window: str) -> str:
    """The stable unique key of one sample."""
    return f"{series_key}/{plane}/{index:05d}/{window}"


def meta_defaults() -> dict[str, Any]:
    """A meta dict with every field present (None), so every sample carries the same keys."""
    return {name: None for name in META_FIELDS}
