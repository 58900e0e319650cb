"""One self-supervised training step: teacher targets, student predictions, losses, update, EMA.

Plain PyTorch, no Ray: the same function runs in a CPU test and, inside issue 5's Ray Train loop,
on a GPU under FSDP2. The phases follow DINOv2/DINOv3's train loop:

1. schedules   lr, weight decay, teacher momentum and temperature for this step
2. teacher     global crops -> CLS and patch tokens -> heads -> centred targets (no grad)
3. student     global crops (iBOT-masked) and local crops -> heads
4. losses      DINO (crop pairs) + iBOT (masked patches) + KoLeo and SigReg (global CLS tokens)
5. update      backward, NaN check across ranks, gradient clipping, AdamW step
6. EMA         teacher <- momentum-weighted average with the student
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from trainer.collectives import all_reduce_
from trainer.ema import ema_update
from trainer.heads import Network
from trainer.losses import Centering, DINOLoss, IBOTLoss, KoLeoLoss, SigRegLoss, crop_pairs
from trainer.optim import apply_schedule
from trainer.schedules import Schedules
from trainer.views.multicrop import ViewBatch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LossWeights:
    """Weight of each term in the total loss (0 switches a term off)."""

    dino: float = 1.0
    ibot: float = 1.0
    koleo: float = 0.1
    sigreg: float = 0.02


@dataclass
class Objective:
    """The loss modules, the teacher centerings and the weights that combine them."""

    dino: DINOLoss
    ibot: IBOTLoss
    koleo: KoLeoLoss
    sigreg: SigRegLoss
    dino_centering: Centering
    ibot_centering: Centering
    weights: LossWeights


@dataclass
class TrainState:
    """Everything a step reads and updates; ``step`` counts completed steps."""

    student: Network
    teacher: Network
    objective: Objective
    optimizer: torch.optim.Optimizer
    schedules: Schedules
    clip_grad: float | None = 3.0
    autocast_dtype: torch.dtype | None = None  # bf16 on GPUs; None = the parameters' dtype
    step: int = 0


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite (on any rank); the step was not applied."""


def _entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of distributions along the last axis."""
    return -(p * torch.log(p.clamp_min(1e-12))).sum(-1)


def _cls_std(cls: torch.Tensor) -> torch.Tensor:
    """Spread of L2-normalised CLS tokens (B, D): per-dimension std over the batch, averaged, x sqrt(D).

    About 1 for embeddings spread evenly on the sphere, 0 when every image maps to the same point
    (the collapse this recipe's centering and regularisers guard against).
    """
    z = nn.functional.normalize(cls.float(), dim=-1)
    return z.std(dim=0).mean() * math.sqrt(z.shape[-1])


def train_step(state: TrainState, batch: ViewBatch) -> dict[str, float]:
    """Run one optimisation step on ``batch`` and return its metrics (floats).

    Metrics: ``loss`` and each unweighted term (``dino``, ``ibot``, ``koleo``, ``sigreg``), the
    schedule values (``lr``, ``weight_decay``, ``momentum``, ``teacher_temp``), ``grad_norm``
    (before clipping), ``teacher_entropy`` (mean entropy of the teacher's DINO targets, nats),
    ``prototype_entropy`` (entropy of the batch-mean teacher softmax: how many prototypes are in
    use), ``cls_std`` (collapse detector, see :func:`_cls_std`), ``masked_ratio`` and ``images_per_s``.
    Raises :class:`NonFiniteLossError` without updating anything if the loss is not finite.
    """
    start = time.perf_counter()
    student, teacher, obj = state.student, state.teacher, state.objective
    device = batch.global_crops.device
    g, loc, b = batch.n_global, batch.n_local, batch.batch_size
    masks = batch.masks

    # 1. schedules
    sched = state.schedules.at(state.step)
    apply_schedule(
        state.optimizer,
        lr=sched.lr,
        weight_decay=sched.weight_decay,
        freeze_last_layer=sched.freeze_last_layer,
    )
    autocast = torch.autocast(
        device.type, dtype=state.autocast_dtype or torch.float32, enabled=state.autocast_dtype is not None
    )

    with autocast:
        # 2. teacher targets (global crops, unmasked)
        with torch.no_grad():
            t_feats = teacher.backbone.forward_features(batch.global_crops)
            t_cls = teacher.dino_head(t_feats.cls).float()  # (G * B, K)
            dino_targets = obj.dino_centering(t_cls, temperature=sched.teacher_temp).view(g, b, -1)
            t_patch = teacher.ibot_head(t_feats.patches[masks]).float()  # (M, K)
            ibot_targets = obj.ibot_centering(t_patch, temperature=sched.teacher_temp)
            prototype_usage = torch.softmax(t_cls / sched.teacher_temp, dim=-1).mean(0)

        # 3. student predictions
        s_global = student.backbone.forward_features(batch.global_crops, masks=masks)
        cls_tokens = [s_global.cls]
        if loc:
            cls_tokens.append(student.backbone.forward_features(batch.local_crops).cls)
        masked_tokens = s_global.patches[masks]  # (M, D)
        cls_all = torch.cat(cls_tokens)
        if student.shared_head:  # one head call for CLS and patch tokens (DINOv2)
            out = student.dino_head(torch.cat([cls_all, masked_tokens]))
            s_dino, s_ibot = out[: cls_all.shape[0]], out[cls_all.shape[0] :]
        else:
            s_dino, s_ibot = student.dino_head(cls_all), student.ibot_head(masked_tokens)

    # 4. losses (fp32 inside each module)
    w = obj.weights
    pairs = crop_pairs(n_global=g, n_local=loc, device=device)
    terms = {
        "dino": obj.dino(s_dino.view(g + loc, b, -1), dino_targets, pairs=pairs),
        "ibot": obj.ibot(s_ibot, ibot_targets, masks=masks),
        "koleo": sum((obj.koleo(c) for c in s_global.cls.chunk(g)), torch.zeros((), device=device)),
        "sigreg": torch.stack([obj.sigreg(c, step=state.step) for c in s_global.cls.chunk(g)]).mean(),
    }
    loss = (
        w.dino * terms["dino"]
        + w.ibot * terms["ibot"]
        + w.koleo * terms["koleo"]
        + w.sigreg * terms["sigreg"]
    )

    # 5. backward, NaN check across ranks, clip, optimizer step
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    bad = all_reduce_((~torch.isfinite(loss.detach())).float(), op="max")
    if bad.item() > 0:
        state.optimizer.zero_grad(set_to_none=True)
        values = {k: float(v.detach()) for k, v in terms.items()}
        raise NonFiniteLossError(f"non-finite loss at step {state.step}: {values}")
    params = [p for p in student.parameters() if p.grad is not None]
    clip = state.clip_grad if state.clip_grad is not None else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
    state.optimizer.step()

    # 6. EMA teacher
    ema_update(teacher, student, momentum=sched.momentum)
    state.step += 1

    stats = torch.stack(
        [
            loss.detach(),
            *(t.detach().float() for t in terms.values()),
            _entropy(dino_targets).mean(),
            _entropy(prototype_usage),
            _cls_std(s_global.cls.detach()),
            masks.float().mean(),
            grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm,
        ]
    ).tolist()
    names = ["loss", *terms, "teacher_entropy", "prototype_entropy", "cls_std", "masked_ratio", "grad_norm"]
    metrics = dict(zip(names, stats, strict=True))
    metrics.update(
        lr=sched.lr,
        weight_decay=sched.weight_decay,
        momentum=sched.momentum,
        teacher_temp=sched.teacher_temp,
        images_per_s=b / (time.perf_counter() - start),
    )
    return metrics
