"""The ingest job process: ``python -m radforge.services.jobs.ingest --job-dir DIR --ray-address ADDR``.

A Ray driver that runs :func:`radforge.ingest.pipeline.run_ingest` for the spec in ``DIR/spec.json`` on
the given cluster, with live progress: the datasink's write tasks report what they wrote to a
small counter actor, and a reporter thread turns the counts into ``DIR/progress.json`` (with
current rates and the number of series planned) every second. It ends with ``result.json`` (the
PHI-free ingest summary) or ``error.json`` (one line), following :mod:`radforge.services.jobs.progress`.

The dataset commit is the point of no return: before it the job ignores SIGTERM/SIGINT and writes
``commit.json`` ("committing", then "committed"), so a cancel arriving from then on can neither
interrupt the commit nor turn a committed job into a "cancelled" one.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from typing import Any

from radforge.services.jobs.progress import (
    COMMIT,
    COMMITTED,
    COMMITTING,
    ERROR,
    JOB_EXIT_FAILED,
    PROGRESS,
    RESULT,
    SPEC,
    JobProgress,
    RateWindow,
    job_file,
    job_main,
    read_json,
    unexpected_error_type,
    write_json_atomic,
)
from radforge.services.jobs.raycluster import ray_reachable

log = logging.getLogger("radforge.ingest_job")
REPORT_EVERY_S = 1.0


def progress_sink_class(counter: Any, job_dir: str) -> type:
    """The project's MDS datasink, reporting each finished write task to ``counter`` (a Ray actor).

    Its commit (on the driver) runs past the point of no return: cancel signals are ignored from
    just before it, and ``commit.json`` records it.
    """
    from radforge.sharder.datasink import MDSDatasink

    class ProgressSink(MDSDatasink):
        def on_write_complete(self, write_result: Any) -> None:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_IGN)
            write_json_atomic(job_file(job_dir, COMMIT), {"state": COMMITTING, "at": time.time()})
            super().on_write_complete(write_result)
            result = self.result or {}
            write_json_atomic(
                job_file(job_dir, COMMIT),
                {"state": COMMITTED, "at": time.time(), "committed": bool(result.get("committed"))},
            )

        def write(self, blocks: Any, ctx: Any) -> dict[str, Any]:
            out = super().write(blocks, ctx)
            counter.add.remote(
                samples=out["samples"],
                nbytes=out["bytes"],
                shards=len(out["shards"]),
                series=len(out["series"]),
            )
            return out

    return ProgressSink


class _Counts:
    """Totals reported by write tasks (the body of the counter actor)."""

    def __init__(self) -> None:
        self.totals = {"samples": 0, "nbytes": 0, "shards": 0, "series": 0}

    def add(self, *, samples: int, nbytes: int, shards: int, series: int) -> None:
        for key, value in (("samples", samples), ("nbytes", nbytes), ("shards", shards), ("series", series)):
            self.totals[key] += int(value)

    def snapshot(self) -> dict[str, int]:
        return dict(self.totals)


class _Reporter(threading.Thread):
    """Writes ``progress.json`` from the counter actor every second until stopped."""

    def __init__(self, counter: Any, path: str) -> None:
        super().__init__(name="progress-reporter", daemon=True)
        self.counter = counter
        self.path = path
        self.series_total: int | None = None  # known once the series are planned
        self.stopped = threading.Event()
        self.samples_rate = RateWindow()
        self.bytes_rate = RateWindow()

    def report(self, *, phase: str) -> JobProgress:
        import ray

        totals = ray.get(self.counter.snapshot.remote(), timeout=30)
        progress = JobProgress(
            phase=phase,
            updated_at=time.time(),
            series_done=totals["series"],
            series_total=self.series_total,
            samples_written=totals["samples"],
            shards_written=totals["shards"],
            bytes_written=totals["nbytes"],
            samples_per_second=self.samples_rate.add(totals["samples"]),
            bytes_per_second=self.bytes_rate.add(totals["nbytes"]),
        )
        write_json_atomic(self.path, progress.model_dump(mode="json", exclude_none=True))
        return progress

    def run(self) -> None:
        while not self.stopped.wait(REPORT_EVERY_S):
            try:
                self.report(phase="running")
            except Exception as e:  # progress is best effort; the job goes on
                log.warning("progress report failed: %s", type(e).__name__)


def run(job_dir: str, ray_address: str) -> int:
    """Run the job; returns the process exit status."""
    import ray

    from radforge.config import ConfigError
    from radforge.ingest.config import RayConfig
    from radforge.ingest.deid import silence_identifying_library_logs
    from radforge.ingest.errors import SourceError
    from radforge.ingest.pipeline import run_ingest
    from radforge.runtime import ensure_ray
    from radforge.services.app.models import IngestJobCreate
    from radforge.sharder.catalog import DatasetError
    from radforge.sharder.schema import SchemaVersionError

    silence_identifying_library_logs()
    spec = IngestJobCreate.model_validate(read_json(job_file(job_dir, SPEC)))
    cfg = spec.config.model_copy(update={"ray": RayConfig(address=ray_address)})
    write_json_atomic(
        job_file(job_dir, PROGRESS),
        JobProgress(phase="starting", updated_at=time.time()).model_dump(mode="json", exclude_none=True),
    )
    try:
        if not ray_reachable(ray_address):
            raise SourceError(f"the Ray cluster at {ray_address} is not reachable")
        ensure_ray(ray_address)
        counter = ray.remote(num_cpus=0)(_Counts).remote()
        reporter = _Reporter(counter, job_file(job_dir, PROGRESS))
        reporter.start()

        def planned(series: int, slices: int) -> None:
            reporter.series_total = series

        try:
            summary = run_ingest(
                spec.source_uri,
                spec.dataset_uri,
                cfg,
                sink_cls=progress_sink_class(counter, job_dir),
                on_plan=planned,
            )
        finally:
            reporter.stopped.set()
            reporter.join()
        final = reporter.report(phase="done")
    except (ConfigError, SourceError, DatasetError, SchemaVersionError) as e:
        write_json_atomic(job_file(job_dir, ERROR), {"error": f"{type(e).__name__}: {e}"})
        log.error("ingest job failed: %s", e)
        return JOB_EXIT_FAILED
    result = summary.to_dict()
    final = final.model_copy(update={"series_total": summary.series, "series_done": summary.series})
    write_json_atomic(job_file(job_dir, PROGRESS), final.model_dump(mode="json", exclude_none=True))
    write_json_atomic(job_file(job_dir, RESULT), result)
    log.info("summary %s", json.dumps(result, sort_keys=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the job process."""
    return job_main(
        argv,
        prog="python -m radforge.services.jobs.ingest",
        description=__doc__,
        run=run,
        describe_error=unexpected_error_type,
        logger=log,
    )


if __name__ == "__main__":
    sys.exit(main())
