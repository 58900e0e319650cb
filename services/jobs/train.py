"""The training job process: ``python -m radforge.services.jobs.train --job-dir DIR --ray-address ADDR``.

A Ray driver that runs the resolved run config in ``DIR/spec.json`` with ``radforge train``'s
machinery (:func:`radforge.trainer.ray_launcher.launch`: Ray Train workers running
:func:`radforge.trainer.loop.run_training`) on the given cluster. Progress comes from the per-step metrics
the trainer writes next to its checkpoints (``OUTPUT/metrics/*.jsonl``, one file per checkpoint):
a reporter thread reads files it has not seen yet every second and turns the records into
``DIR/progress.json`` (step/total, images/s, loss, data wait). It ends with ``result.json`` (step,
checkpoint, mean images/s and data-wait fraction) or ``error.json`` (one line).

A cancelled run keeps its checkpoints: a new job with the same output resumes from the latest.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from radforge.services.jobs.progress import (
    ERROR,
    JOB_EXIT_FAILED,
    PROGRESS,
    RESULT,
    SPEC,
    JobProgress,
    job_file,
    job_main,
    read_json,
    write_json_atomic,
)
from radforge.services.jobs.raycluster import ray_reachable

log = logging.getLogger("radforge.train_job")
REPORT_EVERY_S = 1.0
RECENT_STEPS = 10  # "current" rates are over the latest steps recorded
ERROR_MAX_CHARS = 300


def _number(record: Mapping[str, Any], key: str) -> float | None:
    value = record.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def train_progress(
    records: Sequence[Mapping[str, Any]],
    *,
    total_steps: int,
    global_batch: int,
    phase: str,
    start_step: int = 0,
) -> JobProgress:
    """Progress from the trainer's per-step records (sorted by step); absent fields stay None.

    ``step`` is the run's; what this job did counts from ``start_step`` (the checkpoint it resumed
    from), so a resumed run's earlier steps are not counted twice: ``images_seen`` is its steps
    times the global batch (constant across workers), ``data_wait_seconds`` sums each of its
    steps' waiting time (fraction times step time). Rates are over the latest :data:`RECENT_STEPS`.
    """
    mine = [r for r in records if int(r["step"]) > start_step]
    if not records:
        return JobProgress(
            phase=phase, updated_at=time.time(), step=start_step, total_steps=total_steps, images_seen=0
        )
    last = records[-1]
    recent = mine[-RECENT_STEPS:]
    step = int(last["step"])
    wait = [(_number(r, "data_wait_fraction"), _number(r, "step_time_s")) for r in mine]
    recent_wait = [(f, t) for f, t in wait[-RECENT_STEPS:] if f is not None and t is not None]
    recent_time = sum(t for _, t in recent_wait)
    return JobProgress(
        phase=phase,
        updated_at=time.time(),
        step=step,
        total_steps=total_steps,
        images_seen=max(0, step - start_step) * global_batch,
        images_per_second=_mean([_number(r, "images_per_s") for r in recent]),
        tokens_per_second=_mean([_number(r, "tokens_per_s") for r in recent]),
        loss=_number(last, "loss"),
        mfu=_number(last, "mfu"),
        data_wait_seconds=sum(f * t for f, t in wait if f is not None and t is not None),
        data_wait_fraction=sum(f * t for f, t in recent_wait) / recent_time if recent_time > 0 else None,
    )


class MetricsFollower:
    """Reads the metrics files under a run's output as they appear (each is written once, atomically)."""

    def __init__(self, output: str) -> None:
        from radforge.storage import resolve
        from radforge.trainer.loop import METRICS

        self.root = resolve(output).join(METRICS)
        self._seen: set[tuple[str, Any, Any]] = set()
        self._by_step: dict[int, dict[str, Any]] = {}

    def records(self) -> list[dict[str, Any]]:
        """Every record so far, by step (a step re-run after a resume keeps its newest record)."""
        fs = self.root.fs
        fs.invalidate_cache(self.root.path)
        if not fs.exists(self.root.path):
            return []
        entries = sorted(fs.ls(self.root.path, detail=True), key=lambda e: str(e["name"]).rsplit("/", 1)[-1])
        for entry in entries:
            name = str(entry["name"])
            key = (name, entry.get("size"), entry.get("mtime") or entry.get("LastModified"))
            if not name.endswith(".jsonl") or key in self._seen:
                continue
            with fs.open(name, "rb") as f:
                for line in f.read().decode().splitlines():
                    if line.strip():
                        record = json.loads(line)
                        self._by_step[int(record["step"])] = record
            self._seen.add(key)
        return [self._by_step[s] for s in sorted(self._by_step)]


class _Reporter(threading.Thread):
    """Writes ``progress.json`` from the run's metrics files every second until stopped."""

    def __init__(
        self, follower: MetricsFollower, path: str, *, total_steps: int, global_batch: int, start_step: int
    ) -> None:
        super().__init__(name="progress-reporter", daemon=True)
        self.follower = follower
        self.path = path
        self.total_steps = total_steps
        self.global_batch = global_batch
        self.start_step = start_step
        self.stopped = threading.Event()

    def report(self, *, phase: str) -> JobProgress:
        progress = train_progress(
            self.follower.records(),
            total_steps=self.total_steps,
            global_batch=self.global_batch,
            phase=phase,
            start_step=self.start_step,
        )
        write_json_atomic(self.path, progress.model_dump(mode="json", exclude_none=True))
        return progress

    def run(self) -> None:
        while not self.stopped.wait(REPORT_EVERY_S):
            try:
                self.report(phase="training")
            except Exception as e:  # progress is best effort; the run goes on
                log.warning("progress report failed: %s", type(e).__name__)


def run(job_dir: str, ray_address: str) -> int:
    """Run the job; returns the process exit status."""
    from radforge.services.app.models import TrainJobSpec
    from radforge.trainer.checkpoint import CheckpointError, latest
    from radforge.trainer.ray_launcher import launch
    from radforge.trainer.run_config import TrainConfig, TrainConfigError

    spec = TrainJobSpec.model_validate(read_json(job_file(job_dir, SPEC)))
    cfg = TrainConfig.model_validate({**spec.run, "ray_address": ray_address})
    started = time.time()
    resumed = latest(cfg.output) if cfg.checkpoint.resume else None
    reporter = _Reporter(
        MetricsFollower(cfg.output),
        job_file(job_dir, PROGRESS),
        total_steps=cfg.steps,
        global_batch=cfg.batch.global_size,
        start_step=resumed.step if resumed is not None else 0,
    )
    reporter.report(phase="starting")
    try:
        if not ray_reachable(ray_address):
            raise ConnectionError(f"the Ray cluster at {ray_address} is not reachable")
        reporter.start()
        try:
            outcome = launch(cfg, storage_path=job_file(job_dir, "ray-train"))
        finally:
            reporter.stopped.set()
            reporter.join()
        if outcome.error is not None:
            raise outcome.error
        final = reporter.report(phase="done")
        ref = latest(cfg.output)
    except (TrainConfigError, CheckpointError, ConnectionError) as e:
        write_json_atomic(job_file(job_dir, ERROR), {"error": f"{type(e).__name__}: {e}"[:ERROR_MAX_CHARS]})
        log.error("train job failed: %s", e)
        return JOB_EXIT_FAILED
    result = {
        "step": final.step,
        "resumed_from": resumed.step if resumed is not None else None,
        "total_steps": cfg.steps,
        "checkpoint": ref.location.uri if ref is not None else None,
        "images_seen": final.images_seen,
        "data_wait_seconds": final.data_wait_seconds,
        "seconds": round(time.time() - started, 3),
    }
    write_json_atomic(job_file(job_dir, RESULT), result)
    log.info("summary %s", json.dumps(result, sort_keys=True))
    return 0


def _describe_error(e: Exception) -> str:
    """Ray Train wraps worker errors; their type and first line are what an operator needs."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    message = f"{type(e).__name__}: {first}" if first else f"unexpected {type(e).__name__}"
    return message[:ERROR_MAX_CHARS]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the job process."""
    return job_main(
        argv,
        prog="python -m radforge.services.jobs.train",
        description=__doc__,
        run=run,
        describe_error=_describe_error,
        logger=log,
    )


if __name__ == "__main__":
    sys.exit(main())
