"""Services: the control plane (HTTP API and dashboard, job records, job processes, scheduler).

Subpackages: ``app`` (FastAPI application, settings, database), ``jobs`` (the job processes and
their supervision), ``schedule`` (sources watched on a schedule). The public surface is below;
names are imported on first use, so ``import radforge.services`` does not import FastAPI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from radforge.exports import lazy_exports

if TYPE_CHECKING:
    from radforge.services.app.main import create_app, serve
    from radforge.services.app.service import Service, build_service
    from radforge.services.app.settings import ServiceSettings, SettingsError, load_settings

__all__ = [
    "Service",
    "ServiceSettings",
    "SettingsError",
    "build_service",
    "create_app",
    "load_settings",
    "serve",
]

__getattr__ = lazy_exports(
    __name__,
    {
        "create_app": "app.main",
        "serve": "app.main",
        "Service": "app.service",
        "build_service": "app.service",
        "ServiceSettings": "app.settings",
        "SettingsError": "app.settings",
        "load_settings": "app.settings",
    },
)
