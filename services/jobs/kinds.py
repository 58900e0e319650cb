"""The registry of job kinds: how each is prepared, launched, locked and redacted.

A kind is a stored spec model plus the module its job process runs (``python -m MODULE --job-dir
DIR --ray-address ADDR``; the process reads ``spec.json`` and follows :mod:`radforge.services.jobs.progress`).
The kinds are ingest (:mod:`radforge.services.jobs.ingest`), train (:mod:`radforge.services.jobs.train`),
eval (:mod:`radforge.services.jobs.eval`) and compact (:mod:`radforge.services.jobs.compact`); a kind
named before its command exists goes in ``PLANNED_KINDS``
(:mod:`radforge.services.app.models`), which gets a clear 422. Jobs that write one output (a training run, an
eval report) hold ``output:<uri>``, so a train and an eval job never write the same folder at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from radforge.services.app.models import (
    EVAL_BUILTIN_TASKS,
    CompactJobCreate,
    EvalJobCreate,
    IngestJobCreate,
    TrainJobSpec,
)
from radforge.services.jobs.specs import (
    Allowlists,
    prepare_compact,
    prepare_eval,
    prepare_ingest,
    prepare_train,
)
from radforge.storage import canonical_uri


@dataclass(frozen=True)
class JobKind:
    """One kind of job."""

    name: str
    spec_model: type[BaseModel]  # the spec as stored and read by the job process
    module: str  # the job process: ``python -m <module>``
    prepare: Callable[[Any, Allowlists], Any]  # submitted body -> stored spec (SpecForbidden/SpecInvalid)
    locks: Callable[[Any], frozenset[str]]  # resources no two running jobs may share
    redact_roots: Callable[[Any], list[str]]  # log lines hide paths below these roots

    def args(self, *, job_dir: str, ray_address: str) -> list[str]:
        """The job process's arguments after ``python`` (run under the job supervisor)."""
        return ["-m", self.module, "--job-dir", job_dir, "--ray-address", ray_address]

    def parse(self, spec: dict[str, Any]) -> Any:
        return self.spec_model.model_validate(spec)


def archive_lock(uri: str) -> str:
    """The lock of an archive an ingest job reads.

    Locks name canonical URIs (symlinks resolved): an alias of a folder takes the same lock.
    """
    return f"archive:{canonical_uri(uri)}"


def ingest_locks(spec: IngestJobCreate) -> frozenset[str]:
    """An ingest job holds its archive: ingests of different archives into one dataset run together.

    The dataset needs no lock of the control plane's: each commit is one entry of its commit log,
    concurrent writers re-plan around series another one committed, and the dataset's own archive
    and part leases hold against writers outside this control plane (docs/data-format.md).
    """
    return frozenset({archive_lock(spec.source_uri)})


def output_lock(uri: str) -> str:
    """The lock of a folder one job writes (a run's output, an eval report); shared by the kinds."""
    return f"output:{canonical_uri(uri)}"


def train_locks(spec: TrainJobSpec) -> frozenset[str]:
    """A training job holds its output (checkpoints, ``latest`` pointer and metrics are one run's)."""
    return frozenset({output_lock(spec.output_uri)})


def eval_locks(spec: EvalJobCreate) -> frozenset[str]:
    """An eval job holds its report folder (report, results, feature cache)."""
    return frozenset({output_lock(spec.output_uri)})


def compact_locks(spec: CompactJobCreate) -> frozenset[str]:
    """One compaction per dataset at a time; ingests of it run beside it (the log orders the commits)."""
    return frozenset({f"compact:{canonical_uri(spec.dataset_uri)}"})


INGEST = JobKind(
    name="ingest",
    spec_model=IngestJobCreate,
    module="radforge.services.jobs.ingest",
    prepare=prepare_ingest,
    locks=ingest_locks,
    redact_roots=lambda s: [s.source_uri],
)

TRAIN = JobKind(
    name="train",
    spec_model=TrainJobSpec,
    module="radforge.services.jobs.train",
    prepare=prepare_train,
    locks=train_locks,
    redact_roots=lambda s: [],  # datasets hold salted keys only; nothing below them identifies anyone
)

EVAL = JobKind(
    name="eval",
    spec_model=EvalJobCreate,
    module="radforge.services.jobs.eval",
    prepare=prepare_eval,
    locks=eval_locks,
    # task folders are the requester's labelled images: nothing below them reaches a client
    redact_roots=lambda s: [] if s.tasks == EVAL_BUILTIN_TASKS else [s.tasks],
)

COMPACT = JobKind(
    name="compact",
    spec_model=CompactJobCreate,
    module="radforge.services.jobs.compact",
    prepare=prepare_compact,
    locks=compact_locks,
    redact_roots=lambda s: [],  # datasets hold salted keys only
)

KINDS: dict[str, JobKind] = {k.name: k for k in (INGEST, TRAIN, EVAL, COMPACT)}
