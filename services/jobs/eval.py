"""The evaluation job process: ``python -m radforge.services.jobs.eval --job-dir DIR --ray-address ADDR``.

Runs ``radforge eval``'s machinery (:func:`radforge.trainer.eval.run.evaluate`) for the spec in
``DIR/spec.json``: one backbone (an export folder or a checkpoint), with a random-init baseline of
its shape unless ``random_init`` is false, on the built-in suite or the given task folders; the
report goes to ``output_uri``. Progress follows :mod:`radforge.services.jobs.progress`: ``progress.json`` at
each phase (loading, extracting, probing, reporting) with (backbone, task) evaluations done of
all. It ends with ``result.json`` (report paths, the primary metric per backbone, task and probe,
the verdict against the baseline and the paired differences: task names and numbers only) or
``error.json`` (one line).

The evaluation runs in this process, on its CPU, as ``radforge eval`` does: ``--ray-address`` is
accepted for the job contract every kind follows, and not used.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from radforge.trainer.eval.run import EvalOutcome

log = logging.getLogger("radforge.eval_job")
ERROR_MAX_CHARS = 300


def eval_result(outcome: EvalOutcome) -> dict[str, Any]:
    """The job's PHI-free summary of an evaluation: report paths and primary metrics, no samples."""
    from radforge.trainer.eval.metrics import PRIMARY
    from radforge.trainer.eval.report import headline_scores, verdicts

    report = outcome.report
    return {
        "report": {
            "markdown": str(report.markdown),
            "html": str(report.html),
            "results": str(report.results),
        },
        "backbones": sorted({r.backbone for r in outcome.results}),
        "primary_metric": {r.task: PRIMARY[r.kind] for r in outcome.results},
        "scores": headline_scores(outcome.results),
        # against the random-init baseline (empty without one): probes won / lost / tied per backbone,
        # and each (task, probe)'s difference with its paired 95% interval
        "verdict": [v.to_dict() for v in verdicts(outcome.paired)],
        "paired_differences": [p.to_dict() for p in outcome.paired],
        "seconds": round(outcome.seconds, 3),
    }


def run(job_dir: str) -> int:
    """Run the job; returns the process exit status."""
    from radforge.services.app.models import EvalJobCreate
    from radforge.trainer.checkpoint import CheckpointError
    from radforge.trainer.eval.backbone import BackboneLoadError
    from radforge.trainer.eval.run import backbone_name, evaluate
    from radforge.trainer.eval.tasks import TaskError

    spec = EvalJobCreate.model_validate(read_json(job_file(job_dir, SPEC)))
    path = job_file(job_dir, PROGRESS)

    def progress(phase: str, done: int, total: int) -> None:
        counts = {"tasks_done": done, "tasks_total": total} if total else {}
        report = JobProgress(phase=phase, updated_at=time.time(), **counts)
        write_json_atomic(path, report.model_dump(mode="json", exclude_none=True))

    progress("starting", 0, 0)
    try:
        outcome = evaluate(
            {backbone_name(spec.backbone_uri): spec.backbone_uri},
            spec.tasks,
            out=spec.output_uri,
            random_init=spec.random_init,
            seed=spec.seed,
            probes=spec.probes,
            seeds=spec.seeds,
            max_shots=spec.max_shots,
            n_boot=spec.bootstrap,
            on_progress=progress,
        )
    except (CheckpointError, BackboneLoadError, TaskError, ValueError) as e:
        write_json_atomic(job_file(job_dir, ERROR), {"error": f"{type(e).__name__}: {e}"[:ERROR_MAX_CHARS]})
        log.error("eval job failed: %s", e)
        return JOB_EXIT_FAILED
    pairs = len({(r.backbone, r.task) for r in outcome.results})
    progress("done", pairs, pairs)
    result = eval_result(outcome)
    write_json_atomic(job_file(job_dir, RESULT), result)
    log.info("summary %s", json.dumps(result, sort_keys=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the job process (``--ray-address`` is part of the job contract; eval runs here)."""
    # task folders hold labelled images: only the type of an unexpected error leaves the process
    return job_main(
        argv,
        prog="python -m radforge.services.jobs.eval",
        description=__doc__,
        run=lambda job_dir, _ray_address: run(job_dir),
        describe_error=unexpected_error_type,
        logger=log,
    )


if __name__ == "__main__":
    sys.exit(main())
