"""Patch embedding: a strided convolution that turns a 1-channel slice into a grid of tokens."""

from __future__ import annotations

import torch
from torch import nn


class PatchEmbed(nn.Module):
    """Split an image into non-overlapping ``patch_size`` squares and project each to ``embed_dim``.

    Shapes: (B, C, H, W) -> (B, H/p * W/p, D), row-major over the patch grid. H and W must be
    multiples of the patch size: crops are drawn at such sizes, and a silent border drop would
    misalign the foreground map with the tokens.
    """

    def __init__(self, *, patch_size: int = 16, in_chans: int = 1, embed_dim: int = 768) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid (rows, cols) for an input of ``height`` x ``width`` pixels."""
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(f"input size {height}x{width} is not a multiple of the patch size {p}")
        return height // p, width // p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.grid(x.shape[-2], x.shape[-1])
        return self.proj(x).flatten(2).transpose(1, 2)

    def reset_parameters(self) -> None:
        """PyTorch's default conv init (what DINOv2 keeps for the patch embedding)."""
        self.proj.reset_parameters()
