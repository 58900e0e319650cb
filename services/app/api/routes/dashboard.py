"""``/dashboard``: a page with live charts of throughput and job states, reading the service's own API.

The page is static (no data in it); its script asks for the API token (kept in the browser tab's
session storage, or given in the URL fragment ``#token=...``, which browsers never send to servers)
and polls ``/api/v1/overview``. A strict Content-Security-Policy allows only this origin.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, Response, status

router = APIRouter(tags=["dashboard"], include_in_schema=False)
ASSETS = Path(__file__).resolve().parents[2] / "dashboard"
FILES = {
    "": ("index.html", "text/html; charset=utf-8"),
    "app.js": ("app.js", "text/javascript"),
    "app.css": ("app.css", "text/css"),
}
CSP = "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"


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
