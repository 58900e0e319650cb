"""A frozen backbone from a native export: the export format, its reader and the frozen ViT.

``radforge export`` writes ``backbone.safetensors`` (the teacher's weights, names as
:class:`~.vit.VisionTransformer`, the training-only mask token left out) and ``config.json`` (the
architecture as a :class:`BackboneSpec`, the input mapping, the weights' sha256), and copies this
package next to them. So the same module files load an export inside radforge
(``radforge.trainer.models``) and outside it (the copied ``radforge_vit`` package, torch, numpy and
safetensors only)::

    from radforge_vit import load_backbone
    model = load_backbone("OUT/native")                     # frozen, eval mode, on the CPU
    x = model.preprocess(slice_hu, modality="CT")           # (1, S, S): clipped, z-scored, resized
    f = model(x[None])                                      # f.cls (B, D), f.patches (B, N, D)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .mlp import SwiGLU
from .preprocessing import preprocess
from .vit import Features, VisionTransformer

FORMAT = "radforge-backbone"
FORMAT_VERSION = 1
WEIGHTS = "backbone.safetensors"
CONFIG = "config.json"
NATIVE = "native"  # the native format's subfolder in a `radforge export` folder
TRAINING_ONLY = ("mask_token",)  # iBOT's learned mask embedding: never used on unmasked inputs


class BackboneLoadError(RuntimeError):
    """An export is missing, corrupt or not a radforge backbone; the message names the file."""


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


def spec_of(vit: VisionTransformer) -> BackboneSpec:
    """The architecture of a built ViT, read off its modules."""
    block: Any = vit.blocks[0]
    mlp: Any = block.mlp
    swiglu = isinstance(mlp, SwiGLU)
    hidden = mlp.w3.in_features if swiglu else mlp.fc1.out_features
    return BackboneSpec(
        img_size=vit.pos_embed.grid[0] * vit.patch_size,
        patch_size=vit.patch_size,
        in_chans=vit.patch_embed.proj.in_channels,
        embed_dim=vit.embed_dim,
        depth=vit.depth,
        num_heads=block.attn.num_heads,
        ffn="swiglu" if swiglu else "mlp",
        ffn_hidden=int(hidden),
        qkv_bias=block.attn.qkv.bias is not None,
        proj_bias=block.attn.proj.bias is not None,
        ffn_bias=(mlp.w3.bias if swiglu else mlp.fc2.bias) is not None,
        num_registers=vit.num_registers,
        layerscale=not isinstance(block.ls1, nn.Identity),
    )


def vit_kwargs(spec: BackboneSpec) -> dict[str, Any]:
    """Keyword arguments of :class:`VisionTransformer` that build ``spec``'s shape."""
    # SwiGLU stores 2/3 of the nominal width rounded up to 8: invert that rule for the nominal ratio
    nominal = spec.ffn_hidden * 1.5 if spec.ffn == "swiglu" else spec.ffn_hidden
    return {
        "img_size": spec.img_size,
        "patch_size": spec.patch_size,
        "in_chans": spec.in_chans,
        "embed_dim": spec.embed_dim,
        "depth": spec.depth,
        "num_heads": spec.num_heads,
        "mlp_ratio": nominal / spec.embed_dim,
        "ffn_layer": spec.ffn,
        "qkv_bias": spec.qkv_bias,
        "proj_bias": spec.proj_bias,
        "ffn_bias": spec.ffn_bias,
        "num_registers": spec.num_registers,
        "layerscale_init": 1e-5 if spec.layerscale else None,
    }


def vit_from_spec(spec: BackboneSpec) -> VisionTransformer:
    """A freshly initialised ViT of ``spec``'s shape (DINOv2 init; seed torch first)."""
    return VisionTransformer(**vit_kwargs(spec))


def state_hash(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of a state dict: the identity of a set of weights."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class FrozenBackbone(VisionTransformer):
    """The ViT for frozen features: (B, C, H, W) -> :class:`Features`, eval mode, no gradients.

    The training class itself (same forward, same parameter names) without the mask token.
    H and W may be any multiple of the patch size; positions are resampled from the stored grid.
    ``preprocessing`` holds the input mapping the backbone was trained with (see :meth:`preprocess`).
    """

    def __init__(self, spec: BackboneSpec, *, preprocessing: dict[str, Any] | None = None) -> None:
        super().__init__(**vit_kwargs(spec))
        for name in TRAINING_ONLY:
            self.register_parameter(name, None)
        self.spec = spec
        self.preprocessing = {"ct_air_hu": -1000.0, "image_size": spec.img_size, **(preprocessing or {})}
        self.requires_grad_(False)
        self.eval()
        self.weights_hash = ""  # set by load_state
        self.source: dict[str, Any] = {}  # where the weights came from (an export's config.json "source")

    @classmethod
    def from_state(
        cls,
        spec: BackboneSpec,
        state: dict[str, torch.Tensor],
        *,
        where: str,
        preprocessing: dict[str, Any] | None,
    ) -> FrozenBackbone:
        """The backbone holding ``state`` itself (strict; :class:`BackboneLoadError` names ``where``).

        Built on the meta device: no random init runs (fast for large sizes, and torch's global
        random state is left alone).
        """
        with torch.device("meta"):
            model = cls(spec, preprocessing=preprocessing)
        return model.load_state(state, where=where, assign=True)

    def load_state(
        self, state: dict[str, torch.Tensor], *, where: str, assign: bool = False
    ) -> FrozenBackbone:
        """Load weights (strict); raises :class:`BackboneLoadError` naming ``where`` on any mismatch."""
        try:
            self.load_state_dict(state, strict=True, assign=assign)
        except RuntimeError as err:
            raise BackboneLoadError(
                f"{where}: weights do not fit the architecture in its config: {err}"
            ) from err
        self.weights_hash = state_hash(state)
        return self

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> Features:  # type: ignore[override]
        """(B, C, H, W) -> CLS, register and patch tokens after the final LayerNorm."""
        return self.forward_features(x)

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


def native_folder(path: str | Path) -> Path:
    """The folder holding a native export's ``config.json``, given it, a file in it or the export's root."""
    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    if not (folder / CONFIG).is_file() and (folder / NATIVE / CONFIG).is_file():
        folder = folder / NATIVE
    return folder


def load_backbone(path: str | Path, *, device: str | torch.device = "cpu") -> FrozenBackbone:
    """The frozen backbone of an export: its root, its ``native/`` folder, or a file in that folder."""
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    folder = native_folder(path)
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
    model = FrozenBackbone.from_state(
        spec, state, where=str(weights_path), preprocessing=cfg.get("preprocessing")
    )
    model.source = dict(cfg.get("source") or {})
    return model.to(device)
