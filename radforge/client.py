"""A thin HTTP client of the control plane's API (``radforge serve``): jobs and sources.

The ``radforge jobs`` and ``radforge sources`` commands use it; scripts may too. It speaks JSON
over the standard library's HTTP (no service code is imported: this module sits in the core
layer, below the service it talks to). Every failure is a :class:`ClientError` whose message is
one actionable line: what was refused, which job, source or field, and what to do.

Where things come from (the variables the service itself reads, docs/control-plane.md):

- the server: ``--server``, else ``$RADFORGE_SERVER``, else http://127.0.0.1:8000 (the default of
  ``radforge serve``);
- the token: ``$RADFORGE_API_TOKEN``, else the file named by ``$RADFORGE_API_TOKEN_FILE``, else the
  token ``radforge serve`` generates on loopback, ``$RADFORGE_STATE_DIR/api-token`` (default
  ``.radforge/api-token``).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_SERVER = "http://127.0.0.1:8000"
SERVER_ENV = "RADFORGE_SERVER"
TOKEN_ENV = "RADFORGE_API_TOKEN"
TOKEN_FILE_ENV = "RADFORGE_API_TOKEN_FILE"
STATE_DIR_ENV = "RADFORGE_STATE_DIR"
DEFAULT_STATE_DIR = ".radforge"
TOKEN_FILE_NAME = "api-token"  # radforge serve's generated token, in its state folder
TOKEN_FILE_MAX_BYTES = 4096
TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
MAX_LOG_LINES = 1000  # the API's limit for one /logs request
TIMEOUT_S = 30.0


class ClientError(Exception):
    """A request that did not succeed: ``str()`` is one actionable line, ``status`` the HTTP status."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Token:
    """A bearer token and where it was found (the place is safe to show; the value never is)."""

    value: str
    source: str


def find_token(environ: Mapping[str, str] | None = None) -> Token | None:
    """The API token from the environment, the token file, or the service's generated file; None if none.

    Raises :class:`ClientError` when a named token file cannot be read.
    """
    env = os.environ if environ is None else environ
    if env.get(TOKEN_ENV, "").strip():
        return Token(env[TOKEN_ENV].strip(), f"${TOKEN_ENV}")
    if env.get(TOKEN_FILE_ENV):
        path = Path(env[TOKEN_FILE_ENV])
        return Token(_read_token_file(path, what=f"${TOKEN_FILE_ENV}"), str(path))
    path = Path(env.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR) / TOKEN_FILE_NAME
    if path.is_file():
        return Token(_read_token_file(path, what="the service's token file"), str(path))
    return None


def _read_token_file(path: Path, *, what: str) -> str:
    try:
        with open(path, "rb") as f:
            token = f.read(TOKEN_FILE_MAX_BYTES + 1).decode("utf-8", "replace").strip()
    except OSError as e:
        raise ClientError(f"cannot read the API token from {path} ({what}): {e.strerror}") from None
    if not token or len(token) > TOKEN_FILE_MAX_BYTES:
        raise ClientError(f"{path} ({what}) does not hold an API token")
    return token


def server_url(flag: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The control plane's base URL: ``flag``, else ``$RADFORGE_SERVER``, else the local default."""
    env = os.environ if environ is None else environ
    url = (flag or env.get(SERVER_ENV) or DEFAULT_SERVER).rstrip("/")
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ClientError(f"server {url!r} is not an http(s):// URL (e.g. {DEFAULT_SERVER})")
    return url


def absolute_uri(value: str) -> str:
    """A local path made absolute (the service resolves paths in its own folder); URIs as given."""
    return value if "://" in value else os.path.abspath(os.path.expanduser(value))


def describe_error(status: int, body: Any, *, what: str, token_source: str | None = None) -> str:
    """One line for an API error response: the status mapped to what the user can do about it.

    ``what`` names the object of the request ("job 3f0c...", "source hospital-a", "jobs");
    ``token_source`` says where the token sent came from (never the token).
    """
    detail = body.get("detail") if isinstance(body, dict) else None
    if status == 401:
        return (
            f"the control plane wants an API token (401): set ${TOKEN_ENV} or ${TOKEN_FILE_ENV}; on the "
            f"service's host, radforge reads {DEFAULT_STATE_DIR}/{TOKEN_FILE_NAME}"
        )
    if status == 403 and detail == "the bearer token is not valid":
        where = token_source or "the environment"
        return f"the API token from {where} was refused (403): it is not the service's token"
    if status == 404:
        return f"no {what} on the control plane (404)"
    if status == 422 and isinstance(detail, list):
        return f"{what} refused (422): " + "; ".join(_field_error(e) for e in detail)
    text = detail if isinstance(detail, str) else (json.dumps(detail) if detail is not None else "")
    text = text if text.startswith(what) else f"{what}: {text or 'request failed'}"
    return f"{text} (HTTP {status})"


def _field_error(error: Any) -> str:
    if not isinstance(error, dict):
        return str(error)
    loc = [str(x) for x in error.get("loc", []) if x not in ("body", "query", "path")]
    return f"{'.'.join(loc) or 'request'}: {error.get('msg', 'invalid')}"


def new_lines(seen: Sequence[str], latest: Sequence[str]) -> list[str]:
    """The lines of ``latest`` (a log's last lines now) not in ``seen`` (its last lines before).

    Both are windows onto one growing log: the new lines follow the longest suffix of ``seen``
    that starts ``latest``. With no overlap (the log grew by more than a window) all of ``latest``
    is new.
    """
    for k in range(min(len(seen), len(latest)), 0, -1):
        if list(seen[len(seen) - k :]) == list(latest[:k]):
            return list(latest[k:])
    return list(latest)


class ControlPlane:
    """The control plane's ``/api/v1`` routes for jobs and sources, as Python calls returning its JSON."""

    def __init__(self, server: str, token: Token | None, *, timeout: float = TIMEOUT_S) -> None:
        self.server = server.rstrip("/")
        self.token = token
        self.timeout = timeout

    @classmethod
    def from_environment(cls, server: str | None = None) -> ControlPlane:
        """A client for ``server`` (or ``$RADFORGE_SERVER``) with the token found by :func:`find_token`."""
        return cls(server_url(server), find_token())

    # ---- transport ---------------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        body: Any = None,
        query: Sequence[tuple[str, Any]] = (),
    ) -> Any:
        """One request; returns the decoded JSON (None for an empty body). Raises :class:`ClientError`."""
        url = f"{self.server}/api/v1{path}"
        params = [(k, v) for k, v in query if v is not None]
        if params:
            url += "?" + urllib.parse.urlencode(params)
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token.value}"
        # http(s) only (server_url refuses other schemes): no file:// or custom openers
        req = urllib.request.Request(url, data=data, method=method, headers=headers)  # nosec B310
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as response:  # nosec B310
                raw = response.read()
        except urllib.error.HTTPError as e:
            with e:
                payload = _json_or_none(e.read())
            source = self.token.source if self.token is not None else None
            raise ClientError(
                describe_error(e.code, payload, what=what, token_source=source), status=e.code
            ) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", None) or e
            raise ClientError(
                f"cannot reach the control plane at {self.server} ({reason}); is `radforge serve` "
                f"running? (--server or ${SERVER_ENV} name another)"
            ) from None
        return _json_or_none(raw)

    # ---- jobs --------------------------------------------------------------------------------
    def submit_job(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        """Submit a job (``{"kind": "ingest"|"train"|"eval", ...}``, docs/control-plane.md); the new job."""
        return self.request("POST", "/jobs", body=dict(spec), what=f"{spec.get('kind', 'the')} job")

    def list_jobs(
        self,
        *,
        kind: str | None = None,
        states: Sequence[str] = (),
        source_id: str | None = None,
        origin: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> dict[str, Any]:
        """One page of jobs, newest first: ``{"items", "total", "limit", "offset"}``."""
        query: list[tuple[str, Any]] = [("kind", kind), *[("state", s) for s in states]]
        query += [("source_id", source_id)]
        query += [("origin", origin), ("limit", limit), ("offset", offset)]
        return self.request("GET", "/jobs", query=query, what="jobs")

    def job(self, job_id: str) -> dict[str, Any]:
        """One job: state, progress, result or error."""
        return self.request("GET", f"/jobs/{_segment(job_id)}", what=f"job {job_id}")

    def job_logs(self, job_id: str, *, lines: int = 100) -> list[str]:
        """The last ``lines`` lines of the job's log (at most :data:`MAX_LOG_LINES`)."""
        reply = self.request(
            "GET", f"/jobs/{_segment(job_id)}/logs", query=[("lines", lines)], what=f"job {job_id}"
        )
        return list(reply["lines"])

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        """Cancel a job: a queued one at once, a running one asynchronously; the job after the request."""
        return self.request("POST", f"/jobs/{_segment(job_id)}/cancel", what=f"job {job_id}")

    def follow_logs(self, job_id: str, *, lines: int, every: float = 1.0) -> Iterator[str | dict[str, Any]]:
        """The job's last ``lines`` log lines, then each new line until the job ends, then the ended job.

        Polls the API every ``every`` seconds (the service has no streaming route), reading the
        same window (the last :data:`MAX_LOG_LINES` lines) each time so that :func:`new_lines` can
        align two reads; the job is read before its log, so every line written before it ended is
        printed.
        """
        import time

        seen: list[str] | None = None
        while True:
            job = self.job(job_id)
            latest = self.job_logs(job_id, lines=MAX_LOG_LINES)
            yield from latest[-lines:] if seen is None else new_lines(seen, latest)
            seen = latest
            if job["state"] in TERMINAL_STATES:
                yield job
                return
            time.sleep(every)  # a client following a remote job: nothing to wait on but time

    # ---- sources -----------------------------------------------------------------------------
    def list_sources(self) -> list[dict[str, Any]]:
        """Every watched source, by name."""
        return self.request("GET", "/sources", what="sources")

    def create_source(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        """Watch a prefix (``{"name", "uri", "dataset_uri", "interval_seconds" | "cron", ...}``)."""
        return self.request("POST", "/sources", body=dict(spec), what=f"source {spec.get('name')}")

    def source_id(self, id_or_name: str) -> str:
        """The id of the source with this id or name (names are unique)."""
        for source in self.list_sources():
            if id_or_name in (source["id"], source["name"]):
                return str(source["id"])
        raise ClientError(f"no source with the id or name {id_or_name!r} (radforge sources list shows them)")

    def source(self, source_id: str) -> dict[str, Any]:
        """One source with its last poll (time, lag, error) and next poll time."""
        return self.request("GET", f"/sources/{_segment(source_id)}", what=f"source {source_id}")

    def update_source(self, source_id: str, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Enable/disable a source, change its priority, schedule or attempts."""
        return self.request(
            "PATCH", f"/sources/{_segment(source_id)}", body=dict(changes), what=f"source {source_id}"
        )

    def delete_source(self, source_id: str) -> None:
        """Stop watching a source (its jobs and datasets stay)."""
        self.request("DELETE", f"/sources/{_segment(source_id)}", what=f"source {source_id}")

    def poll_source(self, source_id: str) -> dict[str, Any]:
        """Poll a source now: one decision per archive found, the jobs submitted."""
        return self.request("POST", f"/sources/{_segment(source_id)}/poll", what=f"source {source_id}")


def _segment(value: str) -> str:
    """``value`` as one URL path segment (an id can never step into another route)."""
    return urllib.parse.quote(value, safe="")


def _json_or_none(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None
