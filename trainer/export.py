"""``radforge export``: a training checkpoint's teacher backbone as a standalone safetensors file.

Output folder (local path or object-store URI)::

    OUT/backbone.safetensors   the teacher ViT's weights (names as radforge.trainer.models.VisionTransformer;
                               the iBOT mask token and the heads are left out)
    OUT/config.json            {"format": "radforge-backbone", "format_version": 1,
                                "architecture": {...}, "preprocessing": {...},
                                "weights": {"file", "sha256", "state_hash"}, "source": {...}}

``config.json`` is written last: a folder without it is an export that did not finish.
:mod:`radforge.trainer.eval.backbone` reads the pair with torch and safetensors only.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

import torch
import yaml

from radforge.storage import Location, exists, resolve, write_bytes_atomic
from radforge.trainer import checkpoint as ckpt
from radforge.trainer.build import build_backbone
from radforge.trainer.config import RecipeConfig
from radforge.trainer.eval.backbone import (
    CONFIG,
    FORMAT,
    FORMAT_VERSION,
    WEIGHTS,
    BackboneSpec,
    FrozenBackbone,
    state_hash,
)
from radforge.trainer.models.mlp import SwiGLU
from radforge.trainer.models.vit import VisionTransformer

logger = logging.getLogger(__name__)

_TRAINING_ONLY = ("mask_token",)  # iBOT's learned mask embedding: never used on unmasked inputs


@dataclass(frozen=True)
class TeacherBackbone:
    """A checkpoint's teacher backbone, ready to export or evaluate."""

    spec: BackboneSpec
    state: dict[str, torch.Tensor]  # weights, names as the standalone loader expects
    preprocessing: dict[str, Any]  # input mapping the run trained with
    source: dict[str, Any]  # checkpoint URI and step

    def frozen(self) -> FrozenBackbone:
        """The standalone frozen module with these weights."""
        model = FrozenBackbone(self.spec, preprocessing=self.preprocessing)
        return model.load_state(self.state, where=str(self.source["checkpoint"]))


@dataclass(frozen=True)
class ExportResult:
    """Where an export went."""

    folder: str
    step: int
    sha256: str


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
        layerscale=not isinstance(block.ls1, torch.nn.Identity),
    )


def vit_from_spec(spec: BackboneSpec) -> VisionTransformer:
    """A freshly initialised trainer ViT of ``spec``'s shape (DINOv2 init; seed torch first)."""
    # SwiGLU stores 2/3 of the nominal width rounded up to 8: invert that rule for the nominal ratio
    nominal = spec.ffn_hidden * 1.5 if spec.ffn == "swiglu" else spec.ffn_hidden
    return VisionTransformer(
        img_size=spec.img_size,
        patch_size=spec.patch_size,
        in_chans=spec.in_chans,
        embed_dim=spec.embed_dim,
        depth=spec.depth,
        num_heads=spec.num_heads,
        mlp_ratio=nominal / spec.embed_dim,
        ffn_layer=spec.ffn,
        qkv_bias=spec.qkv_bias,
        proj_bias=spec.proj_bias,
        ffn_bias=spec.ffn_bias,
        num_registers=spec.num_registers,
        layerscale_init=1e-5 if spec.layerscale else None,
    )


def random_backbone(
    spec: BackboneSpec, *, seed: int = 0, preprocessing: dict[str, Any] | None = None
) -> FrozenBackbone:
    """A random-init backbone of ``spec``'s shape, initialised as training starts (the baseline)."""
    torch.manual_seed(seed)
    vit = vit_from_spec(spec)
    state = {k: v for k, v in vit.state_dict().items() if k not in _TRAINING_ONLY}
    model = FrozenBackbone(spec, preprocessing=preprocessing)
    return model.load_state(state, where=f"random init (seed {seed})")


def _recipe(saved: dict[str, Any], *, where: str) -> RecipeConfig:
    try:
        tree = yaml.safe_load(saved["config"])
        return RecipeConfig.model_validate(tree["recipe"])
    except Exception as err:  # missing key, bad YAML, a recipe this version does not understand
        raise ckpt.CheckpointError(
            f"checkpoint {where} has no usable run config ({type(err).__name__}: {err})"
        ) from err


def teacher_backbone(checkpoint: str) -> TeacherBackbone:
    """The teacher backbone of a checkpoint; :class:`CheckpointError` names a bad or foreign one.

    ``checkpoint``: a run output, a step folder or a ``state.pt``
    (:func:`radforge.trainer.checkpoint.resolve_checkpoint`), plain or sharded (FSDP2 / DCP: the teacher is
    read whole from the shards, without a process group).
    """
    ref = ckpt.resolve_checkpoint(checkpoint)
    where = ref.location.join(ckpt.STATE).uri
    saved = ckpt.load(ref)
    recipe = _recipe(saved, where=where)
    state = ckpt.load_teacher_backbone(ref, saved=saved)
    with torch.device("meta"):
        vit = build_backbone(recipe, drop_path_rate=0.0)
    try:
        vit.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        raise ckpt.CheckpointError(
            f"checkpoint {where}: its teacher does not match the ViT its own config describes: {err}"
        ) from err
    spec = spec_of(vit)
    return TeacherBackbone(
        spec=spec,
        state={k: v.contiguous() for k, v in state.items() if k not in _TRAINING_ONLY},
        preprocessing={"ct_air_hu": recipe.intensity.ct_air_hu, "image_size": recipe.crops.global_size},
        source={"checkpoint": ref.location.uri, "step": int(saved["step"]), "network": "teacher"},
    )


def save_backbone(
    folder_uri: str,
    *,
    spec: BackboneSpec,
    state: dict[str, torch.Tensor],
    preprocessing: dict[str, Any],
    source: dict[str, Any],
) -> str:
    """Write weights then ``config.json`` (the commit point) under ``folder_uri``; returns the sha256."""
    from safetensors.torch import save as save_safetensors

    folder: Location = resolve(folder_uri)
    data = save_safetensors({k: v.contiguous() for k, v in state.items()}, metadata={"format": FORMAT})
    digest = hashlib.sha256(data).hexdigest()
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": spec.to_dict(),
        "preprocessing": preprocessing,
        "weights": {"file": WEIGHTS, "sha256": digest, "state_hash": state_hash(state)},
        "source": source,
    }
    write_bytes_atomic(folder.join(WEIGHTS), data)
    write_bytes_atomic(folder.join(CONFIG), json.dumps(config, indent=2).encode())
    return digest


def export_backbone(checkpoint: str, out: str) -> ExportResult:
    """Write ``checkpoint``'s teacher backbone to ``out`` (weights first, ``config.json`` last)."""
    b = teacher_backbone(checkpoint)
    digest = save_backbone(out, spec=b.spec, state=b.state, preprocessing=b.preprocessing, source=b.source)
    logger.info("exported %s (step %d) -> %s", b.source["checkpoint"], b.source["step"], out)
    return ExportResult(folder=resolve(out).uri, step=int(b.source["step"]), sha256=digest)


def load_for_eval(path: str) -> FrozenBackbone:
    """A frozen backbone from an export folder or from a checkpoint (run output, step folder, state.pt)."""
    from radforge.trainer.eval.backbone import load_backbone

    loc = resolve(path)
    if loc.is_local and exists(loc.join(CONFIG)) and not exists(loc.join(ckpt.STATE)):
        return load_backbone(loc.path)
    return teacher_backbone(path).frozen()
