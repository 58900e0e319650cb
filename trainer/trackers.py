"""Where the training loop's per-step records go: JSONL next to the checkpoints, and TensorBoard or MLflow.

Every tracker receives the same records (one dict per step, fields in docs/training.md) on rank 0:

- :class:`JsonlTracker` (always): ``OUTPUT/metrics/FIRST-LAST.jsonl``, one file per flush (object
  stores cannot append); :func:`read_metrics` and :class:`MetricsTail` read them back.
- :class:`TensorBoardTracker` (``metrics.trackers: [tensorboard]``): one scalar per numeric field,
  tagged with the field's name, at the record's step and wall time, in ``metrics.tensorboard_dir``
  (default ``OUTPUT/tensorboard``; a local folder).
- :class:`MlflowTracker` (``metrics.trackers: [mlflow]``): one MLflow metric per numeric field, at
  the record's step and time, in a run of ``metrics.mlflow_experiment`` at ``metrics.mlflow_tracking_uri``;
  a resumed training run continues the same MLflow run (its id is kept in ``OUTPUT/metrics/mlflow.json``).

Which fields a tracker gets is one decision, :func:`scalars`: every number of the record but ``step``
and ``time`` (those place the point), so the trackers and the JSONL hold the same values. The
TensorBoard and MLflow packages are imported only when their tracker is opened (extra
``radforge[trackers]``).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

from radforge.storage import read_bytes, redact, resolve, write_bytes_atomic

logger = logging.getLogger(__name__)

METRICS = "metrics"  # the JSONL folder under a run's output
TENSORBOARD = "tensorboard"  # the default TensorBoard folder under a (local) run's output
MLFLOW_RUN = "mlflow.json"  # under METRICS: the MLflow run a resumed training run continues
TRACKERS = ("tensorboard", "mlflow")
TrackerName = Literal["tensorboard", "mlflow"]
MLFLOW_BATCH = 1000  # MLflow's limit of metrics per log_batch call
PLACING = ("step", "time")  # fields that place a point rather than being one


class TrackerError(ValueError):
    """A tracker cannot be opened (package missing, folder not local); the message says what to change."""


class Tracker(Protocol):
    """A sink for per-step records: ``log`` each step, ``flush`` at flush points, ``close`` once."""

    def log(self, record: Mapping[str, Any]) -> None: ...

    def flush(self) -> None: ...

    def close(self, *, failed: bool = False) -> None: ...


def scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The record's numeric fields but ``step`` and ``time``, as floats (None, bools, lists, NaN left out)."""
    out = {}
    for key, value in record.items():
        if key in PLACING or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


# --- JSONL ------------------------------------------------------------------------------------------


def metrics_files(output: str) -> list[tuple[int, str]]:
    """(first step, path) of every JSONL file under ``output``/metrics, by first step."""
    root = resolve(output).join(METRICS)
    fs = root.fs
    fs.invalidate_cache(root.path)
    if not fs.exists(root.path):
        return []
    files = []
    for path in fs.ls(root.path, detail=False):
        name = str(path).rsplit("/", 1)[-1]
        if name.endswith(".jsonl") and name.split("-", 1)[0].isdigit():
            files.append((int(name.split("-", 1)[0]), str(path)))
    return sorted(files)


class JsonlTracker:
    """Buffers per-step records; writes them as one JSONL object per flush (stores cannot append).

    Files are ``metrics/FIRST-LAST.jsonl``. A run that resumes from step N first deletes files
    starting after N (written by the attempt that crashed), so re-run steps are never shadowed.
    """

    def __init__(self, output: str, *, resumed_from: int | None = None) -> None:
        self.root = resolve(output).join(METRICS)
        self.pending: list[dict[str, Any]] = []
        if resumed_from is not None:
            for first, path in metrics_files(output):
                if first > resumed_from:
                    self.root.fs.rm(path)

    def log(self, record: Mapping[str, Any]) -> None:
        self.pending.append(dict(record))

    def flush(self) -> None:
        if not self.pending:
            return
        first, last = self.pending[0]["step"], self.pending[-1]["step"]
        text = "".join(json.dumps(r) + "\n" for r in self.pending)
        write_bytes_atomic(self.root.join(f"{first:08d}-{last:08d}.jsonl"), text.encode())
        self.pending = []

    def close(self, *, failed: bool = False) -> None:
        """Nothing to release; records after the last flush are dropped (a resume re-runs those steps)."""


def read_metrics(output: str) -> list[dict[str, Any]]:
    """Every flushed per-step record under ``output``, by step (a re-run step keeps its newest record)."""
    root = resolve(output).join(METRICS)
    by_step: dict[int, dict[str, Any]] = {}
    for _, path in metrics_files(output):
        with root.fs.open(path, "rb") as f:
            for line in f.read().decode().splitlines():
                rec = json.loads(line)
                by_step[int(rec["step"])] = rec
    return [by_step[s] for s in sorted(by_step)]


class MetricsTail:
    """Records of metrics files new under ``output`` since the last :meth:`poll` (a Ray run's progress)."""

    def __init__(self, output: str) -> None:
        self.output = output
        self.seen: set[str] = set()

    def poll(self) -> list[dict[str, Any]]:
        root = resolve(self.output).join(METRICS)
        new: list[dict[str, Any]] = []
        for _, path in metrics_files(self.output):
            if path in self.seen:
                continue
            self.seen.add(path)
            with root.fs.open(path, "rb") as f:
                new += [json.loads(line) for line in f.read().decode().splitlines()]
        return sorted(new, key=lambda r: int(r["step"]))


# --- TensorBoard ------------------------------------------------------------------------------------


def tensorboard_dir(output: str, configured: str | None) -> Path:
    """The local folder TensorBoard writes to: ``configured``, else ``OUTPUT/tensorboard`` (local output)."""
    if configured is not None:
        return Path(configured)
    loc = resolve(output)
    if not loc.is_local:
        raise TrackerError(
            f"metrics.trackers has tensorboard but output {redact(output)!r} is not a local folder: set "
            f"metrics.tensorboard_dir to a local folder (TensorBoard event files are appended to)"
        )
    return Path(loc.path) / TENSORBOARD


class TensorBoardTracker:
    """Scalars through torch's ``SummaryWriter``; a resumed run purges the steps after its checkpoint."""

    def __init__(self, log_dir: Path, *, resumed_from: int | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:  # torch raises this when the tensorboard package is missing
            raise TrackerError(
                f"metrics.trackers has tensorboard but it is not installed ({err}): "
                "pip install 'radforge[trackers]'"
            ) from err
        purge = None if resumed_from is None else resumed_from + 1
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge)

    def log(self, record: Mapping[str, Any]) -> None:
        step, wall = int(record["step"]), record.get("time")
        for key, value in scalars(record).items():
            self.writer.add_scalar(key, value, global_step=step, walltime=wall)

    def flush(self) -> None:
        self.writer.flush()

    def close(self, *, failed: bool = False) -> None:
        self.writer.close()


# --- MLflow -----------------------------------------------------------------------------------------


class MlflowTracker:
    """Metrics of one MLflow run, logged in batches at each flush; ``params`` are logged once at the start.

    The run id is kept under the output's metrics folder: a resumed training run logs into the same
    MLflow run (points of re-run steps are logged again; MLflow keeps every point of a history).
    """

    def __init__(
        self,
        output: str,
        *,
        tracking_uri: str | None,
        experiment: str,
        run_name: str,
        params: Mapping[str, Any],
        resumed_from: int | None = None,
    ) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as err:
            raise TrackerError(
                f"metrics.trackers has mlflow but it is not installed ({err}): "
                "pip install 'radforge[trackers]'"
            ) from err
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        self.client = MlflowClient(tracking_uri=uri)
        self.pending: list[Any] = []
        self.run_file = resolve(output).join(METRICS, MLFLOW_RUN)
        run_id = None
        if resumed_from is not None and self.run_file.fs.exists(self.run_file.path):
            run_id = json.loads(read_bytes(self.run_file))["run_id"]
            self.client.update_run(run_id, status="RUNNING")
        if run_id is None:
            found = self.client.get_experiment_by_name(experiment)
            exp_id = found.experiment_id if found is not None else self.client.create_experiment(experiment)
            run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id
            from mlflow.entities import Param

            self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
            write_bytes_atomic(
                self.run_file,
                json.dumps({"run_id": run_id, "tracking_uri": redact(self.client.tracking_uri)}).encode(),
            )
        self.run_id: str = run_id
        logger.info(
            "MLflow run %s (experiment %r) at %s", run_id, experiment, redact(self.client.tracking_uri)
        )

    def log(self, record: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric

        step = int(record["step"])
        millis = int(float(record.get("time", 0.0)) * 1000)
        self.pending += [Metric(k, v, millis, step) for k, v in scalars(record).items()]

    def flush(self) -> None:
        for i in range(0, len(self.pending), MLFLOW_BATCH):
            self.client.log_batch(self.run_id, metrics=self.pending[i : i + MLFLOW_BATCH])
        self.pending = []

    def close(self, *, failed: bool = False) -> None:
        if not failed:
            self.flush()
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


# --- all of them -------------------------------------------------------------------------------------


class Trackers:
    """The JSONL tracker and the configured others, as one :class:`Tracker`."""

    def __init__(self, trackers: Sequence[Tracker]) -> None:
        self.trackers = list(trackers)

    def log(self, record: Mapping[str, Any]) -> None:
        for t in self.trackers:
            t.log(record)

    def flush(self) -> None:
        for t in self.trackers:
            t.flush()

    def close(self, *, failed: bool = False) -> None:
        for t in self.trackers:
            t.close(failed=failed)


def open_trackers(
    output: str,
    *,
    names: Sequence[TrackerName] = (),
    resumed_from: int | None = None,
    tensorboard_folder: str | None = None,
    mlflow_tracking_uri: str | None = None,
    mlflow_experiment: str = "radforge",
    run_name: str = "",
    params: Mapping[str, Any] | None = None,
) -> Trackers:
    """The JSONL tracker under ``output`` plus each of ``names`` (``metrics.trackers``), opened now."""
    opened: list[Tracker] = [JsonlTracker(output, resumed_from=resumed_from)]
    for name in dict.fromkeys(names):
        if name == "tensorboard":
            opened.append(
                TensorBoardTracker(tensorboard_dir(output, tensorboard_folder), resumed_from=resumed_from)
            )
        elif name == "mlflow":
            opened.append(
                MlflowTracker(
                    output,
                    tracking_uri=mlflow_tracking_uri,
                    experiment=mlflow_experiment,
                    run_name=run_name or Path(resolve(output).path).name,
                    params=params or {},
                    resumed_from=resumed_from,
                )
            )
        else:
            raise TrackerError(f"unknown tracker {name!r} in metrics.trackers; valid: {', '.join(TRACKERS)}")
    return Trackers(opened)
