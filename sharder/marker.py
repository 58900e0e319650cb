"""The dataset marker: how radforge knows a storage location is a dataset it created.

``_radforge_dataset.json`` (format, format version, creation time, dataset id) is written when an
ingest creates a dataset. Writers refuse a non-empty destination without it (someone else's
folder: nothing is written, nothing deleted), and orphan cleanup runs only in a marked dataset.
A dataset made before markers existed (a valid radforge ``index.json``, no marker) is accepted
and gets its marker on the next ingest.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from enum import StrEnum
from typing import Any

from radforge.sharder.catalog import INDEX, DatasetError
from radforge.storage import Location, create_exclusive, exists, read_bytes

log = logging.getLogger(__name__)

MARKER = "_radforge_dataset.json"
MARKER_FORMAT = "radforge-dataset"
MARKER_VERSION = 1
# Objects radforge keeps at a dataset's root besides the data (marker, lease and its lock files):
# a location holding only these counts as empty (another writer is creating the dataset there).
RESERVED_PREFIX = "_radforge_"


class NotADatasetError(DatasetError):
    """A destination holds data that is not a radforge dataset: radforge writes nothing there."""


class DestinationState(StrEnum):
    """What a destination holds, as far as writing a dataset there is concerned."""

    DATASET = "dataset"  # marked radforge dataset
    UNMARKED_DATASET = "unmarked_dataset"  # radforge index.json without a marker (made before markers)
    EMPTY = "empty"  # nothing there (or only radforge's reserved objects)
    FOREIGN = "foreign"  # anything else


def destination_state(root: Location) -> DestinationState:
    """Classify ``root`` by reading only (never writes); :class:`DatasetError` if it cannot be read."""
    try:
        if exists(root.join(MARKER)):
            return DestinationState.DATASET
        names = _child_names(root)
    except Exception as e:  # OSError, or the storage client's own (no credentials, endpoint down)
        raise DatasetError(f"destination {root.uri} cannot be read ({type(e).__name__})") from None
    if not [n for n in names if not n.startswith(RESERVED_PREFIX)]:
        return DestinationState.EMPTY
    if INDEX in names and _is_radforge_index(root.join(INDEX)):
        return DestinationState.UNMARKED_DATASET
    return DestinationState.FOREIGN


def check_destination(root: Location) -> DestinationState:
    """Refuse (:class:`NotADatasetError`) a destination holding anything but a radforge dataset."""
    state = destination_state(root)
    if state is DestinationState.FOREIGN:
        raise NotADatasetError(
            f"destination {root.uri} is not empty and is not a radforge dataset (no {MARKER}, no radforge "
            f"{INDEX}); nothing was written or deleted there: choose a new or empty location"
        )
    return state


def mark_dataset(root: Location) -> bool:
    """Write the marker unless there is one (a new dataset, or the upgrade of an unmarked one).

    Call it holding the dataset's write lease, after :func:`check_destination`. Returns whether a
    marker was written.
    """
    state = check_destination(root)
    if state is DestinationState.DATASET:
        read_marker(root)
        return False
    try:
        create_exclusive(root.join(MARKER), json.dumps(new_marker(), sort_keys=True).encode())
    except FileExistsError:
        return False
    if state is DestinationState.UNMARKED_DATASET:
        log.info("dataset %s had no %s (made by an older radforge): marker written", root.uri, MARKER)
    return True


def new_marker() -> dict[str, Any]:
    """The marker of a dataset created now."""
    return {
        "format": MARKER_FORMAT,
        "format_version": MARKER_VERSION,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "dataset_id": uuid.uuid4().hex,
    }


def read_marker(root: Location) -> dict[str, Any]:
    """The dataset's marker; :class:`DatasetError` if it is unreadable or of a newer format."""
    loc = root.join(MARKER)
    try:
        marker = json.loads(read_bytes(loc))
        fmt, version = marker["format"], int(marker["format_version"])
    except (ValueError, KeyError, TypeError):
        raise DatasetError(f"{loc.uri} is not a valid radforge dataset marker") from None
    if fmt != MARKER_FORMAT or version > MARKER_VERSION:
        raise DatasetError(
            f"{loc.uri} is a marker of format {fmt!r} version {version}; this radforge writes "
            f"{MARKER_FORMAT!r} version {MARKER_VERSION}: upgrade radforge"
        )
    return dict(marker)


def is_marked(root: Location) -> bool:
    """Whether ``root`` carries the marker of a radforge dataset."""
    return exists(root.join(MARKER))


def _child_names(root: Location) -> set[str]:
    """Names directly below ``root`` (a file or object at ``root`` itself lists as its own name)."""
    try:
        entries = root.fs.ls(root.path, detail=False, refresh=True)  # fresh: other writers' objects
    except (FileNotFoundError, NotADirectoryError):
        return set()
    return {str(p).rstrip("/").rsplit("/", 1)[-1] for p in entries}


def _is_radforge_index(loc: Location) -> bool:
    try:
        obj = json.loads(read_bytes(loc))
    except (OSError, ValueError):
        return False
    return isinstance(obj, dict) and isinstance(obj.get("shards"), list) and "radforge" in obj
