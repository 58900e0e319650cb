"""API and storage models per resource.

What clients send (``*Create``/``*Update``), what the database keeps (``*Record``) and what
clients get back (``*Public``).

Records hold process details (PIDs, folders, Ray address) that never leave the service; public
models hold nothing identifying (URIs are the roots clients gave, never objects below them).
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from radforge.ingest.config import IngestConfig
from radforge.services.app.security import UriError, check_uri
from radforge.services.jobs.progress import JobProgress
from radforge.services.schedule.cron import CronError, parse_cron


class JobState(StrEnum):
    """Life of a job: queued -> running -> succeeded | failed | cancelled (queued -> cancelled too)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


def _ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, tz=UTC)


def _uri(value: str) -> str:
    try:
        return check_uri(value)
    except UriError as e:
        raise ValueError(str(e)) from None


def _service_owned_config(config: IngestConfig, *, allow_archive_id: bool) -> IngestConfig:
    """Refuse ingest settings that belong to the service, not to a request."""
    if "ray" in config.model_fields_set:
        raise ValueError("config.ray is set by the service (where jobs run), not per job")
    if config.deid.salt is not None:
        raise ValueError("config.deid.salt is not accepted in requests; the service uses $RADFORGE_SALT")
    if not allow_archive_id and config.archive_id is not None:
        raise ValueError("config.archive_id is set per archive (its folder name) for watched sources")
    return config


# ---- jobs ----------------------------------------------------------------------------------------
class IngestJobCreate(BaseModel):
    """Submit an ingest job: one archive into one dataset, with optional ingest settings."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["ingest"] = Field(description="job kind")
    source_uri: str = Field(min_length=1, max_length=2048, description="archive root (path, file://, s3://)")
    dataset_uri: str = Field(min_length=1, max_length=2048, description="dataset root")
    priority: int = Field(0, ge=-1000, le=1000, description="higher starts first")
    config: IngestConfig = Field(default_factory=IngestConfig, description="ingest settings (docs/ingest.md)")

    @field_validator("source_uri", "dataset_uri")
    @classmethod
    def _canonical_uri(cls, v: str) -> str:
        return _uri(v)

    @model_validator(mode="after")
    def _config_allowed(self) -> IngestJobCreate:
        _service_owned_config(self.config, allow_archive_id=True)
        return self

    def spec(self) -> dict[str, Any]:
        """The spec as stored (settings left at their defaults are not repeated)."""
        return self.model_dump(mode="json", exclude={"priority"}, exclude_defaults=True) | {"kind": self.kind}


OVERRIDE_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*=.*$"


class TrainJobCreate(BaseModel):
    """Submit a training run: a run config (inline, or a YAML file under ``allowed_configs``) plus overrides.

    The run's output is ``output_uri`` (under ``allowed_datasets``); Ray's address is the service's.
    The config is resolved once, at submission, and stored with the job (see :class:`TrainJobSpec`).
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["train"] = Field(description="job kind")
    output_uri: str = Field(
        min_length=1, max_length=2048, description="checkpoints, resolved config and metrics (path, s3://)"
    )
    config: dict[str, Any] | None = Field(None, description="the run config inline (as in configs/*.yaml)")
    config_uri: str | None = Field(
        None, min_length=1, max_length=2048, description="or a run YAML (e.g. configs/tiny-cpu.yaml)"
    )
    overrides: list[Annotated[str, Field(max_length=4096, pattern=OVERRIDE_PATTERN)]] = Field(
        default_factory=list, max_length=200, description="dotted key=value overrides, e.g. steps=100"
    )
    priority: int = Field(0, ge=-1000, le=1000, description="higher starts first")

    @field_validator("output_uri", "config_uri")
    @classmethod
    def _canonical_uri(cls, v: str | None) -> str | None:
        return None if v is None else _uri(v)

    @model_validator(mode="after")
    def _one_config(self) -> TrainJobCreate:
        if (self.config is None) == (self.config_uri is None):
            raise ValueError("give exactly one of config and config_uri")
        return self


class TrainJobSpec(BaseModel):
    """A training job as stored and run: the resolved run config (``run``) and where it came from."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["train"] = "train"
    output_uri: str
    config_uri: str | None = None  # informational: its content is in ``run``
    overrides: list[str] = Field(default_factory=list)  # informational: applied in ``run``
    run: dict[str, Any]  # a TrainConfig as JSON (trainer/run_config.py); ray_address set by the job

    def spec(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


EVAL_BUILTIN_TASKS = "builtin"  # radforge.trainer.eval.run.BUILTIN: the suite generated offline
EvalProbe = Literal["linear", "knn"]  # radforge.trainer.eval.tracks.PROBES


def _local_uri(value: str, *, what: str) -> str:
    uri = _uri(value)
    if "://" in uri:
        raise ValueError(f"{what} are local paths (or a shared file system) only, not object-store URIs")
    return uri


class EvalJobCreate(BaseModel):
    """Evaluate a backbone (export folder or checkpoint) on a task suite: ``radforge eval`` as a job.

    The report (and the feature cache, ``OUTPUT/cache``) goes to ``output_uri``. The spec is stored
    and run as submitted.
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["eval"] = Field(description="job kind")
    backbone_uri: str = Field(
        min_length=1,
        max_length=2048,
        description="an export folder (radforge export) or a checkpoint: run output, step folder, state.pt",
    )
    output_uri: str = Field(
        min_length=1,
        max_length=2048,
        description="report folder (report.md, report.html, results.json, plots/)",
    )
    tasks: str = Field(
        min_length=1,
        max_length=2048,
        description="'builtin', or a task folder, a folder of task folders or a suite file (docs/eval.md)",
    )
    random_init: bool = Field(True, description="also evaluate a random-init backbone of the same shape")
    probes: list[EvalProbe] = Field(
        default_factory=lambda: list(get_args(EvalProbe)),
        min_length=1,
        max_length=2,
        description="linear, knn",
    )
    seeds: int = Field(3, ge=1, le=100, description="seeds per few-shot size")
    max_shots: int | None = Field(
        None, ge=1, description="largest k before the full training set (default: all)"
    )
    bootstrap: int = Field(1000, ge=0, le=100_000, description="bootstrap resamples for the intervals")
    seed: int = Field(0, ge=0, description="seed of the random-init backbone")
    priority: int = Field(0, ge=-1000, le=1000, description="higher starts first")

    @field_validator("backbone_uri")
    @classmethod
    def _canonical_uri(cls, v: str) -> str:
        return _uri(v)

    @field_validator("output_uri")
    @classmethod
    def _local_output(cls, v: str) -> str:
        return _local_uri(v, what="eval reports")

    @field_validator("tasks")
    @classmethod
    def _builtin_or_local(cls, v: str) -> str:
        return v if v == EVAL_BUILTIN_TASKS else _local_uri(v, what="task folders")

    @field_validator("probes")
    @classmethod
    def _distinct(cls, v: list[EvalProbe]) -> list[EvalProbe]:
        if len(set(v)) != len(v):
            raise ValueError("each probe at most once")
        return v

    def spec(self) -> dict[str, Any]:
        """The spec as stored: every setting, defaults included (what ran is read from the job)."""
        return self.model_dump(mode="json", exclude={"priority"})


class CompactJobCreate(BaseModel):
    """Compact a dataset: rewrite its small shards into large ones (``radforge dataset compact`` as a job).

    The compaction is its own commit (docs/data-format.md, "Compaction and vacuum"): it runs beside
    ingest jobs of the same dataset, and the replaced files stay until ``radforge dataset vacuum``.
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["compact"] = Field(description="job kind")
    dataset_uri: str = Field(min_length=1, max_length=2048, description="dataset root")
    target_shard_mb: float = Field(
        256.0, gt=0, le=1 << 16, description="size new shards fill up to, before compression (MiB)"
    )
    min_shard_mb: float | None = Field(
        None, gt=0, description="parts whose mean stored shard is smaller are rewritten (default: target / 4)"
    )
    compression: str | None = Field(
        None, max_length=32, description="codec of the new shards, e.g. zstd:3 (default: that of the input)"
    )
    priority: int = Field(0, ge=-1000, le=1000, description="higher starts first")

    @field_validator("dataset_uri")
    @classmethod
    def _canonical_uri(cls, v: str) -> str:
        return _uri(v)

    @field_validator("compression")
    @classmethod
    def _known_codec(cls, v: str | None) -> str | None:
        from radforge.sharder.mds import parse_compression

        parse_compression(v)  # ShardFormatError (a ValueError) names the valid codecs
        return v

    def spec(self) -> dict[str, Any]:
        """The spec as stored: every setting, defaults included."""
        return self.model_dump(mode="json", exclude={"priority"})


# Job kinds whose command is not part of this build, with the reason: a request for one gets a
# clear 422 (radforge.services.app.main) instead of "unknown kind". None at present.
PLANNED_KINDS: dict[str, str] = {}

JobCreate = Annotated[
    IngestJobCreate | TrainJobCreate | EvalJobCreate | CompactJobCreate, Field(discriminator="kind")
]


class JobRecord(BaseModel):
    """A job as stored."""

    id: str
    kind: str
    state: JobState
    priority: int = 0
    origin: str = "api"  # "api" or "scheduler"
    source_id: str | None = None
    archive: str | None = None
    spec: dict[str, Any]
    locks: list[str] = Field(default_factory=list)
    created_at: float
    updated_at: float
    started_at: float | None = None
    finished_at: float | None = None
    cancel_requested: bool = False
    cancel_signalled_at: float | None = None
    pid: int | None = None
    proc_start: int | None = None
    job_dir: str | None = None
    ray_address: str | None = None
    exit_code: int | None = None
    error: str | None = None
    progress: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    ray_job_id: str | None = None  # submission id when the job runs through Ray's Job Submission API


class JobPublic(BaseModel):
    """A job as clients see it."""

    id: str
    kind: str
    state: JobState
    priority: int
    origin: str
    source_id: str | None
    archive: str | None
    spec: dict[str, Any]
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_seconds: float | None
    progress: JobProgress | None
    result: dict[str, Any] | None
    error: str | None
    exit_code: int | None

    @classmethod
    def from_record(cls, r: JobRecord, *, now: float) -> JobPublic:
        end = r.finished_at if r.finished_at is not None else now
        return cls(
            id=r.id,
            kind=r.kind,
            state=r.state,
            priority=r.priority,
            origin=r.origin,
            source_id=r.source_id,
            archive=r.archive,
            spec=r.spec,
            cancel_requested=r.cancel_requested,
            created_at=datetime.fromtimestamp(r.created_at, tz=UTC),
            started_at=_ts(r.started_at),
            finished_at=_ts(r.finished_at),
            duration_seconds=None if r.started_at is None else round(end - r.started_at, 3),
            progress=JobProgress.model_validate(r.progress) if r.progress else None,
            result=r.result,
            error=r.error,
            exit_code=r.exit_code,
        )


class JobList(BaseModel):
    """One page of jobs, newest first."""

    items: list[JobPublic]
    total: int
    limit: int
    offset: int


class JobLogs(BaseModel):
    """The last lines of a job's log (paths below the archive root redacted)."""

    id: str
    lines: list[str]


class Overview(BaseModel):
    """What the dashboard polls: job counts, running jobs and current throughput."""

    time: datetime
    jobs_by_state: dict[str, int]
    jobs_by_kind: dict[str, dict[str, int]]
    running: list[JobPublic]
    recent: list[JobPublic]
    throughput: dict[str, float]
    sources: int
    report_links: dict[str, str] = Field(
        default_factory=dict, description="eval job id -> signed link to its report (expires in an hour)"
    )


# ---- sources (watched prefixes) ----------------------------------------------------------------
def _check_cron(value: str | None) -> str | None:
    if value is not None:
        try:
            parse_cron(value)
        except CronError as e:
            raise ValueError(str(e)) from None
    return value


class SourceCreate(BaseModel):
    """A bucket prefix to watch: each folder below it is an archive, ingested once into ``dataset_uri``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$", description="unique name, e.g. hospital-a")
    uri: str = Field(min_length=1, max_length=2048, description="prefix to watch (path, file://, s3://)")
    dataset_uri: str = Field(min_length=1, max_length=2048, description="dataset the archives go into")
    interval_seconds: float | None = Field(None, ge=1, le=31 * 86400, description="poll every N seconds")
    cron: str | None = Field(None, max_length=200, description="or poll at cron times (5 fields, UTC)")
    priority: int = Field(0, ge=-1000, le=1000, description="priority of the jobs it submits")
    enabled: bool = True
    ready_marker: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9._-]{1,128}$",
        description="only archives holding an object of this name are complete (e.g. _READY)",
    )
    rescan_ingested: bool = Field(
        False, description="list ingested archives each poll and re-ingest when objects were added"
    )
    max_attempts: int = Field(3, ge=1, le=100, description="failed jobs per archive before giving up")
    config: IngestConfig = Field(default_factory=IngestConfig, description="ingest settings for its jobs")

    @field_validator("uri", "dataset_uri")
    @classmethod
    def _canonical_uri(cls, v: str) -> str:
        return _uri(v)

    @field_validator("cron")
    @classmethod
    def _cron_valid(cls, v: str | None) -> str | None:
        return _check_cron(v)

    @model_validator(mode="after")
    def _one_schedule(self) -> SourceCreate:
        if (self.interval_seconds is None) == (self.cron is None):
            raise ValueError("give exactly one of interval_seconds and cron")
        _service_owned_config(self.config, allow_archive_id=False)
        return self


class SourceUpdate(BaseModel):
    """Fields of a source that can change; a schedule given replaces the other kind of schedule."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool | None = None
    priority: int | None = Field(None, ge=-1000, le=1000)
    interval_seconds: float | None = Field(None, ge=1, le=31 * 86400)
    cron: str | None = Field(None, max_length=200)
    max_attempts: int | None = Field(None, ge=1, le=100)

    @field_validator("cron")
    @classmethod
    def _cron_valid(cls, v: str | None) -> str | None:
        return _check_cron(v)

    @model_validator(mode="after")
    def _one_schedule(self) -> SourceUpdate:
        if self.interval_seconds is not None and self.cron is not None:
            raise ValueError("give at most one of interval_seconds and cron")
        return self


class SourceRecord(BaseModel):
    """A source as stored."""

    id: str
    name: str
    uri: str
    dataset_uri: str
    interval_seconds: float | None
    cron: str | None
    priority: int
    enabled: bool
    ready_marker: str | None
    rescan_ingested: bool
    max_attempts: int
    config: dict[str, Any]
    created_at: float
    updated_at: float
    next_poll_at: float
    last_poll_at: float | None = None
    last_lag_seconds: float | None = None
    last_error: str | None = None


class SourcePublic(BaseModel):
    """A source as clients see it."""

    id: str
    name: str
    uri: str
    dataset_uri: str
    interval_seconds: float | None
    cron: str | None
    priority: int
    enabled: bool
    ready_marker: str | None
    rescan_ingested: bool
    max_attempts: int
    config: dict[str, Any]
    created_at: datetime
    next_poll_at: datetime
    last_poll_at: datetime | None
    last_lag_seconds: float | None
    last_error: str | None

    @classmethod
    def from_record(cls, r: SourceRecord) -> SourcePublic:
        data = r.model_dump(exclude={"updated_at"})
        data.update(
            created_at=datetime.fromtimestamp(r.created_at, tz=UTC),
            next_poll_at=datetime.fromtimestamp(r.next_poll_at, tz=UTC),
            last_poll_at=_ts(r.last_poll_at),
        )
        return cls.model_validate(data)


class ArchiveOutcome(BaseModel):
    """What one poll decided for one archive."""

    name: str
    submit: bool
    reason: str
    job_id: str | None = None


class PollResult(BaseModel):
    """The result of polling a source: one decision per archive found."""

    source_id: str
    polled_at: datetime
    archives: list[ArchiveOutcome]
    submitted: list[str]
