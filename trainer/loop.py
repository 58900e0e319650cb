"""The training loop: one function, the same in a single process, under torchrun or in a Ray Train worker.

Phases of :func:`run_training`:

1. setup        rank/world from the process group (if any), rank variables for streaming, stale
                shared memory removed once per node, model + optimizer built from the recipe
2. resume       the latest checkpoint under the output URI, if any: weights, optimizer, centerings,
                step, RNG and the StreamingDataLoader position
3. data         next batch from the loader (time blocked on it = data wait)
4. step         :func:`trainer.step.train_step` (gradients averaged across ranks by hooks)
5. metrics      loss terms, lr, images/s, tokens/s, data-wait fraction -> JSONL next to checkpoints
6. checkpoint   every N steps and at the end, rank 0 publishes atomically; keep the last K

Data parallelism for small models is plain gradient averaging: a post-accumulate hook all-reduces
each parameter's gradient as backward produces it (what DDP does, without its bucketing), because
:func:`train_step` calls ``backbone.forward_features`` directly, which a DDP wrapper would not see.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from sharder.storage import resolve, write_bytes_atomic
from trainer import checkpoint as ckpt
from trainer.build import build_mask_sampler, build_multicrop, build_train_state
from trainer.data import build_loader, remove_stale_shared_memory, set_single_process_env
from trainer.run_config import TrainConfig
from trainer.step import TrainState, train_step

logger = logging.getLogger(__name__)

METRICS = "metrics"
REPORTED = ("loss", "dino", "ibot", "koleo", "sigreg", "lr", "grad_norm", "teacher_temp", "cls_std")


@dataclass
class RunSummary:
    """What a finished (or stopped) run reports."""

    step: int
    resumed_from: int | None
    checkpoint: str | None
    images_per_s: float  # mean over this process's steps (global images / step time)
    data_wait_fraction: float  # time blocked on the loader over total step time, this process
    metrics: list[dict[str, Any]] = field(default_factory=list)


def _world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the process group, or (0, 1, 0)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
    return 0, 1, 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def average_gradients_across_ranks(module: torch.nn.Module, *, world_size: int) -> None:
    """Register hooks that replace each gradient with its mean over ranks as soon as it is ready."""

    def hook(p: torch.Tensor) -> None:
        assert p.grad is not None
        dist.all_reduce(p.grad)
        p.grad.div_(world_size)

    for p in module.parameters():
        if p.requires_grad:
            p.register_post_accumulate_grad_hook(hook)


def _training_state(state: TrainState, *, loader_state: Any, config_yaml: str) -> dict[str, Any]:
    obj = state.objective
    return {
        "step": state.step,
        "student": state.student.state_dict(),
        "teacher": state.teacher.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "dino_centering": obj.dino_centering.state_dict(),
        "ibot_centering": obj.ibot_centering.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "loader": loader_state,
        "config": config_yaml,
    }


def _restore(state: TrainState, saved: dict[str, Any], *, where: str) -> None:
    try:
        state.student.load_state_dict(saved["student"])
        state.teacher.load_state_dict(saved["teacher"])
        state.optimizer.load_state_dict(saved["optimizer"])
        state.objective.dino_centering.load_state_dict(saved["dino_centering"])
        state.objective.ibot_centering.load_state_dict(saved["ibot_centering"])
    except (RuntimeError, KeyError, ValueError) as err:
        raise ckpt.CheckpointError(
            f"checkpoint {where} does not match this run's model or optimizer "
            f"(was it written with another recipe?): {err}"
        ) from err
    state.step = int(saved["step"])
    torch.set_rng_state(saved["torch_rng"])
    if saved.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["cuda_rng"])


def _epochs(loader: Any) -> Generator[dict[str, Any], None, None]:
    """Batches across epochs; an epoch without a full batch twice in a row is an error."""
    empty = 0
    while True:
        n = 0
        for batch in loader:
            n += 1
            yield batch
        empty = empty + 1 if n == 0 else 0
        if empty > 1:
            raise RuntimeError("the dataset yields no full batch per rank: lower batch.global_size")


class MetricsWriter:
    """Buffers per-step records; writes them as one JSONL object per checkpoint (stores cannot append)."""

    def __init__(self, output: str) -> None:
        self.root = resolve(output).join(METRICS)
        self.pending: list[dict[str, Any]] = []

    def add(self, record: dict[str, Any]) -> None:
        self.pending.append(record)

    def flush(self) -> None:
        if not self.pending:
            return
        first, last = self.pending[0]["step"], self.pending[-1]["step"]
        text = "".join(json.dumps(r) + "\n" for r in self.pending)
        write_bytes_atomic(self.root.join(f"{first:08d}-{last:08d}.jsonl"), text.encode())
        self.pending = []


def read_metrics(output: str) -> list[dict[str, Any]]:
    """Every flushed per-step record under ``output``, by step (a re-run step keeps its newest record)."""
    root = resolve(output).join(METRICS)
    fs = root.fs
    fs.invalidate_cache(root.path)
    if not fs.exists(root.path):
        return []
    by_step: dict[int, dict[str, Any]] = {}
    for path in sorted(fs.ls(root.path, detail=False), key=lambda p: str(p).rsplit("/", 1)[-1]):
        if not str(path).endswith(".jsonl"):
            continue
        with fs.open(path, "rb") as f:
            for line in f.read().decode().splitlines():
                rec = json.loads(line)
                by_step[int(rec["step"])] = rec
    return [by_step[s] for s in sorted(by_step)]


def run_training(
    cfg: TrainConfig,
    *,
    on_checkpoint: Callable[[ckpt.CheckpointRef | None, dict[str, Any]], None] | None = None,
) -> RunSummary:
    """Train until ``cfg.steps``; resume from the latest checkpoint under ``cfg.output`` when present.

    ``on_checkpoint(ref, metrics)`` is called on every rank after each checkpoint (``ref`` is None
    on ranks other than 0); the Ray Train entry reports through it.
    """
    # 1. setup
    set_single_process_env()
    rank, world, local_rank = _world()
    device = torch.device(cfg.device, local_rank) if cfg.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    per_worker = cfg.batch.per_worker(world)
    if local_rank == 0:
        remove_stale_shared_memory()
    _barrier()
    recipe = cfg.recipe
    state = build_train_state(recipe, global_batch_size=cfg.batch.global_size, device=device, seed=cfg.seed)
    if world > 1:
        average_gradients_across_ranks(state.student, world_size=world)
    loader = build_loader(
        cfg.data.mix,
        multicrop=build_multicrop(recipe),
        masks=build_mask_sampler(recipe),
        batch_size=per_worker,
        seed=cfg.seed,
        cache_dir=cfg.data.cache_dir,
        cache_limit=cfg.data.cache_limit,
        shuffle=cfg.data.shuffle,
        num_workers=cfg.data.loader_workers,
        prefetch_factor=cfg.data.prefetch_factor,
    )
    config_yaml = cfg.to_yaml()

    # 2. resume
    resumed_from = None
    ref = ckpt.latest(cfg.output) if cfg.checkpoint.resume else None
    if ref is not None:
        saved = ckpt.load(ref)
        _restore(state, saved, where=ref.location.uri)
        if saved.get("loader") is not None:
            loader.load_state_dict(saved["loader"])
        resumed_from = state.step
        logger.info("rank %d resumed from %s at step %d", rank, ref.location.uri, state.step)

    writer = MetricsWriter(cfg.output) if rank == 0 else None
    crops = recipe.crops
    tokens_per_image = crops.global_count * (crops.global_size // recipe.model.patch_size) ** 2 + (
        crops.local_count * (crops.local_size // recipe.model.patch_size) ** 2
    )
    records: list[dict[str, Any]] = []
    last_ckpt: str | None = ref.location.uri if ref is not None else None
    batches = _epochs(loader)
    try:
        while state.step < cfg.steps:
            # 3. data (time blocked on the loader)
            t0 = time.perf_counter()
            item = next(batches)
            batch = item["batch"].to(device, non_blocking=True)
            t1 = time.perf_counter()

            # 4. step
            metrics = train_step(state, batch)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t2 = time.perf_counter()

            # 5. metrics (global images over this rank's step time)
            step_time = t2 - t0
            record: dict[str, Any] = {"step": state.step, **{k: metrics[k] for k in REPORTED if k in metrics}}
            record.update(
                images_per_s=cfg.batch.global_size / step_time,
                tokens_per_s=cfg.batch.global_size * tokens_per_image / step_time,
                data_wait_fraction=(t1 - t0) / step_time,
                step_time_s=step_time,
                world_size=world,
                resumed_from=resumed_from,  # None for a fresh start; shows restarts in the log
            )
            if cfg.metrics.sample_keys:
                record["keys"] = list(item["keys"])
            if device.type == "cuda":
                record["gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            records.append(record)
            if writer is not None:
                writer.add(record)

            # 6. checkpoint (rank 0 writes; every rank's loader state is the same global position)
            if state.step % cfg.checkpoint.every == 0 or state.step == cfg.steps:
                loader_state = loader.state_dict()
                published = None
                if writer is not None:
                    writer.flush()
                    published = ckpt.save(
                        cfg.output,
                        step=state.step,
                        state=_training_state(state, loader_state=loader_state, config_yaml=config_yaml),
                        config_yaml=config_yaml,
                        keep=cfg.checkpoint.keep,
                    )
                    last_ckpt = published.location.uri
                _barrier()
                if on_checkpoint is not None:
                    on_checkpoint(published, record)
    finally:
        batches.close()  # stops the loader processes
        del batches, loader

    timed = records[1:] or records  # the first step includes loader start-up
    total = sum(r["step_time_s"] for r in timed)
    return RunSummary(
        step=state.step,
        resumed_from=resumed_from,
        checkpoint=last_ckpt,
        images_per_s=cfg.batch.global_size * len(timed) / total if total else 0.0,
        data_wait_fraction=sum(r["data_wait_fraction"] * r["step_time_s"] for r in timed) / (total or 1.0),
        metrics=records,
    )
