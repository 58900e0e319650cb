"""The compaction job process: ``python -m radforge.services.jobs.compact --job-dir DIR --ray-address ADDR``.

Runs :class:`radforge.sharder.compact.Compactor` (``radforge dataset compact``) for the spec in
``DIR/spec.json``, in this process: the work is reading and rewriting shards, no Ray task is
needed, so ``--ray-address`` is accepted for the job contract every kind follows, and not used.
Progress follows :mod:`radforge.services.jobs.progress`: ``progress.json`` after each compaction
committed (samples and shards written so far). It ends with ``result.json`` (the summary: counts
and part ids) or ``error.json`` (one line).

Each compaction is its own commit, so a cancelled job leaves the dataset consistent: compactions
committed before the signal stay, the one in progress leaves an uncommitted part that the next
ingest or compaction removes.
"""

from __future__ import annotations

import json
import logging
import sys
import time
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
    unexpected_error_type,
    write_json_atomic,
)

log = logging.getLogger("radforge.compact_job")
MIB = 1 << 20


def run(job_dir: str) -> int:
    """Run the job; returns the process exit status."""
    from radforge.services.app.models import CompactJobCreate
    from radforge.sharder.catalog import DatasetError
    from radforge.sharder.compact import Compactor

    spec = CompactJobCreate.model_validate(read_json(job_file(job_dir, SPEC)))
    path = job_file(job_dir, PROGRESS)
    written = {"samples": 0, "shards": 0}

    def progress(phase: str) -> None:
        report = JobProgress(
            phase=phase,
            updated_at=time.time(),
            samples_written=written["samples"],
            shards_written=written["shards"],
        )
        write_json_atomic(path, report.model_dump(mode="json", exclude_none=True))

    class ReportingCompactor(Compactor):
        def commit(self, state: Any, group: list[dict[str, Any]], part: dict[str, Any]) -> int:
            seq = super().commit(state, group, part)
            written["samples"] += int(part["samples"])
            written["shards"] += int(part["shards"])
            progress("running")
            return seq

    progress("starting")
    try:
        summary = ReportingCompactor(
            spec.dataset_uri,
            target_shard_bytes=max(1, round(spec.target_shard_mb * MIB)),
            min_shard_bytes=None if spec.min_shard_mb is None else round(spec.min_shard_mb * MIB),
            compression=spec.compression,
        ).run()
    except (DatasetError, ValueError) as e:
        write_json_atomic(job_file(job_dir, ERROR), {"error": f"{type(e).__name__}: {e}"})
        log.error("compaction job failed: %s", e)
        return JOB_EXIT_FAILED
    progress("done")
    result = summary.to_dict()
    write_json_atomic(job_file(job_dir, RESULT), result)
    log.info("summary %s", json.dumps(result, sort_keys=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the job process (``--ray-address``: part of the job contract, unused here)."""
    return job_main(
        argv,
        prog="python -m radforge.services.jobs.compact",
        description=__doc__,
        run=lambda job_dir, _ray_address: run(job_dir),
        describe_error=unexpected_error_type,
        logger=log,
    )


if __name__ == "__main__":
    sys.exit(main())
