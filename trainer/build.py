"""From a :class:`radforge.trainer.recipe.RecipeConfig` to modules, with explicit keyword arguments.

The config object stops here: every module below is constructed from plain values, so it can be
built and tested without a config. :func:`build_train_state` assembles a ready-to-step
:class:`radforge.trainer.step.TrainState`: student and teacher built on the meta device, optionally sharded,
materialised on ``device``, initialised, teacher = student, optimizer with DINOv2's groups.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from radforge.trainer.heads import DINOHead, Network
from radforge.trainer.losses import Centering, DINOLoss, IBOTLoss, KoLeoLoss, SigRegLoss
from radforge.trainer.models.vit import VIT_SIZES, VisionTransformer
from radforge.trainer.optim import param_groups
from radforge.trainer.parallel import compile_blocks, compile_heads, fsdp_gradient_sync, scatter_full_state
from radforge.trainer.recipe import RecipeConfig
from radforge.trainer.schedules import Schedules, scaled_lr
from radforge.trainer.step import LossWeights, Objective, TrainState
from radforge.trainer.views.multicrop import MaskSampler, MultiCrop


def build_backbone(cfg: RecipeConfig, *, drop_path_rate: float | None = None) -> VisionTransformer:
    """The configured ViT size; ``drop_path_rate`` overrides the config (the teacher uses 0)."""
    m = cfg.model
    kwargs: dict[str, Any] = dict(
        img_size=m.img_size,
        patch_size=m.patch_size,
        in_chans=m.in_chans,
        num_registers=m.num_registers,
        layerscale_init=m.layerscale_init,
        drop_path_rate=m.drop_path_rate if drop_path_rate is None else drop_path_rate,
        drop_path_uniform=m.drop_path_uniform,
        qkv_bias=m.qkv_bias,
        checkpoint_blocks=m.activation_checkpointing,
    )
    overrides = {"ffn_layer": m.ffn, "embed_dim": m.embed_dim, "depth": m.depth, "num_heads": m.num_heads}
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    return VIT_SIZES[m.size](**kwargs)


def build_network(cfg: RecipeConfig, *, teacher: bool = False) -> Network:
    """Backbone + DINO head (+ separate iBOT head if configured); the teacher has no drop path."""
    backbone = build_backbone(cfg, drop_path_rate=0.0 if teacher else None)
    h = cfg.heads

    def head() -> DINOHead:
        return DINOHead(
            backbone.embed_dim,
            num_prototypes=h.num_prototypes,
            hidden_dim=h.hidden_dim,
            bottleneck_dim=h.bottleneck_dim,
            num_layers=h.num_layers,
        )

    return Network(backbone=backbone, dino_head=head(), ibot_head=head() if h.ibot_separate_head else None)


def build_objective(cfg: RecipeConfig, *, device: torch.device | str = "cpu") -> Objective:
    """Loss modules, centerings and weights."""
    loss, k = cfg.loss, cfg.heads.num_prototypes

    def centering() -> Centering:
        return Centering(
            k, method=loss.centering, iterations=loss.sinkhorn_iterations, momentum=loss.center_momentum
        )

    return Objective(
        dino=DINOLoss(student_temp=loss.student_temp),
        ibot=IBOTLoss(student_temp=loss.student_temp),
        koleo=KoLeoLoss(),
        sigreg=SigRegLoss(
            num_directions=loss.sigreg_directions, t_max=loss.sigreg_t_max, num_points=loss.sigreg_points
        ).to(device),
        dino_centering=centering().to(device),
        ibot_centering=centering().to(device),
        weights=LossWeights(
            dino=loss.dino_weight, ibot=loss.ibot_weight, koleo=loss.koleo_weight, sigreg=loss.sigreg_weight
        ),
    )


def build_schedules(cfg: RecipeConfig, *, global_batch_size: int) -> Schedules:
    """Schedules in steps, with the peak lr scaled to ``global_batch_size``."""
    s, o = cfg.schedule, cfg.optim
    return Schedules(
        total_steps=s.total_steps,
        lr=scaled_lr(o.base_lr, batch_size=global_batch_size, rule=o.lr_scaling),
        min_lr=o.min_lr,
        lr_warmup_steps=s.steps(s.warmup_epochs),
        weight_decay=s.weight_decay,
        weight_decay_end=s.weight_decay_end,
        momentum=s.momentum_teacher,
        momentum_end=s.momentum_teacher_end,
        teacher_temp_start=s.teacher_temp_start,
        teacher_temp=s.teacher_temp,
        teacher_temp_warmup_steps=s.steps(s.teacher_temp_warmup_epochs),
        freeze_last_layer_steps=s.steps(s.freeze_last_layer_epochs),
    )


def build_optimizer(cfg: RecipeConfig, student: Network) -> torch.optim.AdamW:
    """AdamW over DINOv2's parameter groups (lr and weight decay are set every step)."""
    o = cfg.optim
    groups = param_groups(
        student,
        depth=student.backbone.depth,
        layerwise_decay=o.layerwise_decay,
        patch_embed_lr_mult=o.patch_embed_lr_mult,
    )
    return torch.optim.AdamW(groups, lr=0.0, betas=o.betas, fused=cfg.compute.fused_optimizer or None)


def build_multicrop(cfg: RecipeConfig) -> MultiCrop:
    """The views of a slice, from the crop and intensity sections."""
    return MultiCrop(patch_size=cfg.model.patch_size, **cfg.crops.model_dump(), **cfg.intensity.model_dump())


def build_mask_sampler(cfg: RecipeConfig) -> MaskSampler:
    """Batch-level iBOT masking from the masking section."""
    return MaskSampler(**cfg.masking.model_dump())


def build_run_loader(cfg: Any, plan: Any, *, num_workers: int | None = None) -> Any:
    """The loader a run trains from: its dataset mix, views and masks, this worker's share of ``plan``.

    ``cfg`` is the run's ``TrainConfig`` and ``plan`` its ``BatchPlan`` for the world size;
    ``num_workers`` overrides the run's loader processes (benchmarks measure with and without them).
    """
    from radforge.trainer.data import build_loader  # streaming: imported by whoever builds a loader only

    workers = cfg.data.loader_workers if num_workers is None else num_workers
    return build_loader(
        cfg.data.mix,
        multicrop=build_multicrop(cfg.recipe),
        masks=build_mask_sampler(cfg.recipe),
        batch_size=plan.per_worker,
        accumulation=plan.accumulation,
        seed=cfg.seed,
        cache_dir=cfg.data.cache_dir,
        cache_limit=cfg.data.cache_limit,
        shuffle=cfg.data.shuffle,
        block=cfg.data.shuffle_block,
        num_workers=workers,
        prefetch_factor=cfg.data.prefetch_factor,
    )


def _scatter_initial_weights(cfg: RecipeConfig, networks: list[Network], *, seed: int | None) -> None:
    """Initialise sharded networks from one whole network initialised on rank 0's CPU.

    Drawing random values shard by shard would give other weights for every world size (each rank
    draws its shard from its own generator); the whole network drawn once and scattered gives the
    weights a single process gets on the CPU, whatever the number of ranks.
    """
    import torch.distributed as dist

    full: dict[str, Any] | None = None
    if not dist.is_initialized() or dist.get_rank() == 0:
        whole = build_network(cfg)
        if seed is not None:
            torch.manual_seed(seed)
        whole.init_weights()
        full = whole.state_dict()
    for net in networks:
        scatter_full_state(net, full)


def build_train_state(
    cfg: RecipeConfig,
    *,
    global_batch_size: int,
    device: torch.device | str = "cpu",
    shard: Callable[[Network], object] | None = None,
    seed: int | None = None,
) -> TrainState:
    """A ready-to-step :class:`TrainState`.

    Both networks are built on the meta device (a giant in well under a second), passed to
    ``shard`` (e.g. ``functools.partial(radforge.trainer.parallel.shard_network, mesh=mesh)``), materialised
    on ``device`` and initialised (sharded ones from one whole initialisation on rank 0's CPU, so
    the weights do not depend on the world size); the teacher starts as an exact copy of the
    student and never receives gradients. ``seed`` seeds the weight initialisation.
    """
    with torch.device("meta"):
        student = build_network(cfg)
        teacher = build_network(cfg, teacher=True)
    if cfg.compute.compile_blocks:  # before sharding (DINOv3's order): FSDP's hooks stay out of the graphs
        compile_blocks(student)
        compile_blocks(teacher)
    if shard is None:
        student.to_empty(device=device)
        teacher.to_empty(device=device)
        if seed is not None:
            torch.manual_seed(seed)
        student.init_weights()
        teacher.load_state_dict(student.state_dict())
    else:
        shard(student)
        shard(teacher)
        student.to_empty(device=device)
        teacher.to_empty(device=device)
        _scatter_initial_weights(cfg, [student, teacher], seed=seed)
    teacher.requires_grad_(False)
    objective = build_objective(cfg, device=device)
    if cfg.compute.compile_heads:  # the teacher's heads run embed_and_prototypes under no_grad: left eager
        compile_heads(student, objective)
    on_gpu = torch.device(device).type == "cuda"
    return TrainState(
        student=student,
        teacher=teacher,
        objective=objective,
        optimizer=build_optimizer(cfg, student),
        schedules=build_schedules(cfg, global_batch_size=global_batch_size),
        clip_grad=cfg.optim.clip_grad,
        seed=seed or 0,
        # bf16 autocast unless FSDP2's mixed-precision policy already casts the parameters
        autocast_dtype=torch.bfloat16
        if cfg.compute.precision == "bf16" and on_gpu and shard is None
        else None,
        # sharded: reduce-scatter once per step, on the last micro-batch's backward
        grad_sync=fsdp_gradient_sync(student) if shard is not None else None,
    )
