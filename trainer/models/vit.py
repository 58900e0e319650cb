"""One Vision Transformer for 1-channel CT/MR slices, with named sizes.

The backbone of the Curia-2 recipe (RECIPE.md, "Architecture sizes"): DINOv2's ViT with a CLS
token, optional register tokens, LayerScale, stochastic depth, learned position embeddings
resampled to any input size, attention through SDPA and a learnable mask token that replaces the
patch embeddings iBOT masks out. Sizes are small factories over the one class (``vit_base`` etc.),
collected in :data:`VIT_SIZES` so tests and configs can name them.

Large sizes are built on the meta device and initialised after sharding::

    with torch.device("meta"):
        model = vit_giant()
    model.to_empty(device="cuda")   # or after fully_shard()
    model.init_weights()
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import Attention
from .drop_path import DropPath
from .layer_scale import LayerScale
from .mlp import Mlp, SwiGLU
from .patch_embed import PatchEmbed
from .pos_embed import PosEmbed

FFN_LAYERS: dict[str, type[nn.Module]] = {"mlp": Mlp, "swiglu": SwiGLU}


class Features(NamedTuple):
    """Final-norm outputs of the backbone. B images, R registers, N patches, D width."""

    cls: torch.Tensor  # (B, D)
    registers: torch.Tensor  # (B, R, D)
    patches: torch.Tensor  # (B, N, D), row-major over the patch grid


class Block(nn.Module):
    """Pre-norm transformer block: x + ls1(attn(norm1 x)), then x + ls2(ffn(norm2 x)), each drop-pathed."""

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int,
        mlp_ratio: float = 4.0,
        ffn_layer: type[nn.Module] = Mlp,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        ffn_bias: bool = True,
        layerscale_init: float | None = 1e-5,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias)
        self.ls1 = LayerScale(dim, init_values=layerscale_init) if layerscale_init else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = ffn_layer(dim, hidden_features=int(dim * mlp_ratio), bias=ffn_bias)
        self.ls2 = LayerScale(dim, init_values=layerscale_init) if layerscale_init else nn.Identity()
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


class VisionTransformer(nn.Module):
    """ViT on (B, in_chans, H, W) slices; H and W any multiple of ``patch_size``.

    ``img_size`` only sets the grid the position table is stored at (the pre-training
    resolution); other sizes are served by bicubic resampling of that table.
    """

    def __init__(
        self,
        *,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 1,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        ffn_layer: str | type[nn.Module] = "mlp",
        qkv_bias: bool = True,
        proj_bias: bool = True,
        ffn_bias: bool = True,
        num_registers: int = 0,
        layerscale_init: float | None = 1e-5,
        drop_path_rate: float = 0.0,
        drop_path_uniform: bool = True,
        checkpoint_blocks: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(ffn_layer, str):
            if ffn_layer not in FFN_LAYERS:
                raise ValueError(f"unknown ffn_layer {ffn_layer!r}; valid: {', '.join(FFN_LAYERS)}")
            ffn_layer = FFN_LAYERS[ffn_layer]
        self.embed_dim = embed_dim
        self.num_registers = num_registers
        self.checkpoint_blocks = checkpoint_blocks
        self.patch_embed = PatchEmbed(patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim)
        self.cls_token = nn.Parameter(torch.empty(1, 1, embed_dim))
        self.register_tokens = (
            nn.Parameter(torch.empty(1, num_registers, embed_dim)) if num_registers else None
        )
        self.mask_token = nn.Parameter(torch.empty(1, embed_dim))
        self.pos_embed = PosEmbed(grid=self.patch_embed.grid(img_size, img_size), embed_dim=embed_dim)
        # DINOv2 uses the same rate in every block; timm's linear ramp is the alternative
        rates = (
            [drop_path_rate] * depth
            if drop_path_uniform
            else torch.linspace(0, drop_path_rate, depth).tolist()
        )
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                ffn_layer=ffn_layer,
                qkv_bias=qkv_bias,
                proj_bias=proj_bias,
                ffn_bias=ffn_bias,
                layerscale_init=layerscale_init,
                drop_path=rate,
            )
            for rate in rates
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.init_weights()

    @property
    def patch_size(self) -> int:
        return self.patch_embed.patch_size

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @torch.no_grad()
    def init_weights(self) -> None:
        """(Re)initialise every parameter: call after ``to_empty`` when built on the meta device.

        DINOv2's scheme: linear weights truncated normal (std 0.02) with zero biases, CLS and
        register tokens N(0, 1e-6), mask token 0, LayerNorm (1, 0), LayerScale ``init_values``,
        position table truncated normal, patch embedding PyTorch's conv default.
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm | PatchEmbed | PosEmbed | LayerScale):
                module.reset_parameters()
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        nn.init.zeros_(self.mask_token)

    def prepare_tokens(self, x: torch.Tensor, *, masks: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, H, W) -> (B, 1 + R + N, D): patch embeddings (masked ones replaced), CLS, registers.

        ``masks`` (B, N) bool marks the patches iBOT hides from the student.
        """
        grid = self.patch_embed.grid(x.shape[-2], x.shape[-1])
        x = self.patch_embed(x)
        if masks is not None:
            x = torch.where(masks.unsqueeze(-1), self.mask_token.to(x.dtype), x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.pos_embed(x, grid=grid)
        if self.register_tokens is not None:
            x = torch.cat([x[:, :1], self.register_tokens.expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)
        return x

    def forward_features(self, x: torch.Tensor, *, masks: torch.Tensor | None = None) -> Features:
        """Backbone outputs after the final LayerNorm, split into CLS, registers and patch tokens."""
        x = self.prepare_tokens(x, masks=masks)
        for block in self.blocks:
            if self.checkpoint_blocks and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        x = self.norm(x)
        r = 1 + self.num_registers
        return Features(cls=x[:, 0], registers=x[:, 1:r], patches=x[:, r:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> CLS embedding (B, D): what linear probes and the 2D track use."""
        return self.forward_features(x).cls


def _sized(defaults: dict[str, Any], overrides: dict[str, Any]) -> VisionTransformer:
    return VisionTransformer(**(defaults | overrides))


# Width / depth / heads from RECIPE.md's table; tiny and small (DeiT's) serve tests and CPU runs.
def vit_tiny(**kwargs: Any) -> VisionTransformer:
    """ViT-Ti: width 192, depth 12, 3 heads (~5.5M parameters). Keyword arguments override."""
    return _sized({"embed_dim": 192, "depth": 12, "num_heads": 3}, kwargs)


def vit_small(**kwargs: Any) -> VisionTransformer:
    """ViT-S: width 384, depth 12, 6 heads (~21M parameters). Keyword arguments override."""
    return _sized({"embed_dim": 384, "depth": 12, "num_heads": 6}, kwargs)


def vit_base(**kwargs: Any) -> VisionTransformer:
    """ViT-B: width 768, depth 12, 12 heads (~86M parameters). Keyword arguments override."""
    return _sized({"embed_dim": 768, "depth": 12, "num_heads": 12}, kwargs)


def vit_large(**kwargs: Any) -> VisionTransformer:
    """ViT-L: width 1024, depth 24, 16 heads (~303M parameters). Keyword arguments override."""
    return _sized({"embed_dim": 1024, "depth": 24, "num_heads": 16}, kwargs)


def vit_giant(**kwargs: Any) -> VisionTransformer:
    """ViT-g (DINOv2 "giant2"): width 1536, depth 40, 24 heads, SwiGLU hidden 4096 (~1.1B)."""
    return _sized({"embed_dim": 1536, "depth": 40, "num_heads": 24, "ffn_layer": "swiglu"}, kwargs)


VIT_SIZES: dict[str, Callable[..., VisionTransformer]] = {
    "vit_tiny": vit_tiny,
    "vit_small": vit_small,
    "vit_base": vit_base,
    "vit_large": vit_large,
    "vit_giant": vit_giant,
}
