"""AdamW parameter groups: layer-wise lr decay, a slower patch embedding, no decay on norms and biases.

DINOv2's rules (RECIPE.md, "DINOv2 defaults"): with L blocks, the patch embedding, position table
and tokens sit at layer 0, block i at layer i + 1, the final norm and the heads at layer L + 1; a
parameter at layer l gets lr x decay^(L + 1 - l). The patch embedding's lr is further multiplied
by 0.2. Biases, norms and LayerScale gains get no weight decay. The prototype layer
(``last_layer``) is marked so it can be frozen at the start of training. Parameters with equal
multipliers share a group, so the optimizer sees a handful of groups (one per layer) not hundreds.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

_LAYER0 = ("pos_embed", "patch_embed", "mask_token", "cls_token", "register_tokens")


def layer_id(name: str, *, depth: int) -> int:
    """Layer index of a backbone parameter named ``name`` (relative to the backbone), 0..depth+1."""
    if name.startswith(_LAYER0):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def param_groups(
    network: nn.Module, *, depth: int, layerwise_decay: float = 0.9, patch_embed_lr_mult: float = 0.2
) -> list[dict[str, Any]]:
    """Optimizer groups for a :class:`radforge.trainer.heads.Network`, one per distinct multiplier set.

    Each group carries ``lr_multiplier``, ``wd_multiplier`` and ``last_layer``, which
    :func:`apply_schedule` reads every step.
    """
    groups: dict[tuple[float, float, bool], dict[str, Any]] = {}
    for name, param in network.named_parameters():
        if not param.requires_grad:
            continue
        if name.startswith("backbone."):
            local = name.removeprefix("backbone.")
            lr_mult = layerwise_decay ** (depth + 1 - layer_id(local, depth=depth))
            if local.startswith("patch_embed"):
                lr_mult *= patch_embed_lr_mult
        else:
            lr_mult = 1.0  # heads: layer depth + 1
        no_decay = name.endswith(".bias") or "norm" in name or "gamma" in name
        key = (lr_mult, 0.0 if no_decay else 1.0, "last_layer" in name)
        group = groups.setdefault(
            key, {"params": [], "lr_multiplier": key[0], "wd_multiplier": key[1], "last_layer": key[2]}
        )
        group["params"].append(param)
    return list(groups.values())


def apply_schedule(
    optimizer: torch.optim.Optimizer, *, lr: float, weight_decay: float, freeze_last_layer: bool
) -> None:
    """Set every group's lr and weight decay for this step (lr 0 freezes the prototype layer)."""
    for group in optimizer.param_groups:
        frozen = freeze_last_layer and group.get("last_layer", False)
        group["lr"] = 0.0 if frozen else lr * group.get("lr_multiplier", 1.0)
        group["weight_decay"] = weight_decay * group.get("wd_multiplier", 1.0)
