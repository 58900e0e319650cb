"""One self-supervised training step: teacher targets, student predictions, losses, update, EMA.

Plain PyTorch, no Ray: the same function runs in a CPU test and, inside the Ray Train loop, on a GPU
under FSDP2. The phases follow DINOv2/DINOv3's train loop:

1. schedules   lr, weight decay, teacher momentum and temperature for this step
2. teacher     global crops of every micro-batch -> head embeddings, centred over the global batch
               (targets are built per micro-batch from them when the student consumes them)
3. student     per micro-batch: global crops (iBOT-masked) and local crops -> heads
4. losses      DINO (crop pairs) + iBOT (masked patches) + KoLeo and SigReg (global CLS tokens);
               backward of loss / micro-batches, gradients combined across ranks on the last one
5. update      NaN check across ranks, gradient clipping per part, AdamW step
6. EMA         teacher <- momentum-weighted average with the student

Gradient accumulation: a step may get several micro-batches. Teacher targets (Sinkhorn-Knopp or
the EMA centre) are computed over all of them and all ranks, i.e. over the global batch, as
without accumulation; the student's batch statistics (KoLeo neighbours, SigReg's characteristic
function) and iBOT masks are per micro-batch, whose size does not depend on the worker count, and
each micro-batch's random draws (drop path) come from a generator seeded by (seed, step, its index
in the global batch). So a global batch gives the same update on 1 worker accumulating k
micro-batches as on k workers, up to the order of floating-point sums.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from radforge.trainer.collectives import all_reduce_, world_size
from radforge.trainer.ema import ema_update
from radforge.trainer.heads import Network
from radforge.trainer.losses import Centering, DINOLoss, IBOTLoss, KoLeoLoss, SigRegLoss, crop_pairs
from radforge.trainer.losses.centering import FactorizedTargets
from radforge.trainer.optim import apply_schedule
from radforge.trainer.schedules import Schedules, ScheduleValues
from radforge.trainer.views.multicrop import ViewBatch

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
    seed: int = 0  # with the step and micro-batch index, seeds each micro-batch's random draws
    # called with False before each micro-batch's backward but the last, then True: replicated
    # data parallelism combines gradients across ranks only once (see radforge.trainer.parallel)
    grad_sync: Callable[[bool], None] | None = None


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


def clip_gradients(net: Network, max_norm: float | None) -> dict[str, torch.Tensor]:
    """Clip the backbone's, the DINO head's and the iBOT head's gradients each to ``max_norm``; their norms.

    DINOv2 and DINOv3 clip each part on its own: under one global norm the heads' large early
    gradients (KoLeo's above all) would shrink the backbone's update. A shared iBOT head is one
    part with the DINO head. Norms (before clipping) are full tensors under FSDP2 too.
    """
    parts = {"backbone": net.backbone, "dino_head": net.dino_head}
    if not net.shared_head:
        parts["ibot_head"] = net.ibot_head
    clip = max_norm if max_norm is not None else float("inf")
    norms = {}
    for name, module in parts.items():
        params = [p for p in module.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, clip)
        norms[name] = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
    return norms


def micro_seed(seed: int, step: int, index: int) -> int:
    """Seed of the random draws (drop path) of micro-batch ``index`` of the global batch at ``step``."""
    return int(np.random.SeedSequence([seed, step, index]).generate_state(1)[0])


@dataclass
class _TeacherTargets:
    """The teacher's centred targets for every micro-batch, built when the student consumes them.

    Held as head embeddings (N x 256) with the centering's scaling, not as N x K targets
    (:class:`~radforge.trainer.losses.centering.FactorizedTargets`): at 512 px with 65,536
    prototypes, every masked patch's targets of an accumulated batch would take gigabytes.
    """

    dino_rows: FactorizedTargets  # per micro-batch: (G * b, K) when built
    ibot_rows: FactorizedTargets  # per micro-batch: (M_j, K)
    shapes: list[tuple[int, int]]  # per micro-batch (G, b)
    usage: torch.Tensor  # (K,) batch-mean teacher softmax over the global batch

    def dino(self, j: int) -> torch.Tensor:
        return self.dino_rows.targets(j).view(*self.shapes[j], -1)  # (G, b, K)

    def ibot(self, j: int) -> torch.Tensor:
        return self.ibot_rows.targets(j)  # (M_j, K)


@torch.no_grad()
def _teacher_targets(state: TrainState, micro: Sequence[ViewBatch], sched: ScheduleValues) -> _TeacherTargets:
    """Teacher embeddings of every micro-batch, centred together (one Sinkhorn / EMA update per step)."""
    teacher, obj = state.teacher, state.objective
    cls, patch = [], []
    for mb in micro:
        feats = teacher.backbone.forward_features(mb.global_crops)
        z, w_dino = teacher.dino_head.embed_and_prototypes(feats.cls)
        cls.append(z)  # (G * b, D)
        z, w_ibot = teacher.ibot_head.embed_and_prototypes(feats.patches[mb.masks])
        patch.append(z)  # (M_j, D)
    t = sched.teacher_temp
    dino = FactorizedTargets(obj.dino_centering, cls, w_dino, temperature=t)
    ibot = FactorizedTargets(obj.ibot_centering, patch, w_ibot, temperature=t)
    rows = all_reduce_(torch.tensor(float(sum(len(c) for c in cls)), device=cls[0].device))
    return _TeacherTargets(
        dino_rows=dino,
        ibot_rows=ibot,
        shapes=[(mb.n_global, mb.batch_size) for mb in micro],
        usage=all_reduce_(dino.softmax_sum()) / rows,
    )


def _student_loss(
    state: TrainState, mb: ViewBatch, dino_targets: torch.Tensor, ibot_targets: torch.Tensor, *, step: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Total loss, its unweighted terms and the global crops' CLS tokens of one micro-batch."""
    student, obj = state.student, state.objective
    device = mb.global_crops.device
    g, loc = mb.n_global, mb.n_local
    s_global = student.backbone.forward_features(mb.global_crops, masks=mb.masks)
    cls_tokens = [s_global.cls]
    if loc:
        cls_tokens.append(student.backbone.forward_features(mb.local_crops).cls)
    masked_tokens = s_global.patches[mb.masks]  # (M, D)
    cls_all = torch.cat(cls_tokens)
    if student.shared_head:  # one head call for CLS and patch tokens (DINOv2)
        out = student.dino_head(torch.cat([cls_all, masked_tokens]))
        s_dino, s_ibot = out[: cls_all.shape[0]], out[cls_all.shape[0] :]
    else:
        s_dino, s_ibot = student.dino_head(cls_all), student.ibot_head(masked_tokens)

    # losses (fp32 inside each module)
    w = obj.weights
    pairs = crop_pairs(n_global=g, n_local=loc, device=device)
    terms = {
        "dino": obj.dino(s_dino.view(g + loc, mb.batch_size, -1), dino_targets, pairs=pairs),
        "ibot": obj.ibot(s_ibot, ibot_targets, masks=mb.masks),
        "koleo": sum((obj.koleo(c) for c in s_global.cls.chunk(g)), torch.zeros((), device=device)),
        "sigreg": torch.stack([obj.sigreg(c, step=step) for c in s_global.cls.chunk(g)]).mean(),
    }
    loss = (
        w.dino * terms["dino"]
        + w.ibot * terms["ibot"]
        + w.koleo * terms["koleo"]
        + w.sigreg * terms["sigreg"]
    )
    return loss, terms, s_global.cls


def train_step(
    state: TrainState, batch: ViewBatch | Sequence[ViewBatch], *, micro_ids: Sequence[int] | None = None
) -> dict[str, float]:
    """Run one optimisation step on ``batch`` (one micro-batch or several) and return its metrics.

    ``micro_ids`` are the micro-batches' indices in the global batch (default 0, 1, ...): with
    ``state.seed`` and the step they seed each micro-batch's random draws. Every micro-batch must
    have the same size. Metrics are means over the global batch (all micro-batches, all ranks):
    ``loss`` and each unweighted term (``dino``, ``ibot``, ``koleo``, ``sigreg``), the schedule
    values (``lr``, ``weight_decay``, ``momentum``, ``teacher_temp``), ``grad_norm`` (of all
    parts, before clipping) and ``grad_norm_<part>`` per clipped part (:func:`clip_gradients`),
    ``teacher_entropy`` (mean entropy of the teacher's DINO targets, nats),
    ``prototype_entropy`` (entropy of the batch-mean teacher softmax: how many prototypes are in
    use), ``cls_std`` (collapse detector, see :func:`_cls_std`), ``masked_ratio`` and, for this
    rank, ``images_per_s``. Raises :class:`NonFiniteLossError` without updating anything if the
    loss is not finite on any rank.
    """
    start = time.perf_counter()
    micro = [batch] if isinstance(batch, ViewBatch) else list(batch)
    ids = list(range(len(micro))) if micro_ids is None else list(micro_ids)
    if len(ids) != len(micro) or len({mb.batch_size for mb in micro}) != 1:
        raise ValueError(
            f"micro-batches must have one size and one index each (sizes "
            f"{[mb.batch_size for mb in micro]}, indices {ids})"
        )
    student, teacher = state.student, state.teacher
    device = micro[0].global_crops.device

    # 1. schedules
    sched = state.schedules.at(state.step)
    apply_schedule(
        state.optimizer,
        lr=sched.lr,
        weight_decay=sched.weight_decay,
        freeze_last_layer=sched.freeze_last_layer,
    )

    def autocast() -> torch.autocast:
        dtype = state.autocast_dtype
        return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    # 2. teacher targets over the global batch (global crops, unmasked)
    with autocast():
        targets = _teacher_targets(state, micro, sched)

    # 3.-4. student forward, losses and backward per micro-batch; gradients are combined across
    # ranks on the last backward only (FSDP2 reduce-scatters each one, into sharded gradients)
    state.optimizer.zero_grad(set_to_none=True)
    sums = torch.zeros(7, device=device)  # loss, 4 terms, cls_std, masked ratio
    entropy, entropy_rows = torch.zeros((), device=device), 0  # of this rank's DINO targets
    rng_devices = [device] if device.type == "cuda" else []
    for i, (mb, index) in enumerate(zip(micro, ids, strict=True)):
        if state.grad_sync is not None:
            state.grad_sync(i == len(micro) - 1)
        dino_targets = targets.dino(i)
        entropy += _entropy(dino_targets).sum()
        entropy_rows += dino_targets.shape[0] * dino_targets.shape[1]
        with torch.random.fork_rng(devices=rng_devices):
            torch.manual_seed(micro_seed(state.seed, state.step, index))
            with autocast():
                loss, terms, cls = _student_loss(state, mb, dino_targets, targets.ibot(i), step=state.step)
            (loss / len(micro)).backward()
        del dino_targets
        sums += torch.stack(
            [
                loss.detach(),
                *(t.detach().float() for t in terms.values()),
                _cls_std(cls.detach()),
                mb.masks.float().mean(),
            ]
        )

    # 5. NaN check across ranks, clip, optimizer step
    bad = all_reduce_((~torch.isfinite(sums[0])).float(), op="max")
    if bad.item() > 0:
        state.optimizer.zero_grad(set_to_none=True)
        values = dict(
            zip(["dino", "ibot", "koleo", "sigreg"], (sums[1:5] / len(micro)).tolist(), strict=True)
        )
        raise NonFiniteLossError(f"non-finite loss at step {state.step}: {values}")
    norms = clip_gradients(student, state.clip_grad)
    state.optimizer.step()

    # 6. EMA teacher
    ema_update(teacher, student, momentum=sched.momentum)
    state.step += 1

    means = all_reduce_(sums / len(micro)) / world_size()
    stats = torch.cat(
        [
            means,
            torch.stack(
                [
                    all_reduce_(entropy / max(entropy_rows, 1)) / world_size(),
                    _entropy(targets.usage),
                    torch.linalg.vector_norm(torch.stack(list(norms.values()))),
                    *norms.values(),
                ]
            ),
        ]
    ).tolist()
    names = ["loss", "dino", "ibot", "koleo", "sigreg", "cls_std", "masked_ratio"]
    names += ["teacher_entropy", "prototype_entropy", "grad_norm", *(f"grad_norm_{part}" for part in norms)]
    metrics = dict(zip(names, stats, strict=True))
    metrics.update(
        lr=sched.lr,
        weight_decay=sched.weight_decay,
        momentum=sched.momentum,
        teacher_temp=sched.teacher_temp,
        images_per_s=sum(mb.batch_size for mb in micro) / (time.perf_counter() - start),
    )
    return metrics
