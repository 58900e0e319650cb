"""Security decisions: the API token, URI allowlists, and redaction of credentials and identifying paths.

Pure functions and small helpers; the API layer turns their answers into 401/403/422. Every message
that can hold a URI or a submitted value (API errors, logs, job records, ``/healthz``) goes
through :func:`redact`, which hides credentials (``user:password@``) and query strings.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import secrets
from collections.abc import Iterable
from pathlib import Path

# redaction is core (trainer reports redact dataset URIs too); services import it from here
from radforge.storage import REDACTED as REDACTED
from radforge.storage import canonical_uri, resolve
from radforge.storage import redact as redact

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


def credentials_in_address(address: str) -> bool:
    """True if ``address`` (``[scheme://]user:password@host...``) carries a password in its userinfo."""
    host_part = address.partition("://")[2] if "://" in address else address
    userinfo, at, _ = host_part.split("/", 1)[0].rpartition("@")
    return bool(at) and ":" in userinfo


def has_control_characters(text: str) -> bool:
    """True if ``text`` holds NUL, a line break, an escape or any other C0/C1 control character."""
    return any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in text)


class UriError(ValueError):
    """A URI the service does not accept; the message says why (it never echoes credentials)."""


def check_uri(uri: str) -> str:
    """The canonical form of ``uri`` (``resolve(uri).uri``); refuses credentials, control characters, ``..``.

    Control characters (NUL, line breaks, escapes) would cut a path short, forge log lines or
    rewrite a terminal that shows the URI.
    """
    if has_control_characters(uri):
        raise UriError("control characters (NUL, line breaks, escapes) are not accepted in URIs")
    scheme, sep, rest = uri.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        raise UriError("credentials in URIs are not accepted; the service takes them from its environment")
    path = rest if sep else uri
    if any(seg == ".." for seg in path.replace("\\", "/").split("/")):
        raise UriError("'..' path segments are not accepted")
    if not uri.strip():
        raise UriError("empty URI")
    return resolve(uri).uri


def uri_below(uri: str, root: str) -> bool:
    """True if ``uri`` is ``root`` or below it (same scheme, whole path segments), both as given."""
    loc, base_loc = resolve(uri), resolve(root)
    if base_loc.protocol != loc.protocol:
        return False
    base = base_loc.path.rstrip("/")
    return loc.path == base or loc.path.startswith(base + "/")


def uri_allowed(uri: str, allowlist: Iterable[str]) -> bool:
    """True if ``uri`` is one of the allowlisted prefixes or below one (same scheme, whole path segments).

    Both sides are canonical first (local paths with every symlink resolved): a symlink inside an
    allowed folder that points outside it is outside.
    """
    real = canonical_uri(uri)
    return any(uri_below(real, canonical_uri(prefix)) for prefix in allowlist)


def redact_below(text: str, roots: Iterable[str]) -> str:
    """Replace anything below each of ``roots`` (object paths, possibly identifying) with ``<root>/…``."""
    for root in roots:
        loc = resolve(root)
        for form in {loc.uri.rstrip("/"), loc.path.rstrip("/")}:
            if form:
                text = re.sub(re.escape(form) + r"/[^\s'\",)\]}]+", form + "/…", text)
    return text
