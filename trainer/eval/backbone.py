"""A frozen radforge backbone from an export: one file that needs only torch and safetensors.

``radforge export CHECKPOINT OUT`` writes ``OUT/backbone.safetensors`` (the teacher ViT's weights)
and ``OUT/config.json`` (its shape and input mapping). This module reads them back without any
other radforge code: copy it next to your evaluation code and ::

    from backbone import load_backbone
    model = load_backbone("OUT")                      # frozen, eval mode, on the CPU
    x = model.preprocess(slice_hu, modality="CT")     # (1, S, S): clipped, z-scored, resized
    f = model(x[None])                                # f.cls (B, D), f.patches (B, N, D)

The network is the same computation as ``radforge.trainer.models.VisionTransformer`` (pre-norm blocks,
LayerScale, SDPA attention, learned positions resampled bicubically), with the same parameter
names, so its features equal the teacher's (``tests/trainer/test_export.py`` checks it).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FORMAT = "radforge-backbone"
FORMAT_VERSION = 1
WEIGHTS = "backbone.safetensors"
CONFIG = "config.json"
ZSCORE_EPS = 1e-6  # the released Curia-2 processor's epsilon


class BackboneLoadError(RuntimeError):
    """An export is missing, corrupt or not a radforge backbone; the message names the file."""


class Features(NamedTuple):
    """Final-norm outputs. B images, R registers, N patches (row-major grid), D width."""

    cls: torch.Tensor  # (B, D)
    registers: torch.Tensor  # (B, R, D)
    patches: torch.Tensor  # (B, N, D)


@dataclass(frozen=True)
class BackboneSpec:
    """The shape of a ViT backbone: everything needed to rebuild it (no training options)."""

    img_size: int  # grid the position table is stored at (img_size / patch_size per side)
    patch_size: int
    in_chans: int
    embed_dim: int
    depth: int
    num_heads: int
    ffn: str  # "mlp" (GELU) or "swiglu"
    ffn_hidden: int  # actual hidden width of the FFN
    qkv_bias: bool
    proj_bias: bool
    ffn_bias: bool
    num_registers: int
    layerscale: bool

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values."""
        return asdict(self)

    @classmethod
    def from_dict(cls, obj: dict[str, Any], *, where: str) -> BackboneSpec:
        """Validate an ``architecture`` mapping; raises :class:`BackboneLoadError` naming ``where``."""
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in obj]
        if missing:
            raise BackboneLoadError(f"{where}: architecture lacks {', '.join(missing)}")
        spec = cls(**{n: obj[n] for n in names})
        if spec.ffn not in ("mlp", "swiglu"):
            raise BackboneLoadError(f"{where}: ffn {spec.ffn!r} is not one of mlp, swiglu")
        return spec


def state_hash(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of a state dict: the identity of a set of weights."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class _Attention(nn.Module):
    def __init__(self, dim: int, *, num_heads: int, qkv_bias: bool, proj_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class _Mlp(nn.Module):
    def __init__(self, dim: int, *, hidden: int, bias: bool) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _SwiGLU(nn.Module):
    def __init__(self, dim: int, *, hidden: int, bias: bool) -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden, bias=bias)
        self.w3 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class _LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class _PatchEmbed(nn.Module):
    def __init__(self, *, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class _PosEmbed(nn.Module):
    def __init__(self, *, grid: tuple[int, int], embed_dim: int) -> None:
        super().__init__()
        self.grid = grid
        self.weight = nn.Parameter(torch.zeros(1, 1 + grid[0] * grid[1], embed_dim))

    def forward(self, x: torch.Tensor, *, grid: tuple[int, int]) -> torch.Tensor:
        prefix, patches = self.weight[:, :1], self.weight[:, 1:]
        if grid != self.grid:
            dim = patches.shape[-1]
            table = patches.reshape(1, self.grid[0], self.grid[1], dim).permute(0, 3, 1, 2)
            table = F.interpolate(table.float(), size=grid, mode="bicubic", align_corners=False)
            patches = table.to(patches.dtype).permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], dim)
        return x + torch.cat([prefix, patches], dim=1).to(x.dtype)


class _Block(nn.Module):
    def __init__(self, spec: BackboneSpec) -> None:
        super().__init__()
        d = spec.embed_dim
        self.norm1 = nn.LayerNorm(d, eps=1e-6)
        self.attn = _Attention(d, num_heads=spec.num_heads, qkv_bias=spec.qkv_bias, proj_bias=spec.proj_bias)
        self.ls1: nn.Module = _LayerScale(d) if spec.layerscale else nn.Identity()
        self.norm2 = nn.LayerNorm(d, eps=1e-6)
        ffn = _SwiGLU if spec.ffn == "swiglu" else _Mlp
        self.mlp = ffn(d, hidden=spec.ffn_hidden, bias=spec.ffn_bias)
        self.ls2: nn.Module = _LayerScale(d) if spec.layerscale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class FrozenBackbone(nn.Module):
    """A ViT for frozen-feature evaluation: (B, C, H, W) -> :class:`Features`, no gradients.

    H and W may be any multiple of the patch size; positions are resampled from the stored grid.
    ``preprocessing`` holds the input mapping the backbone was trained with (see :meth:`preprocess`).
    """

    def __init__(self, spec: BackboneSpec, *, preprocessing: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.preprocessing = {"ct_air_hu": -1000.0, "image_size": spec.img_size, **(preprocessing or {})}
        g = spec.img_size // spec.patch_size
        self.patch_embed = _PatchEmbed(
            patch_size=spec.patch_size, in_chans=spec.in_chans, embed_dim=spec.embed_dim
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, spec.embed_dim))
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, spec.num_registers, spec.embed_dim)) if spec.num_registers else None
        )
        self.pos_embed = _PosEmbed(grid=(g, g), embed_dim=spec.embed_dim)
        self.blocks = nn.ModuleList(_Block(spec) for _ in range(spec.depth))
        self.norm = nn.LayerNorm(spec.embed_dim, eps=1e-6)
        self.requires_grad_(False)
        self.eval()
        self.weights_hash = ""  # set by load_state

    def load_state(self, state: dict[str, torch.Tensor], *, where: str) -> FrozenBackbone:
        """Load weights (strict); raises :class:`BackboneLoadError` naming ``where`` on any mismatch."""
        try:
            self.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise BackboneLoadError(
                f"{where}: weights do not fit the architecture in its config: {err}"
            ) from err
        self.weights_hash = state_hash(state)
        return self

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> Features:
        """(B, C, H, W) -> CLS, register and patch tokens after the final LayerNorm."""
        p = self.spec.patch_size
        if x.shape[-2] % p or x.shape[-1] % p:
            raise ValueError(
                f"input size {x.shape[-2]}x{x.shape[-1]} is not a multiple of the patch size {p}"
            )
        grid = (x.shape[-2] // p, x.shape[-1] // p)
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.pos_embed(x, grid=grid)
        if self.register_tokens is not None:
            x = torch.cat([x[:, :1], self.register_tokens.expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        r = 1 + self.spec.num_registers
        return Features(cls=x[:, 0], registers=x[:, 1:r], patches=x[:, r:])

    forward_features = forward  # the name radforge.trainer.models.VisionTransformer uses

    def preprocess(
        self, image: np.ndarray | torch.Tensor, *, modality: str, window: str = "raw", size: int | None = None
    ) -> torch.Tensor:
        """A stored slice (H, W) -> network input (1, S, S), S = ``size`` or the training size."""
        return preprocess(
            image,
            modality=modality,
            window=window,
            size=int(size or self.preprocessing["image_size"]),
            ct_air_hu=float(self.preprocessing["ct_air_hu"]),
        )


def preprocess(
    image: np.ndarray | torch.Tensor,
    *,
    modality: str,
    window: str = "raw",
    size: int,
    ct_air_hu: float = -1000.0,
) -> torch.Tensor:
    """A stored slice (H, W) (int16 HU, uint8 window, uint16 MR) -> network input (1, size, size) float32.

    What training feeds the network: raw CT clipped below ``ct_air_hu``, every image z-scored on its
    own statistics (fp64 sums, eps 1e-6), then an antialiased bilinear resize to size x size.
    """
    x = torch.as_tensor(np.ascontiguousarray(image) if isinstance(image, np.ndarray) else image)
    if x.ndim != 2:
        raise ValueError(f"expected one 2D slice (H, W), got shape {tuple(x.shape)}")
    if modality == "CT" and window == "raw":
        x = x.clamp_min(int(ct_air_hu)) if not x.is_floating_point() else x.clamp_min(ct_air_hu)
    x = x.float()
    flat = x.reshape(-1)
    mean = flat.sum().double() / flat.numel()
    std = (torch.dot(flat, flat).double() / flat.numel() - mean * mean).clamp_min(0.0).sqrt()
    x = (x - mean.float()) / (std.float() + ZSCORE_EPS)
    if tuple(x.shape) != (size, size):
        x = F.interpolate(x[None, None], size=(size, size), mode="bilinear", antialias=True)[0, 0]
    return x[None]


def _read_config(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise BackboneLoadError(f"{path} does not exist: is this a `radforge export` folder?") from None
    except (OSError, ValueError) as err:
        raise BackboneLoadError(f"{path} is not valid JSON ({err})") from err
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise BackboneLoadError(f"{path} is not a {FORMAT} config (format={obj.get('format')!r})")
    if obj.get("format_version") != FORMAT_VERSION:
        raise BackboneLoadError(
            f"{path} has format_version {obj.get('format_version')!r}; this loader reads {FORMAT_VERSION}"
        )
    return obj


def load_backbone(path: str | Path, *, device: str | torch.device = "cpu") -> FrozenBackbone:
    """The frozen backbone of an export folder (or its config.json / backbone.safetensors)."""
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    config_path = folder / CONFIG
    cfg = _read_config(config_path)
    spec = BackboneSpec.from_dict(cfg.get("architecture") or {}, where=str(config_path))
    weights_path = folder / str(cfg.get("weights", {}).get("file", WEIGHTS))
    try:
        data = weights_path.read_bytes()
    except FileNotFoundError:
        raise BackboneLoadError(f"{weights_path} does not exist (named by {config_path})") from None
    expected = cfg.get("weights", {}).get("sha256")
    if expected and hashlib.sha256(data).hexdigest() != expected:
        raise BackboneLoadError(
            f"{weights_path} does not match the sha256 in {config_path}: corrupt or replaced"
        )
    try:
        state = load_safetensors(data)
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise BackboneLoadError(f"{weights_path} is not a readable safetensors file ({err})") from err
    model = FrozenBackbone(spec, preprocessing=cfg.get("preprocessing"))
    return model.load_state(state, where=str(weights_path)).to(device)
