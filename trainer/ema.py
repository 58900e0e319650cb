"""The teacher: an exponential moving average of the student's weights."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.tensor import DTensor


def _local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of an FSDP2 (DTensor) parameter, or the tensor itself."""
    return t.to_local() if isinstance(t, DTensor) else t


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, *, momentum: float) -> None:
    """theta_teacher <- m theta_teacher + (1 - m) theta_student, for every parameter pair.

    Both modules must have the same architecture (and, under FSDP2, the same sharding): pairs are
    matched by order of ``parameters()``. Done with two fused foreach kernels on local shards, so
    no communication is needed (DINOv2 / DINOv3).
    """
    t = [_local(p) for p in teacher.parameters()]
    s = [_local(p) for p in student.parameters()]
    if len(t) != len(s):
        raise ValueError(f"teacher has {len(t)} parameters, student {len(s)}: architectures differ")
    torch._foreach_mul_(t, momentum)
    torch._foreach_add_(t, s, alpha=1.0 - momentum)
