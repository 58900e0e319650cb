"""Every metric is declared once and passes promtool's lint with all its label sets in use."""

from __future__ import annotations

import subprocess

from radforge.services.app.metrics import Metrics
from radforge.services.jobs.progress import JobProgress
from tests.services.support import metric_value


def make() -> Metrics:
    return Metrics(
        job_counts=lambda: {("ingest", "running"): 2, ("train", "failed"): 1}, kinds=lambda: ["ingest"]
    )


def test_progress_counts_deltas_never_backwards() -> None:
    m = make()
    m.count_progress("ingest", None, JobProgress(samples_written=10, bytes_written=1000, shards_written=1))
    m.count_progress(
        "ingest",
        JobProgress(samples_written=10, bytes_written=1000, shards_written=1),
        JobProgress(samples_written=25, bytes_written=2500, shards_written=2),
    )
    # a report going backwards (a restarted job process) adds nothing
    m.count_progress("ingest", JobProgress(samples_written=25), JobProgress(samples_written=5))
    text = m.render().decode()
    assert metric_value(text, "radforge_ingest_samples_written_total") == 25
    assert metric_value(text, "radforge_ingest_bytes_written_total") == 2500
    assert metric_value(text, "radforge_ingest_shards_written_total") == 2


def test_training_progress_feeds_train_metrics() -> None:
    m = make()
    m.count_progress("train", None, JobProgress(step=10, images_seen=640, loss=7.5, data_wait_seconds=1.5))
    m.count_progress(
        "train",
        JobProgress(step=10, images_seen=640, data_wait_seconds=1.5),
        JobProgress(step=20, images_seen=1280, loss=6.0, data_wait_seconds=2.0),
    )
    text = m.render().decode()
    assert metric_value(text, "radforge_train_images_total") == 1280
    assert metric_value(text, "radforge_train_step") == 20
    assert metric_value(text, "radforge_train_loss") == 6.0
    assert metric_value(text, "radforge_train_data_wait_seconds_total") == 2.0


def test_series_outcomes_by_status_and_reason() -> None:
    m = make()
    m.count_series(
        by_status={"ingested": 3, "skipped": 2, "quarantined": 2},
        by_reason={"localizer": 2, "decode_failed": 1, "reason_from_a_newer_build": 1},
    )
    text = m.render().decode()
    assert metric_value(text, "radforge_ingest_series_total", {"status": "ingested", "reason": "none"}) == 3
    assert (
        metric_value(text, "radforge_ingest_series_total", {"status": "skipped", "reason": "localizer"}) == 2
    )
    assert (
        metric_value(
            text, "radforge_ingest_series_total", {"status": "quarantined", "reason": "decode_failed"}
        )
        == 1
    )
    assert (
        metric_value(text, "radforge_ingest_series_total", {"status": "quarantined", "reason": "other"}) == 1
    )


def test_jobs_gauge_lists_every_state_of_every_kind() -> None:
    text = make().render().decode()
    assert metric_value(text, "radforge_jobs", {"kind": "ingest", "state": "running"}) == 2
    assert metric_value(text, "radforge_jobs", {"kind": "ingest", "state": "cancelled"}) == 0
    assert metric_value(text, "radforge_jobs", {"kind": "train", "state": "failed"}) == 1
    assert "_created" not in text


def test_promtool_accepts_every_metric_in_use() -> None:
    m = make()
    m.count_progress("ingest", None, JobProgress(samples_written=1, bytes_written=1, shards_written=1))
    m.count_progress("train", None, JobProgress(step=1, images_seen=1, loss=1.0, data_wait_seconds=0.1))
    m.count_series(by_status={"ingested": 1}, by_reason={"unreadable": 1})
    m.count_finished(kind="ingest", state="succeeded", seconds=12.0)
    m.jobs_submitted.labels(kind="ingest", origin="api").inc()
    m.scheduler_polls.labels(outcome="ok").inc()
    m.scheduler_lag.set(0.2)
    m.scheduler_lag_hist.observe(0.2)
    m.running_throughput.set(3.0)
    text = m.render().decode()
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    assert len(names) == 18, sorted(names)
    lint = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
