"""One code path for every storage location: plain paths, ``file://``, ``s3://``, ``gs://``, ``az://``.

All reads and writes of archives, datasets and checkpoints go through fsspec. The S3 endpoint comes
from the standard environment variables (``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL`` or
streaming's ``S3_ENDPOINT_URL``) so that the same code talks to AWS, a MinIO or a moto test server.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from dataclasses import dataclass
from typing import Any

import fsspec

_LOCAL_PROTOCOLS = frozenset({"", "file", "local"})


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
