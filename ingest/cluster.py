"""Connecting to Ray: an existing cluster, or an embedded local one that listens on loopback only."""

from __future__ import annotations

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
