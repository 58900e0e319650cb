"""Give back a ``StreamingDataset``'s shared memory when a process is done with the dataset.

Each ``StreamingDataset`` maps six named segments in /dev/shm (its prefix's ``locals``, barrier,
epoch counter, cache usage, shard states and access times; a resumed one a seventh) and streaming
registers every segment's ``cleanup`` with ``atexit``. ``atexit`` holds those objects, so dropping
the dataset closes nothing: a long-lived process that opens datasets one after another (a notebook,
a service, the test suite) keeps six descriptors and mappings per dataset until it exits, and runs
out of descriptors (EMFILE) after a few thousand.

:func:`release_stream` closes (and, in the process that created them, unlinks) the segments at
once; :func:`release_when_collected` does it when the dataset is garbage-collected.
"""

from __future__ import annotations

import atexit
import os
import weakref
from typing import Any

# StreamingDataset attributes (streaming 0.13) that hold shared memory, directly or through a
# SharedScalar / SharedArray / SharedBarrier.
_HOLDERS = (
    "_locals_shm",
    "_resume_shm",
    "_shared_barrier",
    "_next_epoch",
    "_cache_usage",
    "_shard_states",
    "_shard_access_times",
)


def stream_shared_memory(stream: Any) -> list[Any]:
    """The ``streaming`` ``SharedMemory`` objects ``stream`` holds now (in the order of ``_HOLDERS``)."""
    from streaming.base.shared import SharedMemory

    found = []
    for name in _HOLDERS:
        # SharedMemory itself; SharedArray (.shm); SharedScalar (.arr.shm); SharedBarrier (._arr.shm)
        for path in ((), ("shm",), ("arr", "shm"), ("_arr", "shm")):
            obj = vars(stream).get(name)
            for attr in path:
                obj = getattr(obj, attr, None)
            if isinstance(obj, SharedMemory):
                found.append(obj)
                break
    return found


def _release(segments: list[Any], owner: int) -> None:
    """Close the segments (unlinking those this process created), only in the process that opened them.

    A forked DataLoader worker holds copies of the parent's objects; it must neither unlink the
    parent's names nor run this on the parent's behalf.
    """
    if os.getpid() != owner:
        return
    for shm in segments:
        atexit.unregister(shm.cleanup)
        try:
            shm.cleanup()
        except BufferError:  # a numpy view of the segment is still alive: leave it to exit
            atexit.register(shm.cleanup)


def stop_iteration(stream: Any) -> None:
    """End ``stream``'s unfinished epoch in this process: its prepare and ready threads exit and join.

    Iterating a ``StreamingDataset`` runs two threads (download ahead, mark ready) in a pool the
    dataset keeps; an epoch left after a few samples leaves them reading shard states and shared
    memory. Streaming ends them itself only when the next epoch starts.
    """
    iterator = vars(stream).get("_iterator")
    if iterator is not None:
        iterator.exit()  # the threads see should_exit() on their next tick
    executor = vars(stream).pop("_executor", None)
    if executor is not None:
        executor.shutdown(wait=True)


def release_stream(stream: Any) -> None:
    """Close ``stream``'s shared-memory segments now; the dataset must not be read afterwards.

    Any unfinished epoch is stopped first (:func:`stop_iteration`). Safe to call twice and after
    :func:`release_when_collected`. Unlinking the segments frees the dataset's shared-memory prefix
    for the next dataset opened on this node.
    """
    stop_iteration(stream)
    segments = stream_shared_memory(stream)
    for name in _HOLDERS:
        vars(stream).pop(name, None)
    _release(segments, os.getpid())


def release_when_collected(stream: Any) -> None:
    """Close ``stream``'s segments when it is garbage-collected in this process (see the module doc)."""
    weakref.finalize(stream, _release, stream_shared_memory(stream), os.getpid())
