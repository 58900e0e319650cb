"""LayerScale (CaiT): a learned per-channel gain on each residual branch, initialised small."""

from __future__ import annotations

import torch
from torch import nn


class LayerScale(nn.Module):
    """y = gamma * x with gamma (D,) initialised to ``init_values`` (DINOv2: 1e-5).

    Starting each residual branch near zero lets deep ViTs (40 blocks for the giant) train stably.
    The parameter is named ``gamma`` so that weight decay skips it (DINOv2's rule).
    """

    def __init__(self, dim: int, *, init_values: float = 1e-5) -> None:
        super().__init__()
        self.init_values = init_values
        self.gamma = nn.Parameter(torch.empty(dim))
        self.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma

    def reset_parameters(self) -> None:
        nn.init.constant_(self.gamma, self.init_values)
