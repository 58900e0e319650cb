"""One code path for every storage location: plain paths, ``file://``, ``s3://``, ``gs://``, ``az://``.

All reads and writes of archives, datasets and checkpoints go through fsspec. The S3 endpoint comes
from the standard environment variables (``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL`` or
streaming's ``S3_ENDPOINT_URL``) so that the same code talks to AWS, a MinIO or a moto test server.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import fsspec

_LOCAL_PROTOCOLS = frozenset({"", "file", "local"})


# scheme://userinfo@ (the userinfo goes), then a bare user:password@host (a GCS address), then ?query
_USERINFO = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)[^/\s@'\"]+@")
_BARE_CREDENTIALS = re.compile(r"(^|[\s'\"(=])[^\s/@:'\"]+:[^\s/@'\"]+@")
_QUERY = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://[^\s?#'\"]*)[?#][^\s'\"]*")
REDACTED = "***"


def redact(text: str) -> str:
    """``text`` with the credentials and query strings of any URI or address in it replaced by ``***``.

    ``s3://k:s@bucket/x?X-Amz-Signature=...`` -> ``s3://***@bucket/x?***``; ``user:pw@head:6379`` ->
    ``***@head:6379``. Paths and hosts stay: they say where, and are what an operator needs.
    """
    text = _USERINFO.sub(rf"\1{REDACTED}@", text)
    text = _BARE_CREDENTIALS.sub(rf"\1{REDACTED}@", text)
    return _QUERY.sub(rf"\1?{REDACTED}", text)


def _storage_options(protocol: str) -> dict[str, Any]:
    if protocol == "s3":
        endpoint = (
            os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
            or os.environ.get("S3_ENDPOINT_URL")
        )
        opts: dict[str, Any] = {}
        if endpoint:
            opts["endpoint_url"] = endpoint
        return opts
    return {}


@dataclass(frozen=True)
class Location:
    """A resolved storage URI: the filesystem to use and the path inside it."""

    uri: str
    protocol: str
    path: str  # path as the filesystem expects it (no scheme)

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return filesystem(self.protocol)

    @property
    def is_local(self) -> bool:
        return self.protocol in _LOCAL_PROTOCOLS

    def join(self, *parts: str) -> Location:
        """The location ``parts`` below this one (always ``/``-separated)."""
        path = posixpath.join(self.path, *parts)
        uri = path if self.is_local else f"{self.protocol}://{path}"
        return Location(uri=uri, protocol=self.protocol, path=path)

    @property
    def canonical(self) -> Location:
        """The location with symlinks resolved (local paths); the name to lock or allowlist-check.

        Two spellings of one local folder (a symlink, ``..``, ``file://``) give the same canonical
        location; remote URIs are already normalised by :func:`resolve` (scheme aliases, trailing
        slashes).
        """
        if not self.is_local:
            return self
        path = os.path.realpath(self.path)
        return Location(uri=path, protocol=self.protocol, path=path)

    def relative(self, path: str) -> str:
        """``path`` (as returned by this filesystem) relative to this location."""
        base = self.path.rstrip("/") + "/"
        if not path.startswith(base):
            stripped = path.split("://", 1)[-1]
            if not stripped.startswith(base):
                raise ValueError("object is not below the location it was listed from")
            path = stripped
        return path[len(base) :]


def resolve(uri: str | os.PathLike[str]) -> Location:
    """Parse ``uri`` into a :class:`Location`; plain and ``file://`` paths become absolute."""
    text = os.fspath(uri)
    if "://" in text:
        protocol, rest = text.split("://", 1)
        protocol = protocol.lower()
    else:
        protocol, rest = "", text
    if protocol in _LOCAL_PROTOCOLS:
        path = os.path.abspath(os.path.expanduser(rest))
        return Location(uri=path, protocol="file", path=path)
    if protocol in ("s3a", "s3n"):
        protocol = "s3"
    return Location(uri=f"{protocol}://{rest.rstrip('/')}", protocol=protocol, path=rest.rstrip("/"))


def canonical_uri(uri: str | os.PathLike[str]) -> str:
    """The one name of the storage location ``uri`` names: what locks and allowlists compare.

    Local paths are made absolute with every symlink resolved (``os.path.realpath``), so a symlink
    alias, ``..`` or ``file://`` spelling of a folder all give the same string; remote URIs get
    their scheme aliases (``s3a``, ``s3n``) and trailing slashes normalised.
    """
    return resolve(uri).canonical.uri


_FS_CACHE: dict[str, fsspec.AbstractFileSystem] = {}


def filesystem(protocol: str) -> fsspec.AbstractFileSystem:
    """The fsspec filesystem for ``protocol`` (cached per process; endpoint from the environment)."""
    key = f"{protocol}|{_storage_options(protocol)}"
    fs = _FS_CACHE.get(key)
    if fs is None:
        fs = fsspec.filesystem(protocol or "file", **_storage_options(protocol))
        _FS_CACHE[key] = fs
    return fs


def write_bytes_atomic(loc: Location, data: bytes) -> None:
    """Write ``data`` to ``loc`` so that readers see either the old object or the whole new one.

    Object stores replace an object atomically on PUT; on a local filesystem we write a temporary
    sibling, fsync it and rename it over the target.
    """
    fs = loc.fs
    if loc.is_local:
        os.makedirs(os.path.dirname(loc.path), exist_ok=True)
        tmp = f"{loc.path}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, loc.path)
        return
    with fs.open(loc.path, "wb") as f:
        f.write(data)


def read_bytes(loc: Location) -> bytes:
    """The whole object at ``loc``."""
    with loc.fs.open(loc.path, "rb") as f:
        data: bytes = f.read()
    return data


def exists(loc: Location) -> bool:
    return bool(loc.fs.exists(loc.path))


def ensure_dir(loc: Location) -> None:
    """Create ``loc`` as a folder where the filesystem has folders (no-op on object stores)."""
    if loc.is_local:
        os.makedirs(loc.path, exist_ok=True)


# ---- conditional writes: the primitives of a lease held on the storage itself -----------------------
# A version is what a conditional write compares: the ETag on S3 (If-Match / If-None-Match on
# put_object and delete_object, supported by AWS S3, botocore >= 1.35 and moto >= 5.0), the
# SHA-256 of the content on local disks, where a short POSIX lock on a ``.guard`` sibling makes
# compare-and-replace atomic between processes (and hosts, on NFS with working locks).


class ConditionFailed(RuntimeError):
    """A conditional write or delete found another version than the one it was given (or none)."""


def read_versioned(loc: Location) -> tuple[bytes, str] | None:
    """The object at ``loc`` and its version, read together; ``None`` if there is none."""
    if loc.is_local:
        try:
            with open(loc.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        return data, hashlib.sha256(data).hexdigest()
    if loc.protocol != "s3":
        if not exists(loc):
            return None
        data = read_bytes(loc)
        return data, hashlib.sha256(data).hexdigest()
    from fsspec.asyn import sync

    fs = loc.fs
    bucket, key, _ = fs.split_path(loc.path)

    async def get() -> tuple[bytes, str]:
        resp = await fs._call_s3("get_object", Bucket=bucket, Key=key)
        try:
            return await resp["Body"].read(), str(resp["ETag"])
        finally:
            resp["Body"].close()

    try:
        got: tuple[bytes, str] = sync(fs.loop, get)
    except FileNotFoundError:
        return None
    return got


def create_exclusive(loc: Location, data: bytes) -> str:
    """Create the object at ``loc`` only if there is none; returns its version.

    Raises ``FileExistsError`` when the object exists (or another writer won a concurrent
    create). Local disks: the data goes to a temporary sibling that is hard-linked to the name
    (``link`` fails if the name exists), so a reader never sees a partly written object. S3: one
    ``put_object`` with ``If-None-Match: *``. Other stores have no conditional put here: the
    create is checked, not atomic (documented in docs/data-format.md).
    """
    if loc.is_local:
        os.makedirs(os.path.dirname(loc.path), exist_ok=True)
        tmp = _write_temp_sibling(loc, data)
        try:
            os.link(tmp, loc.path)
        finally:
            os.unlink(tmp)
        return hashlib.sha256(data).hexdigest()
    if loc.protocol != "s3":
        if exists(loc):
            raise FileExistsError(loc.uri)
        write_bytes_atomic(loc, data)
        return hashlib.sha256(data).hexdigest()
    try:
        return _s3_call(loc, "put_object", Body=data, IfNoneMatch="*")
    except ConditionFailed:
        raise FileExistsError(loc.uri) from None


def replace_if_match(loc: Location, data: bytes, version: str) -> str:
    """Replace the object at ``loc`` only if it is still at ``version``; returns the new version.

    Raises :class:`ConditionFailed` if the object changed or is gone.
    """
    if loc.is_local:
        with _local_guard(loc):
            _check_version(loc, version)
            tmp = _write_temp_sibling(loc, data)
            os.replace(tmp, loc.path)
        return hashlib.sha256(data).hexdigest()
    if loc.protocol != "s3":
        _check_version(loc, version)
        write_bytes_atomic(loc, data)
        return hashlib.sha256(data).hexdigest()
    return _s3_call(loc, "put_object", Body=data, IfMatch=version)


def delete_if_match(loc: Location, version: str) -> None:
    """Delete the object at ``loc`` only if it is still at ``version`` (else :class:`ConditionFailed`)."""
    if loc.is_local:
        with _local_guard(loc):
            _check_version(loc, version)
            os.unlink(loc.path)
        return
    if loc.protocol != "s3":
        _check_version(loc, version)
        loc.fs.rm_file(loc.path)
        return
    _s3_call(loc, "delete_object", IfMatch=version)


def _write_temp_sibling(loc: Location, data: bytes) -> str:
    tmp = f"{loc.path}.tmp-{uuid.uuid4().hex}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return tmp


_GUARDS: dict[str, threading.Lock] = {}
_GUARDS_LOCK = threading.Lock()


@contextmanager
def _local_guard(loc: Location) -> Iterator[None]:
    """Exclusive access to ``loc`` for one compare-and-write, against other processes and threads.

    A POSIX lock on ``<loc>.guard`` (released if the process dies; honoured across hosts by NFS
    with working locks) excludes other processes; POSIX locks belong to a process, so a
    per-path mutex excludes the other threads of this one.
    """
    import fcntl

    with _GUARDS_LOCK:
        mutex = _GUARDS.setdefault(loc.path, threading.Lock())
    with mutex:
        fd = os.open(f"{loc.path}.guard", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock


def _check_version(loc: Location, version: str) -> None:
    current = read_versioned(loc)
    if current is None or current[1] != version:
        raise ConditionFailed(f"{loc.uri} is no longer at the version this writer holds")


# S3 answers a failed condition with 412 PreconditionFailed, a missing object with 404, and two
# conditional writes racing on one key with 409 ConditionalRequestConflict (the loser retries).
_S3_CONDITION_CODES = frozenset(
    {"PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "404", "409", "412"}
)


def _s3_call(loc: Location, method: str, **kwargs: Any) -> str:
    """One conditional S3 request through s3fs's client; returns the new ETag ("" for a delete)."""
    fs = loc.fs
    bucket, key, _ = fs.split_path(loc.path)
    try:
        resp = fs.call_s3(method, Bucket=bucket, Key=key, **kwargs)
    except (OSError, ValueError) as e:
        cause = e.__cause__
        code = getattr(cause, "response", {}).get("Error", {}).get("Code") if cause is not None else None
        if isinstance(e, FileExistsError) or code in _S3_CONDITION_CODES:  # not NoSuchBucket
            reason = code or type(e).__name__
            raise ConditionFailed(f"{loc.uri}: the condition of {method} was not met ({reason})") from None
        raise
    finally:
        fs.invalidate_cache(loc.path)
    return str(resp.get("ETag", ""))
