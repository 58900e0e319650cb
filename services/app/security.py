"""Security decisions: the API token, URI allowlists, and redaction of paths below an archive root.

Pure functions and small helpers; the API layer turns their answers into 401/403/422.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import secrets
from collections.abc import Iterable
from pathlib import Path

from radforge.storage import resolve

TOKEN_MIN_LENGTH = 16
LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost; False for 0.0.0.0, :: and any other address or name."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def token_matches(presented: str | None, expected: str) -> bool:
    """Constant-time comparison of a presented bearer token with the configured one."""
    if presented is None:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())


def generated_token(path: Path) -> str:
    """The token kept in ``path`` (0600), created with 256 random bits the first time."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    path.touch(mode=0o600)
    path.write_text(token + "\n")
    return token


class UriError(ValueError):
    """A URI the service does not accept; the message says why (it never echoes credentials)."""


def check_uri(uri: str) -> str:
    """The canonical form of ``uri`` (``resolve(uri).uri``); refuses credentials and ``..`` segments."""
    scheme, sep, rest = uri.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        raise UriError("credentials in URIs are not accepted; the service takes them from its environment")
    path = rest if sep else uri
    if any(seg == ".." for seg in path.replace("\\", "/").split("/")):
        raise UriError("'..' path segments are not accepted")
    if not uri.strip():
        raise UriError("empty URI")
    return resolve(uri).uri


def uri_allowed(uri: str, allowlist: Iterable[str]) -> bool:
    """True if ``uri`` is one of the allowlisted prefixes or below one (same scheme, whole path segments)."""
    loc = resolve(uri)
    for prefix in allowlist:
        p = resolve(prefix)
        if p.protocol != loc.protocol:
            continue
        base = p.path.rstrip("/")
        if loc.path == base or loc.path.startswith(base + "/"):
            return True
    return False


def redact_below(text: str, roots: Iterable[str]) -> str:
    """Replace anything below each of ``roots`` (object paths, possibly identifying) with ``<root>/…``."""
    for root in roots:
        loc = resolve(root)
        for form in {loc.uri.rstrip("/"), loc.path.rstrip("/")}:
            if form:
                text = re.sub(re.escape(form) + r"/[^\s'\",)\]}]+", form + "/…", text)
    return text
