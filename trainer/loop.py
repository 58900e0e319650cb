"""The training loop: one function, the same in a single process, under torchrun or in a Ray Train worker.

Phases of :func:`run_training`:

1. setup        rank/world from the process group (created here under torchrun), rank variables
                for streaming, stale shared memory removed once per node, the batch plan (micro-batch,
                accumulation), model + optimizer built from the recipe, replicated or FSDP2-sharded
2. resume       the latest checkpoint under the output URI, if any: weights, optimizer, centerings,
                step, RNG and the loader position; else ``init_from`` (a previous
                stage's weights, position tables resampled)
3. data         next batch from the loader, cut into micro-batches (time blocked on it = data wait)
4. step         :func:`radforge.trainer.step.train_step` over the micro-batches (gradient accumulation)
5. metrics      loss terms, lr, images/s, tokens/s, data-wait fraction, MFU and memory on GPUs,
                every ``eval.every`` steps kNN scores of the teacher backbone on a held-out suite ->
                JSONL next to the checkpoints every ``metrics.flush_every`` steps
6. checkpoint   every N steps and at the end, published atomically (sharded with DCP under FSDP2)

Data parallelism for small models is plain gradient averaging: a post-accumulate hook all-reduces
each parameter's gradient as the last micro-batch's backward produces it (what DDP does, without
its bucketing), because :func:`train_step` calls ``backbone.forward_features`` directly, which a DDP
wrapper would not see. Large models are sharded with FSDP2 (:mod:`radforge.trainer.parallel`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from radforge.files import own_private_dir
from radforge.trainer import checkpoint as ckpt
from radforge.trainer.build import build_run_loader, build_train_state
from radforge.trainer.data import set_single_process_env
from radforge.trainer.flops import peak_flops, step_flops
from radforge.trainer.heads import Network
from radforge.trainer.models.pos_embed import resize_table
from radforge.trainer.parallel import (
    fsdp_state_dicts,
    load_fsdp_state_dicts,
    replicate_gradients,
    scatter_full_state,
    shard_network,
)
from radforge.trainer.run_config import TrainConfig, config_sha256
from radforge.trainer.shm import release_resume_memory, remove_stale_shared_memory
from radforge.trainer.step import TrainState, train_step

# the JSONL readers moved with the writer to trackers; importers of radforge.trainer.loop keep them
from radforge.trainer.trackers import METRICS as METRICS
from radforge.trainer.trackers import MetricsTail as MetricsTail
from radforge.trainer.trackers import Trackers, open_trackers
from radforge.trainer.trackers import read_metrics as read_metrics

if TYPE_CHECKING:
    from radforge.trainer.eval.periodic import PeriodicKnn

logger = logging.getLogger(__name__)

# train_step's metrics copied into each JSONL record (docs/training.md lists every field)
REPORTED = (
    "loss", "dino", "ibot", "koleo", "sigreg", "lr", "weight_decay", "momentum", "teacher_temp",
    "grad_norm", "cls_std", "teacher_entropy", "prototype_entropy", "masked_ratio",
)  # fmt: skip


@dataclass
class RunSummary:
    """What a finished (or stopped) run reports."""

    step: int
    resumed_from: int | None
    checkpoint: str | None
    images_per_s: float  # mean over this process's steps (global images / step time)
    data_wait_fraction: float  # time blocked on the loader over total step time, this process
    metrics: list[dict[str, Any]] = field(default_factory=list)


def _init_process_group(device_type: str, *, sharded: bool) -> bool:
    """Create the process group if the launcher did not; returns whether this call created it.

    Under torchrun (``WORLD_SIZE`` > 1) the group is made here (Ray Train makes its own). A single
    process that shards (``parallel: auto`` for ViT-L on one GPU) gets a one-rank group: FSDP2 and
    DCP need one, and its checkpoints are then sharded like a multi-worker run's, so an elastic
    run that started alone resumes on more workers.
    """
    if not dist.is_available() or dist.is_initialized():
        return False
    backend = "nccl" if device_type == "cuda" else "gloo"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group(backend)
        return True
    if sharded:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        return True
    return False


def _world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the process group, or (0, 1, 0)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
    return 0, 1, 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _training_state(
    state: TrainState, *, loader_state: Any, config_yaml: str, sharded: bool
) -> dict[str, Any]:
    """What ``state.pt`` holds; under FSDP2 the networks and optimizer go to DCP shards instead."""
    obj = state.objective
    out: dict[str, Any] = {
        "step": state.step,
        "dino_centering": obj.dino_centering.state_dict(),
        "ibot_centering": obj.ibot_centering.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "loader": loader_state,
        "config": config_yaml,
    }
    if not sharded:
        out.update(
            student=state.student.state_dict(),
            teacher=state.teacher.state_dict(),
            optimizer=state.optimizer.state_dict(),
        )
    return out


def _restore(state: TrainState, ref: ckpt.CheckpointRef, saved: dict[str, Any], *, sharded: bool) -> None:
    where = ref.location.uri
    if ckpt.is_sharded(saved) != sharded:
        raise ckpt.CheckpointError(
            f"checkpoint {where} is {'sharded (FSDP2)' if ckpt.is_sharded(saved) else 'unsharded'} but this "
            f"run is {'sharded' if sharded else 'replicated'}: set parallel= to what wrote it"
        )
    try:
        if sharded:
            target = fsdp_state_dicts(state.student, state.teacher, state.optimizer)
            ckpt.load_sharded(ref, target)
            load_fsdp_state_dicts(state.student, state.teacher, state.optimizer, target)
        else:
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


def init_from_stage(state: TrainState, uri: str, *, sharded: bool) -> None:
    """Load a previous stage's student and teacher into ``state`` (optimizer, step, schedules stay fresh).

    Position tables are resampled (bicubic) to this model's ``img_size`` grid, so a 224-px (or
    32-px) checkpoint starts a 512-px (64-px) stage. Raises ``CheckpointError`` if the networks
    differ otherwise.
    """
    weights = ckpt.load_weights(uri)
    for name, net in (("student", state.student), ("teacher", state.teacher)):
        sd = dict(weights[name])
        key = "backbone.pos_embed.weight"
        table = net.backbone.pos_embed
        if key in sd:
            sd[key] = resize_table(sd[key], grid=table.grid, num_prefix=table.num_prefix)
        try:
            _load_full(net, sd, sharded=sharded)
        except (RuntimeError, KeyError, ValueError) as err:
            raise ckpt.CheckpointError(
                f"init_from {uri}: its {name} does not fit this run's model (other size or heads?): {err}"
            ) from err
    logger.info(
        "initialised from %s (position tables resampled to %s)", uri, state.student.backbone.pos_embed.grid
    )


def _load_full(net: Network, sd: dict[str, Any], *, sharded: bool) -> None:
    if sharded:
        scatter_full_state(net, sd)
    else:
        net.load_state_dict(sd)


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


def _open_trackers(cfg: TrainConfig, config_yaml: str, *, resumed_from: int | None) -> Trackers:
    """JSONL metrics plus ``metrics.trackers`` (rank 0); MLflow gets the run's headline settings as params."""
    m = cfg.metrics
    params = {
        "steps": cfg.steps,
        "global_batch": cfg.batch.global_size,
        "model": cfg.recipe.model.size,
        "seed": cfg.seed,
        "config_sha256": config_sha256(config_yaml),
    }
    return open_trackers(
        cfg.output,
        names=m.trackers,
        resumed_from=resumed_from,
        tensorboard_folder=m.tensorboard_dir,
        mlflow_tracking_uri=m.mlflow_tracking_uri,
        mlflow_experiment=m.mlflow_experiment,
        params=params,
    )


def _global_keys(micro_keys: list[list[str]], *, rank: int, world: int) -> list[str]:
    """Every sample key of the global batch, micro-batch by micro-batch (index r + W a), on every rank."""
    mine = {rank + world * a: keys for a, keys in enumerate(micro_keys)}
    if world > 1:
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, mine)
        for part in gathered:
            mine.update(part)
    return [k for j in sorted(mine) for k in mine[j]]


def _evaluates(cfg: TrainConfig, *, rank: int, sharded: bool) -> bool:
    """Whether this rank runs the periodic kNN (``eval.every``); checks named task folders now.

    Replicated, rank 0 alone evaluates its whole copy of the teacher; the other ranks go on and
    wait in the next step's first collective. Under FSDP2 the forward all-gathers each unit's
    parameters, a collective, so every rank evaluates the same inputs (rank 0 records the scores).
    """
    if cfg.eval.every == 0 or (not sharded and rank != 0):
        return False
    from radforge.trainer.eval.run import BUILTIN
    from radforge.trainer.eval.tasks import find_tasks

    if cfg.eval.tasks != BUILTIN:
        find_tasks(cfg.eval.tasks)  # a wrong path fails at the start, not at the first evaluation
    return True


def _periodic_knn(cfg: TrainConfig, *, local_rank: int, sharded: bool) -> PeriodicKnn:
    """The suite of ``eval.tasks``, loaded and preprocessed (on an evaluating rank, at its first due step).

    Under FSDP2 every rank loads it: local rank 0 first, so a node's ranks do not generate the
    built-in suite into the same folder at once (every rank calls one barrier).
    """
    from radforge.trainer.eval.periodic import PeriodicKnn  # the eval stack only where it is used

    recipe = cfg.recipe
    if sharded and local_rank != 0:
        _barrier()
    own_private_dir(cfg.eval.cache_dir)  # a fixed /tmp name: another local user must not have planted it
    periodic = PeriodicKnn.from_suite(
        cfg.eval.tasks,
        builtin_root=Path(cfg.eval.cache_dir) / "builtin-suite",
        every=cfg.eval.every,
        image_size=recipe.crops.global_size,
        ct_air_hu=recipe.intensity.ct_air_hu,
        max_samples=cfg.eval.max_samples,
        seed=cfg.seed,
    )
    if sharded and local_rank == 0:
        _barrier()
    return periodic


def run_training(
    cfg: TrainConfig,
    *,
    on_checkpoint: Callable[[ckpt.CheckpointRef | None, dict[str, Any]], None] | None = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> RunSummary:
    """Train until ``cfg.steps``; resume from the latest checkpoint under ``cfg.output`` when present.

    ``on_checkpoint(ref, record)`` is called on every rank after each checkpoint (``ref`` is None
    on ranks other than 0); the Ray Train entry reports through it. ``on_step(record)`` is called
    on rank 0 after every step (the CLI's progress bar).
    """
    # 1. setup
    set_single_process_env()
    sharded = cfg.sharded
    own_group = _init_process_group(cfg.device, sharded=sharded)
    rank, world, local_rank = _world()
    device = torch.device(cfg.device, local_rank) if cfg.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    plan = cfg.batch.plan(world)
    if local_rank == 0:
        remove_stale_shared_memory()
    _barrier()
    recipe = cfg.recipe
    shard = None
    if sharded:
        from torch.distributed.device_mesh import init_device_mesh

        bf16 = recipe.compute.precision == "bf16" and device.type == "cuda"
        shard = partial(
            shard_network,
            mesh=init_device_mesh(device.type, (world,)),
            param_dtype=torch.bfloat16 if bf16 else None,
            reduce_dtype=torch.float32,
        )
    state = build_train_state(
        recipe, global_batch_size=cfg.batch.global_size, device=device, seed=cfg.seed, shard=shard
    )
    if world > 1 and not sharded:
        state.grad_sync = replicate_gradients(state.student, world_size=world)
    # ranks open the data together: the node's first process builds a new dataset version's shard
    # table (under a file lock) while the others wait for it and then map the same file
    _barrier()
    loader = build_run_loader(cfg, plan)
    config_yaml = cfg.to_yaml()

    # 2. resume (this run's own checkpoint wins over init_from: a restarted stage continues)
    resumed_from = None
    ref = ckpt.latest(cfg.output) if cfg.checkpoint.resume else None
    if ref is not None:
        saved = ckpt.load(ref)
        _restore(state, ref, saved, sharded=sharded)
        if saved.get("loader") is not None:
            loader.load_state_dict(saved["loader"])
        resumed_from = state.step
        logger.info("rank %d resumed from %s at step %d", rank, ref.location.uri, state.step)
    elif cfg.init_from is not None:
        init_from_stage(state, cfg.init_from, sharded=sharded)

    evaluates = _evaluates(cfg, rank=rank, sharded=sharded)
    periodic: PeriodicKnn | None = None  # loaded at the first due step: runs that stop before pay nothing
    writer = _open_trackers(cfg, config_yaml, resumed_from=resumed_from) if rank == 0 else None
    crops, patch = recipe.crops, recipe.model.patch_size
    tokens_per_image = crops.global_count * (crops.global_size // patch) ** 2 + (
        crops.local_count * (crops.local_size // patch) ** 2
    )
    flops = step_flops(recipe, images=cfg.batch.global_size)  # student fwd+bwd + teacher fwd, analytic
    peak = peak_flops(device, precision=recipe.compute.precision)
    records: list[dict[str, Any]] = []
    last_ckpt: str | None = ref.location.uri if ref is not None else None
    batches = _epochs(loader)
    micro_ids = [rank + world * a for a in range(plan.accumulation)]  # index in the global batch
    try:
        while state.step < cfg.steps:
            # 3. data (time blocked on the loader)
            t0 = time.perf_counter()
            item = next(batches)
            micro = [mb.to(device, non_blocking=True) for mb in item["micro"]]
            t1 = time.perf_counter()

            # 4. step (accumulating over this worker's micro-batches)
            metrics = train_step(state, micro, micro_ids=micro_ids)
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
                mfu=flops / world / step_time / peak if peak else None,
                gpu_memory_gib=torch.cuda.max_memory_allocated(device) / 2**30
                if device.type == "cuda"
                else None,
                world_size=world,
                micro_batch=plan.micro_size,
                accumulation=plan.accumulation,
                global_batch=cfg.batch.global_size,
                resumed_from=resumed_from,  # None for a fresh start; shows restarts in the log
                time=time.time(),
            )
            if cfg.metrics.sample_keys:
                record["keys"] = _global_keys(item["micro_keys"], rank=rank, world=world)
            if evaluates and state.step % cfg.eval.every == 0:
                # the teacher as this step left it (= this step's checkpoint); not in step_time_s
                t_eval = time.perf_counter()
                if periodic is None:
                    periodic = _periodic_knn(cfg, local_rank=local_rank, sharded=sharded)
                record.update(periodic.evaluate(state.teacher.backbone))
                logger.info(
                    "step %d: knn_mean %.4f (%.1f s)",
                    state.step,
                    record["knn_mean"],
                    time.perf_counter() - t_eval,
                )
            records.append(record)
            checkpoint_now = state.step % cfg.checkpoint.every == 0 or state.step == cfg.steps
            if writer is not None:
                writer.log(record)
                if checkpoint_now or state.step % cfg.metrics.flush_every == 0:
                    writer.flush()
                if on_step is not None:
                    on_step(record)

            # 6. checkpoint (every rank's loader state is the same global position)
            if checkpoint_now:
                loader_state = loader.state_dict()
                published = ckpt.save(
                    cfg.output,
                    step=state.step,
                    state=_training_state(
                        state, loader_state=loader_state, config_yaml=config_yaml, sharded=sharded
                    ),
                    config_yaml=config_yaml,
                    keep=cfg.checkpoint.keep,
                    sharded=fsdp_state_dicts(state.student, state.teacher, state.optimizer)
                    if sharded
                    else None,
                )
                if published is not None:
                    last_ckpt = published.location.uri
                if on_checkpoint is not None:
                    on_checkpoint(published, record)
        _barrier()  # every rank has its last batch: none reads the resume segment again
        release_resume_memory(loader)
        if writer is not None:
            writer.close()
            writer = None
    finally:
        if writer is not None:  # the run failed: MLflow marks its run so
            writer.close(failed=True)
        batches.close()  # stops the loader processes
        del batches, loader
        if own_group and world == 1:
            dist.destroy_process_group()  # a torchrun group lives as long as its process

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
