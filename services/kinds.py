"""The registry of job kinds: how each is validated, launched, locked and checked.

A kind is a spec model plus the module its job process runs (``python -m MODULE --job-dir DIR
--ray-address ADDR``; the process reads ``spec.json`` and follows :mod:`services.progress`).
Only kinds whose command exists in this build are registered; train and eval join here when
their commands exist (see ``PLANNED_KINDS`` in :mod:`services.models`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from services.models import IngestJobCreate

Allowlist = Literal["sources", "datasets"]


@dataclass(frozen=True)
class JobKind:
    """One kind of job."""

    name: str
    spec_model: type[BaseModel]
    module: str  # the job process: ``python -m <module>``
    locks: Callable[[Any], frozenset[str]]  # resources no two running jobs may share
    uris: Callable[[Any], dict[str, tuple[str, Allowlist]]]  # field -> (URI, allowlist it must match)
    redact_roots: Callable[[Any], list[str]]  # log lines hide paths below these roots

    def command(self, *, job_dir: Path, ray_address: str) -> list[str]:
        """The job process's argv (run under :mod:`services.jobproc`)."""
        return [sys.executable, "-m", self.module, "--job-dir", str(job_dir), "--ray-address", ray_address]

    def parse(self, spec: dict[str, Any]) -> Any:
        return self.spec_model.model_validate(spec)


def ingest_locks(spec: IngestJobCreate) -> frozenset[str]:
    """An ingest job holds its archive and its dataset (the catalog commit is read-modify-write)."""
    return frozenset({f"archive:{spec.source_uri}", f"dataset:{spec.dataset_uri}"})


INGEST = JobKind(
    name="ingest",
    spec_model=IngestJobCreate,
    module="services.ingest_job",
    locks=ingest_locks,
    uris=lambda s: {"source_uri": (s.source_uri, "sources"), "dataset_uri": (s.dataset_uri, "datasets")},
    redact_roots=lambda s: [s.source_uri],
)

KINDS: dict[str, JobKind] = {k.name: k for k in (INGEST,)}
