"""Reading a file named by someone else: a regular file only, never more than a size cap.

Every file radforge reads on a user's behalf (service settings, run configs, recipes, ingest
configs, job spec files) goes through :func:`read_bounded`. A path can name ``/dev/zero`` (endless),
a named pipe (a read that blocks forever) or a sparse file of any size; reading such a file whole
and comparing its size afterwards lets one request exhaust the memory or hang a worker. Here the
file is opened without blocking, checked to be a regular file on the open descriptor (no race with
a rename), and read at most ``limit + 1`` bytes, so the cap holds whatever the file is.
"""

from __future__ import annotations

import os
import stat

from radforge.storage import resolve

DEFAULT_LIMIT = 1 << 20  # 1 MiB: configs and recipes are a few KiB


class FileRefused(ValueError):
    """A file that is not read: not a regular file, or larger than the limit.

    The message names the reason only, never the file's contents.
    """


def _read_at_most(f: object, limit: int) -> bytes:
    chunks, size = [], 0
    read = f.read  # type: ignore[attr-defined]
    while size <= limit:
        chunk = read(min(1 << 16, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    data = b"".join(chunks)
    if len(data) > limit:
        raise FileRefused(f"larger than {limit} bytes")
    return data


def read_bounded(path_or_uri: str | os.PathLike[str], *, limit: int = DEFAULT_LIMIT) -> bytes:
    """The bytes of a regular file (path, ``file://`` or object-store URI) of at most ``limit`` bytes.

    Raises :class:`FileRefused` for anything else that exists (a device, a FIFO, a socket, a folder,
    a file over the limit) and :class:`OSError` when the file cannot be opened.
    """
    loc = resolve(path_or_uri)
    if not loc.is_local:
        with loc.fs.open(loc.path, "rb") as f:
            return _read_at_most(f, limit)
    # O_NONBLOCK: opening a FIFO without a writer returns at once instead of waiting for one
    fd = os.open(loc.path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "a device, pipe or socket"
            raise FileRefused(f"not a regular file ({kind})")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=True) as f:
            fd = -1
            return _read_at_most(f, limit)
    finally:
        if fd >= 0:
            os.close(fd)


def read_bounded_text(path_or_uri: str | os.PathLike[str], *, limit: int = DEFAULT_LIMIT) -> str:
    """:func:`read_bounded` decoded as UTF-8 (a file that is not text is :class:`FileRefused`)."""
    try:
        return read_bounded(path_or_uri, limit=limit).decode("utf-8")
    except UnicodeDecodeError:
        raise FileRefused("not UTF-8 text") from None


# ---- files radforge keeps for itself (state, job records): its user's alone ----------------------
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def make_private_dir(path: str | os.PathLike[str]) -> None:
    """Create the folder ``path`` (and its parents) readable by this user only; tighten it if it exists.

    The service's state folder and job folders name archives and datasets and hold the database;
    another local user has no business listing them.
    """
    os.makedirs(path, mode=PRIVATE_DIR, exist_ok=True)
    os.chmod(path, PRIVATE_DIR)


def own_private_dir(path: str | os.PathLike[str]) -> None:
    """Make ``path`` a folder of this user's that only they can use, or refuse it.

    For caches at fixed names under a shared /tmp (the trainer's shard cache, the built-in eval
    suite): another local user could create the folder first, or leave a symbolic link there, and
    feed the run planted shards or a planted suite. A missing folder is created 0700; an existing
    one must be a real folder owned by this user (then it is made 0700); anything else raises
    :class:`FileRefused` naming what is wrong and the setting to change.
    """
    try:
        os.makedirs(path, mode=PRIVATE_DIR, exist_ok=True)
    except FileExistsError:  # a dangling symbolic link or a file in its place: named below
        pass
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        raise FileRefused(f"cache folder {os.fspath(path)} is a symbolic link: choose another cache_dir")
    if not stat.S_ISDIR(info.st_mode):
        raise FileRefused(f"cache folder {os.fspath(path)} is not a folder: choose another cache_dir")
    if info.st_uid != os.geteuid():
        raise FileRefused(
            f"cache folder {os.fspath(path)} is owned by uid {info.st_uid}, not this user "
            f"({os.geteuid()}): choose another cache_dir"
        )
    os.chmod(path, PRIVATE_DIR)


def touch_private(path: str | os.PathLike[str]) -> None:
    """Create ``path`` as an empty 0600 file, or make an existing one 0600 (a database, a log)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), PRIVATE_FILE))
    os.chmod(path, PRIVATE_FILE)
