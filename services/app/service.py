"""The parts of a running control plane, built once from the settings (``build_service``)."""

from __future__ import annotations

from dataclasses import dataclass

from radforge.files import make_private_dir
from radforge.services.app.db import Store
from radforge.services.app.history import History
from radforge.services.app.metrics import Metrics
from radforge.services.app.settings import Secrets, ServiceSettings, SettingsError, resolve_secrets
from radforge.services.jobs.kinds import KINDS
from radforge.services.jobs.ray_submission import RayJobs
from radforge.services.jobs.raycluster import EmbeddedRay, ExternalRay, RayProvider
from radforge.services.jobs.runner import JobRunner
from radforge.services.schedule.scheduler import Scheduler


@dataclass
class Service:
    """Everything a request handler may need, built once per app."""

    settings: ServiceSettings
    secrets: Secrets
    store: Store
    metrics: Metrics
    ray: RayProvider
    runner: JobRunner
    scheduler: Scheduler
    history: History


def check_salt() -> None:
    """Ingest jobs need the de-identification salt from the service's environment: refuse to start without.

    The rule (at least 8 characters that are not whitespace) is the ingest config's own, so the
    service and ``radforge ingest`` refuse the same salts.
    """
    from radforge.config import ConfigError
    from radforge.ingest.config import DeidConfig

    try:
        DeidConfig().resolved_salt()
    except ConfigError as e:
        raise SettingsError(str(e)) from None


def build_service(settings: ServiceSettings) -> Service:
    """Open the database, resolve secrets, choose where jobs run; nothing is started yet."""
    check_salt()
    make_private_dir(settings.state_dir)  # database, job records, the API and Ray tokens
    secrets = resolve_secrets(settings)
    store = Store(settings.database)
    metrics = Metrics(job_counts=store.count_by_kind_state, kinds=lambda: sorted(KINDS))
    history = History()
    ray: RayProvider
    if settings.ray_address is None:
        ray = EmbeddedRay(settings.state_dir, num_cpus=settings.embedded_ray_cpus)
    elif settings.ray_job_submission:
        ray = RayJobs(settings.ray_address, python=settings.ray_job_python)
    else:
        ray = ExternalRay(settings.ray_address)
    runner = JobRunner(
        store=store,
        metrics=metrics,
        ray=ray,
        jobs_dir=settings.jobs_location,
        max_running=settings.max_running_jobs,
        max_running_by_kind=settings.max_running_by_kind,
        tick_seconds=settings.runner_tick_seconds,
        cancel_grace_seconds=settings.cancel_grace_seconds,
        ray_job_resubmits=settings.ray_job_resubmits,
        history=history,
    )
    scheduler = Scheduler(
        store=store, runner=runner, metrics=metrics, tick_seconds=settings.scheduler_tick_seconds
    )
    return Service(settings, secrets, store, metrics, ray, runner, scheduler, history)
