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


# Ray Data 2.60's streaming executor, tuned for jobs of few, long tasks (an ingest: a task decodes
# ~512 slices of whole series, 1-2 s; see radforge.ingest.partition). Measured on the project's 2-CPU VM
# with bench/ingest.py and ray.timeline() (docs/BENCHMARKS.md):
# - Each execution learns how many CPUs it may use from the autoscaling coordinator actor, whose answer
#   the ResourceManager reads from a cache refreshed every GLOBAL_LIMITS_UPDATE_INTERVAL_S (1 s). The
#   first read is empty, so every execution ran one task at a time for its first second: a whole
#   header phase, half a decode phase. At 0.1 s the reservation arrives before the second task is due.
# - By default task completions are postponed to a metadata-fetch thread (its own 0.1 s wait, then
#   the next scheduling pass): a worker idled 120-210 ms between two series. Fetched inline, 25-80 ms.
# Both are process-wide settings of the driver; they change scheduling latency, never results.
_LIMITS_REFRESH_S = 0.1


def tune_data_executor() -> bool:
    """Apply the settings above to this driver's Ray Data; True when the installed Ray has both knobs.

    ``RAY_DATA_METADATA_PREFETCH_ON_THREAD=0`` is Ray's switch for inline metadata fetching (see
    ``ray.data._internal.execution.metadata_fetcher``), but it is read when ``ray.data`` is
    imported; the module value it sets is changed here so the setting holds whatever imported Ray
    Data first. A Ray without these names (another version) is left as it is, with a warning, and
    the job still runs (slower to start tasks).
    """
    try:
        from ray.data._internal.execution import metadata_fetcher
        from ray.data._internal.execution.resource_manager import ResourceManager
    except ImportError:
        metadata_fetcher = ResourceManager = None  # type: ignore[assignment,misc]
    interval = getattr(ResourceManager, "GLOBAL_LIMITS_UPDATE_INTERVAL_S", None)
    inline = getattr(metadata_fetcher, "_PREFETCH_ON_THREAD", None)
    if isinstance(interval, (int, float)) and isinstance(inline, bool):
        setattr(ResourceManager, "GLOBAL_LIMITS_UPDATE_INTERVAL_S", min(interval, _LIMITS_REFRESH_S))  # noqa: B010
        metadata_fetcher._PREFETCH_ON_THREAD = False
        return True
    log.warning("this Ray Data has no known executor latency settings; ingest tasks start slower")
    return False


def cluster_cpus() -> int:
    """CPUs the connected Ray cluster has now (at least 1: a head with ``num-cpus: 0`` reports none)."""
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 0)))


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
