"""Feed-forward blocks: the classic GELU MLP and SwiGLU (DINOv2 giant, released Curia-2 ViT-B)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Mlp(nn.Module):
    """fc2(GELU(fc1(x))): (..., D) -> (..., D) with a hidden width of ``hidden_features``."""

    def __init__(self, dim: int, *, hidden_features: int, bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_features, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def swiglu_hidden(hidden_features: int) -> int:
    """SwiGLU width for a nominal MLP width: 2/3 of it (same parameter count), rounded up to 8.

    DINOv2's rule: the giant's nominal 4 x 1536 = 6144 becomes 4096.
    """
    return (int(hidden_features * 2 / 3) + 7) // 8 * 8


class SwiGLU(nn.Module):
    """w3(SiLU(x W1) * (x W2)): (..., D) -> (..., D), with W1 and W2 fused in one matmul."""

    def __init__(self, dim: int, *, hidden_features: int, bias: bool = True) -> None:
        super().__init__()
        hidden = swiglu_hidden(hidden_features)
        self.w12 = nn.Linear(dim, 2 * hidden, bias=bias)
        self.w3 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)
