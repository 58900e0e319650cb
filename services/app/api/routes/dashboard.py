"""``/dashboard``: a page with live charts of throughput, training and job states, reading the service's API.

The page is static (no data in it); its script asks for the API token (kept in the browser tab's
session storage, or given in the URL fragment ``#token=...``, which browsers never send to servers),
reads the last hour of series from ``/api/v1/history`` and polls ``/api/v1/overview``. A strict
Content-Security-Policy allows only this origin.

Eval reports open through signed, expiring links (:mod:`radforge.services.app.report_links`) the
overview hands out: ``/dashboard/reports/JOB/EXPIRES/SIGNATURE/report.html`` and its plots.
"""

from __future__ import annotations

import time
from pathlib import Path

from fastapi import APIRouter, HTTPException, Response, status

from radforge.files import FileRefused, read_bounded
from radforge.services.app.api.deps import ServiceDep
from radforge.services.app.models import JobState
from radforge.services.app.report_links import PREFIX, link_valid, report_file, report_folder

router = APIRouter(tags=["dashboard"], include_in_schema=False)
ASSETS = Path(__file__).resolve().parents[2] / "dashboard"
FILES = {
    "": ("index.html", "text/html; charset=utf-8"),
    "app.js": ("app.js", "text/javascript"),
    "app.css": ("app.css", "text/css"),
}
CSP = "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
# a report is static HTML with an inline stylesheet and its plots beside it: no script at all
REPORT_CSP = (
    "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; base-uri 'none'; frame-ancestors 'none'"
)
REPORT_MAX_BYTES = 64 << 20


@router.get("/dashboard")
@router.get("/dashboard/{asset}")
def dashboard(asset: str = "") -> Response:
    """The dashboard page and its two assets."""
    if asset not in FILES:
        raise HTTPException(status_code=status.HTTP_404_NOT_FOUND, detail="no such dashboard file")
    name, media = FILES[asset]
    return Response(
        content=(ASSETS / name).read_bytes(),
        media_type=media,
        headers={
            "Content-Security-Policy": CSP,
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-cache",
        },
    )


@router.get(PREFIX + "/{job_id}/{expires}/{sig}/{name:path}")
def report(job_id: str, expires: int, sig: str, name: str, service: ServiceDep) -> Response:
    """An eval job's report page or one of its plots, for a link signed by the service (no token)."""
    if not link_valid(service.secrets.api_token, job_id, expires, sig, now=time.time()):
        raise HTTPException(
            status_code=status.HTTP_403_FORBIDDEN,
            detail="the report link is not valid or has expired: open the report from the dashboard again",
        )
    job = service.store.get_job(job_id)
    folder = None
    if job is not None and job.kind == "eval" and job.state == JobState.SUCCEEDED:
        folder = report_folder(job.result, job.spec.get("output_uri"))
    path = report_file(folder, name) if folder is not None else None
    try:
        content = read_bounded(path, limit=REPORT_MAX_BYTES) if path is not None else None
    except (OSError, FileRefused):
        content = None
    if path is None or content is None:
        raise HTTPException(status_code=status.HTTP_404_NOT_FOUND, detail="no such report file")
    return Response(
        content=content,
        media_type="text/html; charset=utf-8" if path.suffix == ".html" else "image/png",
        headers={
            "Content-Security-Policy": REPORT_CSP,
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "private, no-store",
            "Referrer-Policy": "no-referrer",
        },
    )
