"""Stochastic depth: drop a residual branch for a random subset of the samples."""

from __future__ import annotations

import torch
from torch import nn


def drop_path(x: torch.Tensor, *, p: float, training: bool) -> torch.Tensor:
    """Zero the branch ``x`` (B, ...) for each sample with probability ``p``; rescale the rest by 1/(1-p).

    The expectation of the output equals ``x``, so inference needs no correction.
    """
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask.div_(keep)


class DropPath(nn.Module):
    """Module form of :func:`drop_path` (identity when ``p`` is 0 or in eval mode)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, p=self.p, training=self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
