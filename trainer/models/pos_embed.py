"""Learned absolute position embeddings, resampled to any patch grid.

Pre-training runs at a low resolution (e.g. 224 px) and a later stage at 512 px (RECIPE.md,
"Final resolution 512 px ... with position-embedding interpolation"): the table is stored for one
grid and interpolated bicubically to the grid of each input, as DINOv2 does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def resample_grid(pos: torch.Tensor, *, src: tuple[int, int], dst: tuple[int, int]) -> torch.Tensor:
    """Resample patch position embeddings from grid ``src`` to ``dst``.

    Shapes: pos (1, src_h * src_w, D) -> (1, dst_h * dst_w, D). Returns ``pos`` itself when the grids
    match, so outputs at the native size are bit-identical to a model without interpolation.
    """
    if src == dst:
        return pos
    dim = pos.shape[-1]
    grid = pos.reshape(1, src[0], src[1], dim).permute(0, 3, 1, 2)
    # bicubic in fp32: bf16 interpolation of a small table costs accuracy and saves nothing
    out = F.interpolate(grid.float(), size=dst, mode="bicubic", align_corners=False)
    return out.to(pos.dtype).permute(0, 2, 3, 1).reshape(1, dst[0] * dst[1], dim)


def resize_table(weight: torch.Tensor, *, grid: tuple[int, int], num_prefix: int = 1) -> torch.Tensor:
    """A stored position table (1, num_prefix + n, D) of a square grid, resampled to ``grid``.

    What a later, higher-resolution stage does once when it starts from a low-resolution
    checkpoint (the prefix rows, the CLS position, are kept). Returns ``weight`` if it fits already.
    """
    n = weight.shape[1] - num_prefix
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"position table of {n} patch rows is not a square grid")
    patches = resample_grid(weight[:, num_prefix:], src=(side, side), dst=grid)
    return weight if (side, side) == grid else torch.cat([weight[:, :num_prefix], patches], dim=1)


class PosEmbed(nn.Module):
    """Position table for ``num_prefix`` leading tokens (the CLS token) plus a ``grid`` of patches.

    Register tokens get no position (DINOv2 with registers): they are added after this embedding.
    """

    def __init__(self, *, grid: tuple[int, int], embed_dim: int, num_prefix: int = 1) -> None:
        super().__init__()
        self.grid = grid
        self.num_prefix = num_prefix
        self.weight = nn.Parameter(torch.empty(1, num_prefix + grid[0] * grid[1], embed_dim))
        self.reset_parameters()

    def forward(self, x: torch.Tensor, *, grid: tuple[int, int]) -> torch.Tensor:
        """Add positions to ``x`` (B, num_prefix + h*w, D) whose patch tokens lie on ``grid``."""
        prefix, patches = self.weight[:, : self.num_prefix], self.weight[:, self.num_prefix :]
        patches = resample_grid(patches, src=self.grid, dst=grid)
        return x + torch.cat([prefix, patches], dim=1).to(x.dtype)

    def reset_parameters(self) -> None:
        """Truncated normal, std 0.02 (DINOv2 / timm)."""
        nn.init.trunc_normal_(self.weight, std=0.02)
