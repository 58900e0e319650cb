"""Connecting to Ray: an existing cluster, or an embedded local one that listens on loopback only."""

from __future__ import annotations

import functools
import logging
import os

log = logging.getLogger(__name__)


def ensure_ray(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Connect to ``address`` or start a local Ray bound to 127.0.0.1 (no-op if already connected).

    A local Ray would listen on every interface by default; ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``
    set before start binds every listener to loopback (measured, see ENVIRONMENT.md).
    """
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
        return
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        address="local",  # always a new embedded cluster, never another session's Ray on this machine
        num_cpus=num_cpus,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        configure_logging=False,
    )
    log.info("started a local Ray bound to 127.0.0.1")


# glibc's allocator serves blocks of >= 128 KiB (adaptively more) with fresh mmap()s and trims freed
# heap back to the kernel, so every decoded slice, encoded sample and shard buffer (0.5-64 MiB) is
# paid again in page faults. In one process on the project's VM that was 25-40% of the CPU time of
# decoding + writing a series (measured with bench/ingest.py's series workload; see BENCHMARKS.md).
# A worker that keeps freed memory reuses warm pages instead; allocations above the cap stay mmap()ed.
_MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's maximum (HEAP_MAX_SIZE / 2 on 64-bit)
_TRIM_THRESHOLD_BYTES = 1 << 30  # give memory back only once a worker holds this much free
_TOP_PAD_BYTES = 64 << 20
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # from glibc's <malloc.h>


@functools.cache
def tune_worker_allocator() -> bool:
    """Make this process's glibc ``malloc`` keep freed memory (once per process; no-op off glibc).

    Called at the start of each ingest task so it applies on any cluster, whatever the workers'
    environment. Returns whether the allocator accepted every setting.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return False
    settings = (
        (_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES),
        (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES),
        (_M_TOP_PAD, _TOP_PAD_BYTES),
    )
    return all(mallopt(param, value) == 1 for param, value in settings)
