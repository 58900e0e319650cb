"""Recent series of what jobs report, kept in the service's memory, so the dashboard draws the last hour.

Each time the runner reads a new ``progress.json`` it calls :meth:`History.record`: every rate or
value the job reported (:data:`TRACKED`) becomes one point ``(time, value)`` of that job's series.
A page loaded now (a reload, a new tab) gets the whole window from ``GET /api/v1/history`` and
then only the points after the last it has (``since``); charts no longer start empty.

Memory is bounded: one point per series per :data:`RESOLUTION_S` (a newer report in the same
interval replaces the older), points older than :data:`WINDOW_S` are dropped, and at most
:data:`MAX_JOBS` jobs are kept (those with the oldest latest point go first). Worst case: 32 jobs x
5 series x 1,801 points of two floats, ~30 MB; a typical hour holds a few thousand points.

The history lives as long as the service process: a restarted service starts empty, while
Prometheus (``/metrics``) keeps the long-term view. Points carry job ids, kinds and numbers only.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict, deque

from pydantic import BaseModel

from radforge.services.jobs.progress import JobProgress

WINDOW_S = 3600.0  # the last hour
RESOLUTION_S = 2.0  # at most one point per series per 2 s (progress files change about once a second)
MAX_JOBS = 32
# What the charts draw: ingest write rates; training throughput, loss and share of time waiting for data.
TRACKED = ("samples_per_second", "bytes_per_second", "images_per_second", "loss", "data_wait_fraction")

Point = tuple[float, float]


class JobSeries(BaseModel):
    """One job's recent series: metric name -> ``[[unix time, value], ...]``, oldest first."""

    job_id: str
    kind: str
    series: dict[str, list[Point]]


class HistoryPublic(BaseModel):
    """What ``GET /api/v1/history`` returns: every job's points after ``since`` within the window."""

    time: float  # the service's clock (unix seconds): charts place points relative to it
    window_seconds: float
    resolution_seconds: float
    jobs: list[JobSeries]


def add_point(points: deque[Point], t: float, value: float, *, resolution: float = RESOLUTION_S) -> None:
    """Append ``(t, value)``, or replace the last point when both fall in the same ``resolution`` interval."""
    if points and math.floor(points[-1][0] / resolution) == math.floor(t / resolution):
        points[-1] = (t, value)
    else:
        points.append((t, value))


def drop_before(points: deque[Point], cutoff: float) -> None:
    """Drop points older than ``cutoff`` (they are oldest first)."""
    while points and points[0][0] < cutoff:
        points.popleft()


class _Job:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.series: dict[str, deque[Point]] = {}

    def latest(self) -> float:
        return max((s[-1][0] for s in self.series.values() if s), default=-math.inf)


class History:
    """Recent per-job series; thread-safe (the runner records, request handlers read)."""

    def __init__(
        self,
        *,
        window_seconds: float = WINDOW_S,
        resolution_seconds: float = RESOLUTION_S,
        max_jobs: int = MAX_JOBS,
    ) -> None:
        self.window = window_seconds
        self.resolution = resolution_seconds
        self.max_points = math.ceil(window_seconds / resolution_seconds) + 1  # both ends of the window
        self.max_jobs = max_jobs
        self._jobs: OrderedDict[str, _Job] = OrderedDict()
        self._lock = threading.Lock()

    def record(self, job_id: str, kind: str, progress: JobProgress, *, now: float) -> None:
        """Add one point per tracked value ``progress`` holds (non-finite values are skipped)."""
        values = {name: getattr(progress, name) for name in TRACKED}
        values = {k: float(v) for k, v in values.items() if v is not None and math.isfinite(v)}
        if not values:
            return
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                job = self._jobs[job_id] = _Job(kind)
            for name, value in values.items():
                points = job.series.setdefault(name, deque(maxlen=self.max_points))
                add_point(points, now, value, resolution=self.resolution)
            self._jobs.move_to_end(job_id)  # most recently reported last: eviction takes the front
            self._evict(now)

    def _evict(self, now: float) -> None:
        cutoff = now - self.window
        for job_id in [j for j, job in self._jobs.items() if job.latest() < cutoff]:
            del self._jobs[job_id]
        while len(self._jobs) > self.max_jobs:
            self._jobs.popitem(last=False)

    def snapshot(self, *, now: float, since: float | None = None) -> HistoryPublic:
        """Every job's points within the window and after ``since`` (all of them when None)."""
        cutoff = now - self.window
        after = cutoff if since is None else max(cutoff, since)
        jobs = []
        with self._lock:
            self._evict(now)
            for job_id, job in self._jobs.items():
                series = {}
                for name, points in job.series.items():
                    drop_before(points, cutoff)
                    recent = [p for p in points if p[0] > after] if since is not None else list(points)
                    if recent:
                        series[name] = recent
                if series:
                    jobs.append(JobSeries(job_id=job_id, kind=job.kind, series=series))
        return HistoryPublic(
            time=now, window_seconds=self.window, resolution_seconds=self.resolution, jobs=jobs
        )
