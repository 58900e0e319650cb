"""De-identification by allow-list (DICOM PS3.15 Annex E, Basic Application Level Confidentiality Profile).

radforge never copies a DICOM header into its output. The only values that leave a job are the
ones this module builds from an explicit allow-list of attributes that training and evaluation
need (modality, body part, manufacturer, pixel spacing, slice thickness, kVp, contrast flag, and,
only when configured, sex and a decade age bucket), each sanitised to a bounded, PHI-free form.
Everything Annex E removes (names, IDs, birth dates, accession numbers, institution and physician
names, free-text descriptions, dates and times, private tags, original UIDs) is simply never read
into the output. Study and series identities become salted hashes: without the secret salt they
cannot be linked back to UIDs, and the salt is never written out.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any

_BODY_PART = re.compile(r"[^A-Z0-9]")
_MANUFACTURER = re.compile(r"[^A-Za-z0-9 .&-]")
_AGE = re.compile(r"^(\d{1,3})([DWMY])$")

# DICOM PS3.16 defined terms are short upper-case words; anything longer is free text, dropped.
_MAX_BODY_PART = 16
_MAX_MANUFACTURER = 40


def salted_key(salt: bytes, *parts: str, length: int = 24) -> str:
    """HMAC-SHA256 of ``parts`` under ``salt``, hex, truncated to ``length`` characters (96 bits)."""
    msg = "\x1f".join(parts).encode()
    return hmac.new(salt, msg, hashlib.sha256).hexdigest()[:length]


def body_part(value: Any) -> str | None:
    """BodyPartExamined as a short upper-case defined term, or None if absent or free text."""
    if not value:
        return None
    text = _BODY_PART.sub("", str(value).upper())
    if not text or len(text) > _MAX_BODY_PART:
        return None
    return text


def manufacturer(value: Any) -> str | None:
    """The equipment manufacturer (not identifying under Annex E), bounded and character-filtered."""
    if not value:
        return None
    text = _MANUFACTURER.sub("", str(value)).strip()
    return text[:_MAX_MANUFACTURER] or None


def sex(value: Any) -> str | None:
    """PatientSex as M/F/O or None."""
    text = str(value or "").strip().upper()
    return text if text in ("M", "F", "O") else None


def age_bucket(value: Any) -> str | None:
    """PatientAge ('045Y', '006M', ...) as a decade bucket ('40-49'; '90+' caps the tail), or None."""
    m = _AGE.match(str(value or "").strip().upper())
    if not m:
        return None
    n, unit = int(m.group(1)), m.group(2)
    years = {"D": n / 365.25, "W": n / 52.18, "M": n / 12.0, "Y": float(n)}[unit]
    if years >= 90:
        return "90+"
    lo = int(years // 10) * 10
    return f"{lo}-{lo + 9}"


def positive_float(value: Any) -> float | None:
    """A finite positive number (kVp, thickness) or None."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if f > 0 and f < 1e6 else None


def silence_identifying_library_logs() -> None:
    """Stop third-party libraries from logging what they read.

    pydicom logs warnings that name the file being parsed (object paths can hold patient names)
    and can quote header values; radforge reports problems through its own PHI-free reasons instead.
    """
    import logging
    import warnings

    logging.getLogger("pydicom").setLevel(logging.CRITICAL + 1)
    warnings.filterwarnings("ignore", module=r"pydicom(\..*)?$")
    warnings.filterwarnings("ignore", module=r"nibabel(\..*)?$")
