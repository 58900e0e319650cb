"""The Ray Train (v2) entry: the same :func:`radforge.trainer.loop.run_training` on N workers.

``TorchTrainer`` starts the workers, sets ``RANK``/``WORLD_SIZE``/``LOCAL_WORLD_SIZE`` and the
process group (gloo on CPU, nccl on GPU) before the loop runs, so each worker builds its own
StreamingDataset. ``workers`` is a fixed count or a ``(min, max)`` range (elastic); Ray Train
restarts the worker group after a failure (``max_failures``) and the loop resumes from the latest
checkpoint, with the global batch split over however many workers there are.

Checkpoints go to the run's output URI through :mod:`radforge.trainer.checkpoint`, not through Ray Train's
checkpoint upload: the same atomic publish (folder, then a ``latest`` pointer) serves single-process,
torchrun and Ray runs, and resume does not depend on Ray's run folder. Each worker still calls
``ray.train.report`` at every checkpoint with the step's metrics, so Ray sees progress.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any

from radforge.trainer.checkpoint import CheckpointRef
from radforge.trainer.run_config import TrainConfig

logger = logging.getLogger(__name__)

RAY_MAX_FAILURES = 3  # worker-group restarts Ray Train attempts before the run fails


def _train_worker(config: dict[str, Any]) -> None:
    """Body of each Ray Train worker (module-level so Ray can ship it)."""
    import ray.train

    from radforge.trainer.loop import run_training

    cfg = TrainConfig.model_validate(config["run"])

    def report(ref: CheckpointRef | None, metrics: dict[str, Any]) -> None:
        numbers = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        ray.train.report({**numbers, "checkpoint": ref.location.uri if ref else ""})

    run_training(cfg, on_checkpoint=report)


def launch(cfg: TrainConfig, *, max_failures: int = RAY_MAX_FAILURES, storage_path: str | None = None) -> Any:
    """Run ``cfg`` on Ray Train workers (connecting to or starting Ray); returns Ray's ``Result``."""
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")  # report() blocks this long
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from radforge.runtime import ensure_ray

    ensure_ray(cfg.ray_address)
    use_gpu = cfg.device == "cuda"
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"run": cfg.model_dump(mode="json")},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=use_gpu),  # type: ignore[arg-type]
        run_config=RunConfig(
            name="radforge-train",
            storage_path=storage_path or os.path.join(tempfile.gettempdir(), "radforge-ray-train"),
            failure_config=FailureConfig(max_failures=max_failures),
        ),
    )
    return trainer.fit()
