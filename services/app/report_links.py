"""Links to eval reports that a browser can follow: signed, expiring, for one job's report only.

The API wants a bearer token in a header, which a link cannot carry. The dashboard gets, with each
overview it polls, a path like ``/dashboard/reports/JOB/EXPIRES/SIGNATURE/report.html``: an HMAC of
the job id and expiry time keyed by the API token (as object stores presign URLs). It opens the
report (and, relative to it, its ``plots/*.png``) for :data:`LINK_SECONDS`, and nothing else: no
other job, no other file. Rotating the API token voids every link.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path
from typing import Any

LINK_SECONDS = 3600
PREFIX = "/dashboard/reports"
REPORT = "report.html"
# what a link opens, relative to the report's folder: the page and its few-shot plots
FILE_PATTERN = re.compile(r"^(report\.html|plots/[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\.png)$")


def signature(secret: str, job_id: str, expires: int) -> str:
    """The link's HMAC-SHA256 (hex) of ``job_id`` and ``expires``, keyed by ``secret`` (the API token)."""
    message = f"radforge-report-link\n{job_id}\n{expires}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def report_link(secret: str, job_id: str, *, now: float, seconds: int = LINK_SECONDS) -> str:
    """The path of ``job_id``'s report, valid for ``seconds`` from ``now``."""
    expires = int(now) + seconds
    return f"{PREFIX}/{job_id}/{expires}/{signature(secret, job_id, expires)}/{REPORT}"


def link_valid(secret: str, job_id: str, expires: int, sig: str, *, now: float) -> bool:
    """True if ``sig`` signs ``job_id`` and ``expires`` and the link has not expired."""
    return now < expires and hmac.compare_digest(sig.encode(), signature(secret, job_id, expires).encode())


def report_folder(result: dict[str, Any] | None, output_uri: object) -> Path | None:
    """The folder of a finished eval job's report: its ``report.html``'s folder, when that is its output.

    None when the job has no report, or the result names a file outside the job's own output folder
    (the result file is written by the job process: it decides nothing about what the service reads).
    """
    report = (result or {}).get("report")
    html = report.get("html") if isinstance(report, dict) else None
    if not isinstance(html, str) or not isinstance(output_uri, str) or "://" in output_uri:
        return None
    folder = Path(output_uri).resolve()
    page = Path(html).resolve()
    return folder if page == folder / REPORT else None


def report_file(folder: Path, name: str) -> Path | None:
    """``name`` (:data:`FILE_PATTERN`) inside ``folder``, symlinks resolved; None for anything else."""
    if not FILE_PATTERN.fullmatch(name):
        return None
    path = (folder / name).resolve()
    return path if path.is_relative_to(folder) else None
