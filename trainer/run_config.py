"""One training run as a typed configuration (:class:`TrainConfig`): data, recipe, batch, steps, output.

The recipe (:class:`radforge.trainer.recipe.RecipeConfig`) is embedded as the ``recipe`` field. A run file
may name a recipe file with ``recipe_file`` (relative to the run file); its ``recipe:`` section
then overrides that file. Layering: defaults -> YAML file -> dotted ``key=value`` overrides (any
field, e.g. ``batch.global_size=64`` or ``recipe.optim.base_lr=1e-3``), resolved once by
:func:`load_train_config` and saved next to every checkpoint (:meth:`TrainConfig.to_yaml`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from radforge.config import ConfigError, LayeredConfig, load_model, read_yaml_mapping
from radforge.sharder.mixing import MixSpec
from radforge.storage import redact
from radforge.trainer.recipe import RecipeConfig
from radforge.trainer.trackers import TrackerName, tensorboard_dir


class TrainConfigError(ConfigError):
    """A run file or override is invalid; the message names the field and what is allowed."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    """Where samples come from and how they are streamed."""

    mix: MixSpec  # one or more dataset URIs (or parts) with proportions (radforge.sharder.mixing)
    cache_dir: str = "/tmp/radforge-cache"  # local cache of remote shards (one folder per source)
    cache_limit: str | None = "10gb"  # cached shards above this size are evicted (LRU); None = no limit
    shuffle: bool = True  # the loader's deterministic shuffle (seeded by the run seed; trainer/sampling.py)
    shuffle_block: int = Field(8192, ge=1)  # samples shuffled together; their shards must fit cache_limit
    loader_workers: int = Field(2, ge=0)  # DataLoader processes decoding and building views per rank
    prefetch_factor: int = Field(2, ge=1)  # batches each loader process prepares ahead


class BatchSizeError(TrainConfigError):
    """A worker count cannot split the global batch into whole micro-batches."""


@dataclass(frozen=True)
class BatchPlan:
    """How one optimisation step's global batch is cut for ``world_size`` workers.

    ``global_size = micro_size x accumulation x world_size``: each worker takes ``per_worker``
    images from its loader per step and runs ``accumulation`` forward/backward passes of
    ``micro_size`` images before the gradients are combined.
    """

    global_size: int
    micro_size: int
    accumulation: int
    world_size: int

    @property
    def per_worker(self) -> int:
        return self.micro_size * self.accumulation

    @property
    def micro_batches(self) -> int:
        """Micro-batches in one global batch, all workers together."""
        return self.accumulation * self.world_size


class BatchConfig(_Section):
    """Batch sizes: the global batch is constant whatever the number of workers (gradient accumulation)."""

    global_size: int = Field(32, ge=1)  # images per optimisation step, all workers together
    # images per forward/backward on one worker; accumulation = global / (micro x workers). Batch
    # statistics (iBOT masks, KoLeo, SigReg) are per micro-batch, so a fixed micro size makes a run
    # independent of the worker count. None: global / workers (no accumulation; fixed counts only)
    micro_size: int | None = Field(None, ge=1)

    def plan(self, world_size: int) -> BatchPlan:
        """The split for ``world_size`` workers; raises :class:`BatchSizeError` naming what would fit."""
        micro = self.micro_size
        if micro is None:
            if self.global_size % world_size:
                raise BatchSizeError(
                    f"batch.global_size={self.global_size} is not divisible by {world_size} workers; "
                    f"choose a global size that is a multiple of every worker count, or set "
                    f"batch.micro_size for gradient accumulation"
                )
            micro = self.global_size // world_size
        if self.global_size % (micro * world_size):
            fits = [n for n in range(1, self.global_size // micro + 1) if self.global_size % (micro * n) == 0]
            raise BatchSizeError(
                f"batch.global_size={self.global_size} is not a multiple of batch.micro_size={micro} x "
                f"{world_size} workers, so the accumulation steps would not be whole; worker counts "
                f"that fit: {fits}"
            )
        return BatchPlan(
            global_size=self.global_size,
            micro_size=micro,
            accumulation=self.global_size // (micro * world_size),
            world_size=world_size,
        )


class CheckpointConfig(_Section):
    """Checkpoint cadence and retention."""

    every: int = Field(100, ge=1)  # steps between checkpoints (and one at the end)
    keep: int = Field(3, ge=1)  # newest checkpoints kept; older ones are deleted after a publish
    resume: bool = True  # resume from the latest checkpoint under output when there is one


class MetricsConfig(_Section):
    """Per-step metrics written as JSONL next to the checkpoints (fields: docs/training.md)."""

    sample_keys: bool = False  # record every sample key of each step (tests, audits; large for big batches)
    flush_every: int = Field(10, ge=1)  # steps per JSONL file (and at every checkpoint); stores cannot append
    # the same per-step fields also to these (radforge.trainer.trackers; extra radforge[trackers])
    trackers: tuple[TrackerName, ...] = ()
    tensorboard_dir: str | None = None  # a local folder; None: OUTPUT/tensorboard (a local output only)
    mlflow_tracking_uri: str | None = None  # None: MLFLOW_TRACKING_URI, else MLflow's default
    mlflow_experiment: str = "radforge"  # created when missing; the MLflow run is named after the output


class EvalConfig(_Section):
    """Periodic kNN evaluation of the teacher backbone during training (trainer/eval/periodic.py)."""

    every: int = Field(0, ge=0)  # steps between evaluations (knn_* fields in the metrics); 0 = off
    tasks: str = (
        "builtin"  # as `radforge eval --tasks`: builtin, a task folder, a folder of them, a suite file
    )
    max_samples: int = Field(
        256, ge=1
    )  # train and test samples per task (slices in 2D, volumes in 3D), seeded
    cache_dir: str = "/tmp/radforge-eval"  # the built-in suite is generated under it (once per node)


class TrainConfig(_Section):
    """Everything one ``radforge train`` run needs."""

    data: DataConfig
    recipe: RecipeConfig = RecipeConfig()
    recipe_file: str | None = None  # informational after resolution (its content is in ``recipe``)
    batch: BatchConfig = BatchConfig()
    steps: int = Field(1000, ge=1)  # stop after this many optimisation steps (schedules follow the recipe)
    checkpoint: CheckpointConfig = CheckpointConfig()
    metrics: MetricsConfig = MetricsConfig()
    eval: EvalConfig = EvalConfig()
    output: str  # local path or s3:// URI for checkpoints, the resolved config and metrics
    # a later stage (e.g. 512 px): start from this run output's latest checkpoint (or one step
    # folder): weights of student and teacher, position tables resampled to model.img_size; the
    # optimizer, schedules and step start fresh. Ignored once this run has its own checkpoint.
    init_from: str | None = None
    # replicate: every worker holds the whole model, gradients averaged (DDP-style; small models);
    # fsdp: FSDP2 fully_shard per block, sharded checkpoints; auto: fsdp for vit_large/vit_giant
    parallel: Literal["auto", "replicate", "fsdp"] = "auto"
    ray_address: str | None = None  # None: start a local Ray bound to 127.0.0.1; "auto" or ray://...
    workers: int | tuple[int, int] = 1  # fixed count, or (min, max) for elastic training
    device: Literal["cpu", "cuda"] = "cpu"
    seed: int = 0  # weights, shuffle, views and masks all derive from it

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if isinstance(self.workers, tuple):
            lo, hi = self.workers
            if not 1 <= lo <= hi:
                raise ValueError(f"workers=({lo}, {hi}) must satisfy 1 <= min <= max")
            if lo < hi and self.batch.micro_size is None:
                raise ValueError(
                    f"workers=({lo}, {hi}) is elastic: set batch.micro_size (images per forward on one "
                    f"worker) so that batch statistics, and so the run, do not depend on the worker count"
                )
            counts = range(lo, hi + 1)
        else:
            if self.workers < 1:
                raise ValueError(f"workers={self.workers} must be at least 1")
            counts = range(self.workers, self.workers + 1)
        for n in counts:
            self.batch.plan(n)
        if "tensorboard" in self.metrics.trackers and self.metrics.tensorboard_dir is None:
            tensorboard_dir(self.output, None)  # an object-store output needs a local folder named
        return self

    @property
    def sharded(self) -> bool:
        """Whether the model is sharded with FSDP2 (``parallel``, with ``auto`` resolved by size)."""
        if self.parallel == "auto":
            return self.recipe.model.size in ("vit_large", "vit_giant")
        return self.parallel == "fsdp"

    def to_yaml(self) -> str:
        """The resolved config as YAML (saved next to every checkpoint)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def config_sha256(config_yaml: str) -> str:
    """The hash that names a resolved config: sha256 of its YAML as saved next to every checkpoint."""
    return hashlib.sha256(config_yaml.encode()).hexdigest()


def run_provenance(config_yaml: str) -> dict[str, Any]:
    """What a report says about the run a resolved config describes: datasets, steps, config hash.

    Read from the YAML tree, not validated: a checkpoint of an older radforge still has a provenance.
    Dataset URIs are redacted (credentials and query strings); ``None`` where the config lacks a field.
    """
    tree = yaml.safe_load(config_yaml) or {}
    sources = ((tree.get("data") or {}).get("mix") or {}).get("sources") or []
    return {
        "datasets": [redact(str(s.get("uri"))) for s in sources if isinstance(s, dict)],
        "steps": tree.get("steps"),
        "config_sha256": config_sha256(config_yaml),
    }


def load_train_config(path: str | Path | None = None, *, overrides: Sequence[str] = ()) -> TrainConfig:
    """Resolve a run: defaults, the YAML file at ``path``, then ``key.sub=value`` overrides.

    Override values are parsed as YAML (``workers=[1,2]``, ``recipe.loss.koleo_weight=0``).
    Raises :class:`TrainConfigError` naming the offending field.
    """

    def lay_recipe_file(layers: LayeredConfig) -> None:
        named = layers.tree.get("recipe_file")
        if not named:
            return
        recipe_path = Path(named)
        if not recipe_path.is_absolute() and path is not None:
            recipe_path = Path(path).resolve().parent / recipe_path
        if not recipe_path.is_file():
            raise TrainConfigError(f"recipe_file {str(recipe_path)!r} does not exist")
        recipe = read_yaml_mapping(recipe_path, error=TrainConfigError, what="recipe")
        layers.lay_under({"recipe": recipe}, str(recipe_path))
        layers.tree["recipe_file"] = str(recipe_path)

    return load_model(
        TrainConfig,
        path,
        overrides=overrides,
        error=TrainConfigError,
        what="run config",
        resolve=lay_recipe_file,
    )
