"""Typed ingest errors and the closed set of reasons a series can be skipped or quarantined.

Every object in an archive ends in the series manifest with a status and, unless it was ingested,
one of these reasons plus a one-line detail. Details never contain identifying values: they name
tags, sizes and counts, never header values or object paths.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """Outcome of one series (or of one unreadable object) in the manifest."""

    INGESTED = "ingested"
    SKIPPED = "skipped"  # by rule: not a cross-sectional CT/MR image
    QUARANTINED = "quarantined"  # bad input: kept out, with the reason, nothing else lost


class Reason(StrEnum):
    """Why a series was not ingested. Values are stable: they are stored in manifests and metrics."""

    # skipped by rule
    NOT_IMAGE = "not_image"  # SR, PR, RTSTRUCT/RTPLAN, SEG, dose reports, ECG, ...
    LOCALIZER = "localizer"  # ImageType contains LOCALIZER / SCOUT
    SECONDARY_CAPTURE = "secondary_capture"
    BURNED_IN_ANNOTATION = "burned_in_annotation"
    UNSUPPORTED_MODALITY = "unsupported_modality"  # not CT or MR (CR, US, NM, ...)
    ALREADY_INGESTED = "already_ingested"  # same salted series key already committed
    EXCLUDED_BY_CONFIG = "excluded_by_config"  # e.g. a modality this dataset does not take
    MOSAIC_UNDECODABLE = "mosaic_undecodable"  # Siemens MOSAIC whose slice count cannot be established
    VOLUME_NOT_KEPT = "volume_not_kept"  # 4D: volumes beyond volumes.max_per_series (chosen evenly)
    NON_MAGNITUDE = "non_magnitude_image"  # ImageType phase / real / imaginary (image_types.skip)
    # quarantined: bad input
    UNREADABLE = "unreadable"  # zero-byte, truncated header, not DICOM/NIfTI, I/O error
    NO_PIXEL_DATA = "no_pixel_data"
    UNSUPPORTED_TRANSFER_SYNTAX = "unsupported_transfer_syntax"
    DECODE_FAILED = "decode_failed"  # pixel data present but could not be decoded (truncated, corrupt)
    ABSURD_DIMENSIONS = "absurd_dimensions"  # refused before allocating
    INCONSISTENT_GEOMETRY = "inconsistent_geometry"  # missing/degenerate orientation or positions
    DUPLICATE_POSITIONS = "duplicate_positions"
    NON_UNIFORM_SPACING = "non_uniform_spacing"
    NON_FINITE_VALUES = "non_finite_values"  # NaN / inf in a NIfTI volume
    NO_CONTENT = "no_content"  # every slice fell below the foreground threshold


SKIP_REASONS = frozenset(
    {
        Reason.NOT_IMAGE,
        Reason.LOCALIZER,
        Reason.SECONDARY_CAPTURE,
        Reason.BURNED_IN_ANNOTATION,
        Reason.UNSUPPORTED_MODALITY,
        Reason.ALREADY_INGESTED,
        Reason.EXCLUDED_BY_CONFIG,
        Reason.MOSAIC_UNDECODABLE,
        Reason.VOLUME_NOT_KEPT,
        Reason.NON_MAGNITUDE,
        Reason.NO_CONTENT,
    }
)


def status_for(reason: Reason) -> Status:
    """Status a series gets when it stops for ``reason``."""
    return Status.SKIPPED if reason in SKIP_REASONS else Status.QUARANTINED


class IngestError(Exception):
    """A series (or object) cannot be ingested; carries a stable reason and a PHI-free detail."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class SourceError(RuntimeError):
    """The job cannot run: source missing or empty, destination not writable, ..."""
