"""Every Prometheus metric of the control plane, declared once, here.

Names follow Prometheus conventions: a ``radforge_`` prefix, base units in the name (seconds,
bytes), ``_total`` on counters. Labels are closed sets (kinds, states, statuses, reasons): never
job ids, URIs or anything from a header. Each app builds its own registry, so several apps (tests)
can live in one process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from radforge.services.app.models import JobState
from radforge.services.jobs.progress import JobProgress

# 1 s .. 4 days: ingest jobs take seconds to hours, pretraining runs days.
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400, 172800, 345600)
LAG_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 300)


class _JobsByState(Collector):
    """``radforge_jobs``: jobs by kind and state, read from the database at scrape time."""

    def __init__(self, counts: Callable[[], Mapping[tuple[str, str], int]], kinds: Callable[[], list[str]]):
        self._counts = counts
        self._kinds = kinds

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "radforge_jobs", "Jobs in the database by kind and state", labels=["kind", "state"]
        )
        counts = self._counts()
        kinds = sorted(set(self._kinds()) | {k for k, _ in counts})
        for kind in kinds:
            for state in JobState:
                family.add_metric([kind, state.value], counts.get((kind, state.value), 0))
        yield family


class Metrics:
    """The service's metrics on its own registry."""

    def __init__(
        self,
        *,
        job_counts: Callable[[], Mapping[tuple[str, str], int]],
        kinds: Callable[[], list[str]],
    ) -> None:
        disable_created_metrics()  # no *_created series: timestamps Prometheus does not need
        r = self.registry = CollectorRegistry()
        r.register(_JobsByState(job_counts, kinds))
        # jobs
        self.jobs_submitted = Counter(
            "radforge_jobs_submitted_total", "Jobs submitted", ["kind", "origin"], registry=r
        )
        self.jobs_finished = Counter(
            "radforge_jobs_finished_total",
            "Jobs that reached a terminal state",
            ["kind", "state"],
            registry=r,
        )
        self.job_duration = Histogram(
            "radforge_job_duration_seconds",
            "Run time of finished jobs (start to end)",
            ["kind", "state"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        # ingest
        self.ingest_samples = Counter(
            "radforge_ingest_samples_written_total",
            "2D slice samples (one slice in one window) written to shards by ingest jobs",
            registry=r,
        )
        self.ingest_bytes = Counter(
            "radforge_ingest_bytes_written_total", "Shard bytes written by ingest jobs", registry=r
        )
        self.ingest_shards = Counter(
            "radforge_ingest_shards_written_total", "MDS shards written by ingest jobs", registry=r
        )
        self.ingest_series = Counter(
            "radforge_ingest_series_total",
            "Series decided by finished ingest jobs, by status and reason ('none' when ingested)",
            ["status", "reason"],
            registry=r,
        )
        # train
        self.train_images = Counter(
            "radforge_train_images_total", "Images consumed by training steps", registry=r
        )
        self.train_step = Gauge(
            "radforge_train_step", "Latest optimizer step of running training jobs", registry=r
        )
        self.train_loss = Gauge(
            "radforge_train_loss", "Latest training loss of running training jobs", registry=r
        )
        self.train_data_wait = Counter(
            "radforge_train_data_wait_seconds_total", "Time training steps waited for data", registry=r
        )
        self.train_images_rate = Gauge(
            "radforge_train_images_per_second",
            "Current training throughput of running training jobs, summed (as reported by the jobs)",
            registry=r,
        )
        self.train_data_wait_ratio = Gauge(
            "radforge_train_data_wait_ratio",
            "Share of recent step time spent waiting for data (the highest of running training jobs)",
            registry=r,
        )
        # scheduler
        self.scheduler_lag = Gauge(
            "radforge_scheduler_lag_seconds",
            "How late the latest source poll started after it was due",
            registry=r,
        )
        self.scheduler_lag_hist = Histogram(
            "radforge_scheduler_poll_lag_seconds",
            "How late source polls started after they were due",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.scheduler_polls = Counter(
            "radforge_scheduler_polls_total", "Source polls by outcome", ["outcome"], registry=r
        )
        self.running_throughput = Gauge(
            "radforge_ingest_samples_per_second",
            "Current write rate of running ingest jobs, summed (as reported by the jobs)",
            registry=r,
        )

    def render(self) -> bytes:
        """The exposition text (``text/plain; version=0.0.4``)."""
        return generate_latest(self.registry)

    def count_progress(self, kind: str, before: JobProgress | None, after: JobProgress) -> None:
        """Add what a job did between two progress reports to the counters (never negative)."""

        def delta(field: str) -> float:
            now = getattr(after, field)
            then = getattr(before, field) if before is not None else None
            return max(0.0, float(now or 0) - float(then or 0))

        if kind == "ingest":
            self.ingest_samples.inc(delta("samples_written"))
            self.ingest_bytes.inc(delta("bytes_written"))
            self.ingest_shards.inc(delta("shards_written"))
        elif kind == "train":
            self.train_images.inc(delta("images_seen"))
            self.train_data_wait.inc(delta("data_wait_seconds"))
            if after.step is not None:
                self.train_step.set(after.step)
            if after.loss is not None:
                self.train_loss.set(after.loss)

    def set_running(self, running: list[tuple[str, JobProgress]]) -> None:
        """Current rates, summed over running jobs (zero when none runs)."""
        self.running_throughput.set(sum(p.samples_per_second or 0.0 for k, p in running if k == "ingest"))
        self.train_images_rate.set(sum(p.images_per_second or 0.0 for k, p in running if k == "train"))
        waits = [
            p.data_wait_fraction for k, p in running if k == "train" and p.data_wait_fraction is not None
        ]
        self.train_data_wait_ratio.set(max(waits) if waits else 0.0)

    def count_finished(self, *, kind: str, state: str, seconds: float | None) -> None:
        self.jobs_finished.labels(kind=kind, state=state).inc()
        if seconds is not None:
            self.job_duration.labels(kind=kind, state=state).observe(max(0.0, seconds))

    def count_series(self, *, by_status: Mapping[str, int], by_reason: Mapping[str, int]) -> None:
        """Series outcomes of a finished ingest job (its summary), by status and reason."""
        from radforge.ingest.errors import Reason, status_for

        for reason, n in by_reason.items():
            try:
                status = status_for(Reason(reason)).value
            except ValueError:
                status, reason = "quarantined", "other"  # a reason this build does not know
            self.ingest_series.labels(status=status, reason=reason).inc(n)
        ingested = int(by_status.get("ingested", 0))
        if ingested:
            self.ingest_series.labels(status="ingested", reason="none").inc(ingested)
