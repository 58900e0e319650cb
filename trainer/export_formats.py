"""The Hugging Face and timm formats of an export: radforge's ViT under their parameter names.

Both are written from the state dict and a config mapping, without importing transformers or timm
(only the tests load them). What a library cannot express is refused with :class:`ExportError`
before anything is written.

**Hugging Face** (``hf/``): a folder ``transformers.AutoModel`` loads. radforge's ViT is DINOv2's,
so transformers' ``Dinov2Model`` (``Dinov2WithRegistersModel`` with register tokens) computes the
same features once the weights are renamed: the fused qkv projection split into query/key/value,
LayerScale's ``gamma`` as ``lambda1``, SwiGLU's ``w12``/``w3`` as
``weights_in``/``weights_out`` (``use_swiglu_ffn``; transformers derives the same hidden width from
``mlp_ratio``), LayerNorm eps 1e-6, GELU (exact) MLP. Refused: attention output or FFN layers
without bias (transformers always has them). Without LayerScale, ``lambda1`` is all ones.

The image processor (``preprocessor_config.json`` + ``image_processor.py`` + ``preprocessing.py``, the
latter a verbatim copy of radforge's) needs ``trust_remote_code=True``: no stock processor z-scores
each image on its own statistics.

Position tables at another resolution: ``Dinov2Model`` resamples bicubically like radforge;
``Dinov2WithRegistersModel`` resamples with antialiasing (PIL's cubic), so its features differ from
radforge's at any input size but the stored one (``image_size``).

**timm** (``timm/``): ``timm.create_model("local-dir:OUT/timm", pretrained=True)`` builds a
``VisionTransformer`` from ``config.json`` (``architecture`` names a registered ViT with the right
FFN class, ``model_args`` sets every size and option, ``pretrained_cfg`` describes the input) and
loads ``model.safetensors``. timm's names are radforge's but for ``pos_embed``, ``reg_token`` and
the SwiGLU (timm's ``SwiGLUPacked``: ``fc1``/``fc2``). Positions follow timm's DINOv2-with-registers
layout (``no_embed_class``): the CLS position is folded into ``cls_token`` (a constant sum, the same
computation) and ``pos_embed`` holds the patch grid only. timm resamples positions with
antialiasing, so, as for transformers with registers, features equal radforge's at the stored size.

**The Hub** (:func:`push_to_hub`, ``radforge export --push-to-hub REPO``): the whole export folder
as one commit to a model repo, through huggingface_hub (``create_repo`` + ``upload_folder``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from radforge.storage import Location, resolve, write_bytes_atomic
from radforge.trainer.models.backbone import BackboneSpec
from radforge.trainer.models.mlp import swiglu_hidden

HF_WEIGHTS = "model.safetensors"  # the file name both transformers and timm look for
PROCESSOR_CONFIG = "preprocessor_config.json"
PROCESSOR_FILES = ("image_processor.py", "preprocessing.py")  # copied from radforge.trainer.models


class ExportError(ValueError):
    """A backbone cannot be written in a requested format (the message names the format and why)."""


def mlp_ratio_for(spec: BackboneSpec, *, fmt: str, width_of: Callable[[int], int], nominal: float) -> float:
    """An ``mlp_ratio`` whose ``width_of(int(embed_dim * ratio))`` is ``spec.ffn_hidden``.

    Both libraries derive the FFN width from the ratio with an ``int()``: the exact quotient can
    round one below, half a unit more cannot.
    """
    for ratio in (nominal / spec.embed_dim, (nominal + 0.5) / spec.embed_dim):
        if width_of(int(spec.embed_dim * ratio)) == spec.ffn_hidden:
            return ratio
    raise ExportError(f"{fmt}: no mlp_ratio gives an FFN width of {spec.ffn_hidden}")


def _no_bias_refused(spec: BackboneSpec, *, fmt: str, fields: tuple[str, ...]) -> None:
    for field in fields:
        if not getattr(spec, field):
            raise ExportError(f"{fmt}: {field}=False has no equivalent there (its layers always have a bias)")


def hf_mlp_ratio(spec: BackboneSpec) -> float:
    """Transformers' ``mlp_ratio``: the nominal width (SwiGLU: 3/2 of the stored), re-rounded by its rule."""
    if spec.ffn == "swiglu":
        return mlp_ratio_for(spec, fmt="hf", width_of=swiglu_hidden, nominal=spec.ffn_hidden * 1.5)
    return mlp_ratio_for(spec, fmt="hf", width_of=lambda w: w, nominal=spec.ffn_hidden)


def hf_config(spec: BackboneSpec) -> dict[str, Any]:
    """``config.json`` for ``Dinov2Model`` / ``Dinov2WithRegistersModel`` of ``spec``'s shape."""
    _no_bias_refused(spec, fmt="hf", fields=("proj_bias", "ffn_bias"))
    registers = spec.num_registers > 0
    config: dict[str, Any] = {
        "architectures": ["Dinov2WithRegistersModel" if registers else "Dinov2Model"],
        "model_type": "dinov2_with_registers" if registers else "dinov2",
        "hidden_size": spec.embed_dim,
        "num_hidden_layers": spec.depth,
        "num_attention_heads": spec.num_heads,
        "mlp_ratio": hf_mlp_ratio(spec),
        "use_swiglu_ffn": spec.ffn == "swiglu",
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "drop_path_rate": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-6,
        "image_size": spec.img_size,
        "patch_size": spec.patch_size,
        "num_channels": spec.in_chans,
        "qkv_bias": spec.qkv_bias,
        "layerscale_value": 1e-5 if spec.layerscale else 1.0,
        "torch_dtype": "float32",
    }
    if registers:
        config["num_register_tokens"] = spec.num_registers
    else:
        config["use_mask_token"] = True
    return config


def hf_state(spec: BackboneSpec, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Radforge ViT weights -> transformers Dinov2 names (the mask token zero: unused on unmasked input)."""
    d = spec.embed_dim
    out = {
        "embeddings.cls_token": state["cls_token"],
        "embeddings.mask_token": torch.zeros(1, d, dtype=state["cls_token"].dtype),
        "embeddings.position_embeddings": state["pos_embed.weight"],
        "embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
        "layernorm.weight": state["norm.weight"],
        "layernorm.bias": state["norm.bias"],
    }
    if spec.num_registers:
        out["embeddings.register_tokens"] = state["register_tokens"]
    ffn = {"fc1": "fc1", "fc2": "fc2"} if spec.ffn == "mlp" else {"w12": "weights_in", "w3": "weights_out"}
    for i in range(spec.depth):
        src, dst = f"blocks.{i}.", f"encoder.layer.{i}."
        for part in ("weight", "bias"):
            out[f"{dst}norm1.{part}"] = state[f"{src}norm1.{part}"]
            out[f"{dst}norm2.{part}"] = state[f"{src}norm2.{part}"]
            out[f"{dst}attention.output.dense.{part}"] = state[f"{src}attn.proj.{part}"]
            for ours, theirs in ffn.items():
                out[f"{dst}mlp.{theirs}.{part}"] = state[f"{src}mlp.{ours}.{part}"]
            if part == "weight" or spec.qkv_bias:
                q, k, v = state[f"{src}attn.qkv.{part}"].chunk(3, dim=0)  # rows: [q; k; v], heads contiguous
                out[f"{dst}attention.attention.query.{part}"] = q
                out[f"{dst}attention.attention.key.{part}"] = k
                out[f"{dst}attention.attention.value.{part}"] = v
        for n in (1, 2):
            gamma = state.get(f"{src}ls{n}.gamma")
            out[f"{dst}layer_scale{n}.lambda1"] = gamma if gamma is not None else torch.ones(d)
    return {k: v.contiguous() for k, v in out.items()}


def _write_json(loc: Location, obj: dict[str, Any]) -> None:
    write_bytes_atomic(loc, json.dumps(obj, indent=2).encode())


def _write_weights(folder: Location, state: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
    """``model.safetensors`` (metadata format "pt", which transformers requires), then ``config.json``."""
    from safetensors.torch import save as save_safetensors

    write_bytes_atomic(folder.join(HF_WEIGHTS), save_safetensors(state, metadata={"format": "pt"}))
    _write_json(folder.join("config.json"), config)


def processor_config(preprocessing: dict[str, Any]) -> dict[str, Any]:
    """``preprocessor_config.json``: radforge's input mapping behind ``AutoImageProcessor``."""
    return {
        "image_processor_type": "RadforgeImageProcessor",
        "auto_map": {"AutoImageProcessor": "image_processor.RadforgeImageProcessor"},
        "image_size": int(preprocessing["image_size"]),
        "ct_air_hu": float(preprocessing["ct_air_hu"]),
        "modality": "CT",
        "window": "raw",
    }


def write_hf(
    folder: Location,
    *,
    spec: BackboneSpec,
    state: dict[str, torch.Tensor],
    preprocessing: dict[str, Any],
    sources: dict[str, bytes],
) -> None:
    """Write the transformers folder: processor files, weights, then ``config.json`` (the commit point)."""
    config = hf_config(spec)  # refuses what transformers cannot express before anything is written
    for name in PROCESSOR_FILES:
        write_bytes_atomic(folder.join(name), sources[name])
    _write_json(folder.join(PROCESSOR_CONFIG), processor_config(preprocessing))
    _write_weights(folder, hf_state(spec, state), config)


# A registered timm ViT per FFN: model_args override every size; the name only picks the FFN class
# (timm's DINOv2 giant is the registered model with SwiGLUPacked and SiLU).
TIMM_ARCHITECTURES = {"mlp": "vit_base_patch16_224", "swiglu": "vit_giant_patch14_dinov2"}


def timm_config(spec: BackboneSpec, preprocessing: dict[str, Any]) -> dict[str, Any]:
    """Timm's ``config.json``: architecture, model_args (every shape option) and pretrained_cfg."""
    _no_bias_refused(spec, fmt="timm", fields=("ffn_bias",))
    if spec.ffn == "swiglu":  # SwiGLUPacked's fc1 holds both halves: hidden_features = 2 x the width
        ratio = mlp_ratio_for(spec, fmt="timm", width_of=lambda w: w // 2, nominal=2 * spec.ffn_hidden)
    else:
        ratio = mlp_ratio_for(spec, fmt="timm", width_of=lambda w: w, nominal=spec.ffn_hidden)
    size = int(preprocessing["image_size"])
    model_args = {
        "img_size": spec.img_size,
        "patch_size": spec.patch_size,
        "in_chans": spec.in_chans,
        "embed_dim": spec.embed_dim,
        "depth": spec.depth,
        "num_heads": spec.num_heads,
        "mlp_ratio": ratio,
        "qkv_bias": spec.qkv_bias,
        "proj_bias": spec.proj_bias,
        "init_values": 1e-5 if spec.layerscale else None,
        "class_token": True,
        "reg_tokens": spec.num_registers,
        "no_embed_class": True,
        "dynamic_img_size": True,
        "global_pool": "token",
        "num_classes": 0,
    }
    pretrained_cfg = {
        "input_size": [spec.in_chans, size, size],
        "fixed_input_size": False,
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "crop_mode": "center",
        "mean": [0.0] * spec.in_chans,  # inputs are z-scored per image by radforge's preprocessing
        "std": [1.0] * spec.in_chans,
        "num_classes": 0,
    }
    return {
        "architecture": TIMM_ARCHITECTURES[spec.ffn],
        "num_classes": 0,
        "num_features": spec.embed_dim,
        "global_pool": "token",
        "model_args": model_args,
        "pretrained_cfg": pretrained_cfg,
        "radforge_preprocessing": dict(preprocessing),  # timm's PretrainedCfg has no field for it
    }


def timm_state(spec: BackboneSpec, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Radforge ViT weights -> timm ``VisionTransformer`` names (no_embed_class layout)."""
    pos = state["pos_embed.weight"]
    renamed = {"pos_embed.weight": "pos_embed", "register_tokens": "reg_token"}
    out: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        if name == "cls_token":
            out[name] = value + pos[:, :1]  # the CLS position folded in (timm adds none to prefix tokens)
        elif name == "pos_embed.weight":
            out["pos_embed"] = pos[:, 1:]
        else:
            name = renamed.get(name, name).replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2.")
            out[name] = value
    return {k: v.contiguous() for k, v in out.items()}


def write_timm(
    folder: Location, *, spec: BackboneSpec, state: dict[str, torch.Tensor], preprocessing: dict[str, Any]
) -> None:
    """Write the timm folder: weights, then ``config.json`` (the commit point)."""
    _write_weights(folder, timm_state(spec, state), timm_config(spec, preprocessing))


# --- the Hugging Face Hub ------------------------------------------------------------------------------

HUB_ENDPOINT_ENV = "HF_ENDPOINT"  # huggingface_hub's own variable, read here at call time


@dataclass(frozen=True)
class HubPush:
    """Where ``radforge export --push-to-hub`` put an export folder."""

    repo_id: str
    repo_url: str
    commit_url: str
    commit: str  # the commit's id on the Hub


def push_to_hub(folder: str, repo_id: str, *, private: bool = False, message: str | None = None) -> HubPush:
    """Upload an export folder (every format and README.md) to the Hub model repo ``repo_id`` as one commit.

    The repo is created when missing (``private`` then applies) and reused when it exists. The
    token is huggingface_hub's: ``HF_TOKEN``, else the one ``hf auth login`` stored; the endpoint
    ``HF_ENDPOINT`` (default the public Hub; huggingface_hub reads it when imported too, so set it
    before the process starts). Weights go through the Hub's LFS upload. Raises
    :class:`ExportError` naming what to fix (no token, refused, not a local folder); the token is
    never part of a message.
    """
    try:
        from huggingface_hub import HfApi, get_token
        from huggingface_hub.errors import HfHubHTTPError
    except ImportError as err:
        raise ExportError(
            f"--push-to-hub needs huggingface_hub ({err}): pip install 'radforge[hub]'"
        ) from err
    loc = resolve(folder)
    if not loc.is_local:
        raise ExportError(f"--push-to-hub uploads a local export folder; {folder!r} is not local")
    token = get_token()
    if not token:
        raise ExportError("--push-to-hub: no Hugging Face token: set HF_TOKEN or run `hf auth login`")
    endpoint = os.environ.get(HUB_ENDPOINT_ENV) or None
    api = HfApi(endpoint=endpoint, token=token)
    try:
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(
            folder_path=loc.path,
            repo_id=repo_id,
            repo_type="model",
            commit_message=message or "radforge export",
        )
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else "no response"
        server = (err.server_message or str(err)).splitlines()[0][:300]
        raise ExportError(f"--push-to-hub {repo_id} at {api.endpoint}: HTTP {status}: {server}") from err
    return HubPush(repo_id=repo_id, repo_url=str(url), commit_url=info.commit_url, commit=info.oid)
