"""The scheduler: polls watched prefixes and submits ingest jobs for new (or changed) archives.

Sources are polled on their interval or at their cron times; an archive already ingested, or
being ingested, never gets a second job. A source that rescans ingested archives lists each one
and compares the listing with the inventory its last ingest left in the dataset
(:mod:`radforge.ingest.inventory`): a job only when objects were added, changed or removed.

Each folder directly below a source's prefix is an archive (a hospital delivery); its name is
its archive id in the dataset catalog. One poll gathers facts (folders, catalog, this service's
job history, optional fingerprints) and applies :func:`radforge.services.schedule.decisions.plan_submissions`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from datetime import UTC, datetime

from radforge.ingest.config import IngestConfig
from radforge.ingest.inventory import archive_unchanged
from radforge.services.app.db import Store
from radforge.services.app.metrics import Metrics
from radforge.services.app.models import (
    TERMINAL_STATES,
    ArchiveOutcome,
    IngestJobCreate,
    JobState,
    PollResult,
    SourceRecord,
)
from radforge.services.app.security import check_uri, redact_below
from radforge.services.jobs.kinds import archive_lock
from radforge.services.jobs.runner import JobRunner
from radforge.services.schedule.decisions import ArchiveObservation, next_poll, plan_submissions
from radforge.sharder.catalog import load_catalog
from radforge.storage import Location, resolve

log = logging.getLogger(__name__)
ERROR_MAX_CHARS = 300


def list_archives(prefix: str, *, ready_marker: str | None) -> dict[str, str]:
    """Archive name -> URI for each folder directly below ``prefix`` (holding ``ready_marker`` if set).

    Names starting with ``.`` or ``_`` are skipped (uploads in progress, staging folders).
    """
    loc = resolve(prefix)
    fs = loc.fs
    fs.invalidate_cache(loc.path)  # object stores: see new deliveries, not a cached listing
    if not fs.exists(loc.path):
        return {}
    archives: dict[str, str] = {}
    for entry in fs.ls(loc.path, detail=True):
        if entry.get("type") != "directory":
            continue
        name = str(entry["name"]).rstrip("/").rsplit("/", 1)[-1]
        if not name or name[0] in "._":
            continue
        archive = loc.join(name)
        if ready_marker and not fs.exists(archive.join(ready_marker).path):
            continue
        archives[name] = check_uri(archive.uri)
    return archives


def fingerprint(uri: str) -> str:
    """A hash of the relative names and sizes of the objects below ``uri`` (changes when some are added)."""
    loc = resolve(uri)
    loc.fs.invalidate_cache(loc.path)
    h = hashlib.sha256()
    for path, info in sorted(loc.fs.find(loc.path, detail=True).items()):
        h.update(f"{loc.relative(path)}\t{info.get('size')}\n".encode())
    return h.hexdigest()[:32]


def catalog_archives(dataset_uri: str) -> set[str]:
    """Archive ids with a committed part in the dataset (empty if there is no dataset yet)."""
    root: Location = resolve(dataset_uri)
    root.fs.invalidate_cache(root.path)
    return {str(p.get("archive_id")) for p in load_catalog(root).parts}


def _history_facts(states: list[str]) -> tuple[str | None, int]:
    """(state of the last finished job, failed jobs since the last success)."""
    finished = [s for s in states if s in TERMINAL_STATES]
    failed = 0
    for s in reversed(finished):
        if s != JobState.FAILED:
            break
        failed += 1
    return (finished[-1] if finished else None), failed


class Scheduler:
    """Polls due sources in a background thread; :meth:`poll` also serves "poll now" requests."""

    def __init__(
        self, *, store: Store, runner: JobRunner, metrics: Metrics, tick_seconds: float = 1.0
    ) -> None:
        self.store = store
        self.runner = runner
        self.metrics = metrics
        self.tick_seconds = tick_seconds
        self._stop = threading.Event()
        self._poll_lock = threading.Lock()  # one poll at a time: no double submission
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.wait(self.tick_seconds):
            try:
                for source in self.store.due_sources(now=time.time()):
                    self.poll(source, due=source.next_poll_at)
            except Exception:
                log.exception("scheduler tick failed")

    def poll(self, source: SourceRecord, *, due: float | None = None) -> PollResult:
        """Poll one source now: submit jobs for archives that need one; record when it is due next."""
        with self._poll_lock:
            started = time.time()
            outcomes: list[ArchiveOutcome] = []
            error: str | None = None
            try:
                outcomes = self._decide_and_submit(source)
            except Exception as e:  # a bucket that cannot be listed must not stop the scheduler
                error = redact_below(f"{type(e).__name__}: {e}", [source.uri])[:ERROR_MAX_CHARS]
                log.warning("polling source %s failed: %s", source.name, error)
            lag = None if due is None else max(0.0, started - due)
            after = datetime.fromtimestamp(started, tz=UTC)
            self.store.update_source(
                source.id,
                {
                    "last_poll_at": started,
                    "next_poll_at": next_poll(
                        interval_seconds=source.interval_seconds, cron=source.cron, after=after
                    ).timestamp(),
                    "last_lag_seconds": lag,
                    "last_error": error,
                    "updated_at": time.time(),
                },
            )
            self.metrics.scheduler_polls.labels(outcome="error" if error else "ok").inc()
            if lag is not None:
                self.metrics.scheduler_lag.set(lag)
                self.metrics.scheduler_lag_hist.observe(lag)
            return PollResult(
                source_id=source.id,
                polled_at=after,
                archives=outcomes,
                submitted=[o.job_id for o in outcomes if o.job_id],
            )

    def _decide_and_submit(self, source: SourceRecord) -> list[ArchiveOutcome]:
        archives = list_archives(source.uri, ready_marker=source.ready_marker)
        if not archives:
            return []
        in_catalog = catalog_archives(source.dataset_uri)
        history = self.store.archive_history(source.id)
        active = self.store.active_locks()
        known = self.store.fingerprints(source.id)
        now_fp: dict[str, str] = {}
        observations = []
        for name, uri in archives.items():
            last_state, failed = _history_facts(history.get(name, []))
            ingested = name in in_catalog or last_state == JobState.SUCCEEDED
            unchanged = None
            if source.rescan_ingested and ingested:
                unchanged = archive_unchanged(source.dataset_uri, uri)
            if unchanged is None and source.rescan_ingested and ingested:
                now_fp[name] = fingerprint(uri)
                if name not in known:  # first sight of an archive ingested elsewhere: the baseline
                    self.store.set_fingerprint(source.id, name, now_fp[name], now=time.time())
                    known[name] = now_fp[name]
            observations.append(
                ArchiveObservation(
                    name=name,
                    in_catalog=name in in_catalog,
                    active=archive_lock(uri) in active,
                    last_state=last_state,
                    failed_attempts=failed,
                    fingerprint=now_fp.get(name),
                    ingested_fingerprint=known.get(name),
                    inventory_unchanged=unchanged,
                )
            )
        outcomes = []
        config = IngestConfig.model_validate(source.config)
        for decision in plan_submissions(observations, max_attempts=source.max_attempts):
            job_id = None
            if decision.submit:
                spec = IngestJobCreate(
                    kind="ingest",
                    source_uri=archives[decision.name],
                    dataset_uri=source.dataset_uri,
                    config=config,
                )
                job = self.runner.submit(
                    spec,
                    priority=source.priority,
                    origin="scheduler",
                    source_id=source.id,
                    archive=decision.name,
                )
                job_id = job.id
                if source.rescan_ingested:  # what this job will see: the baseline for later polls
                    fp = now_fp.get(decision.name) or fingerprint(archives[decision.name])
                    self.store.set_fingerprint(source.id, decision.name, fp, now=time.time())
                log.info(
                    "source %s: submitted job %s for archive %s (%s)",
                    source.name,
                    job.id,
                    decision.name,
                    decision.reason,
                )
            outcomes.append(
                ArchiveOutcome(
                    name=decision.name, submit=decision.submit, reason=decision.reason, job_id=job_id
                )
            )
        return outcomes
