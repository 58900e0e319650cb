"""The few collectives the losses need, as no-ops outside a process group.

Sinkhorn-Knopp and the EMA centre normalise teacher scores over the global batch, so their sums
are all-reduced across ranks, as are the step's NaN flag and metrics; a single-process run (tests,
CPU) skips the communication.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    """Number of ranks in the default process group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_(tensor: torch.Tensor, *, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce (``op`` "sum" or "max") without autograd; returns ``tensor``."""
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return tensor
