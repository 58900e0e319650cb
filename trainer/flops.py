"""Model FLOPs of one training step, counted analytically, and the GPU peaks MFU is measured against.

MFU = (model FLOPs of a step / step time) / the device's dense peak (PaLM's definition: FLOPs the
model needs, not what the hardware ran, so activation-checkpointing recomputation does not count).
A step of the recipe is:

- student, forward and backward (3x a forward): every global and local crop through the backbone,
  the head on every CLS token and on the masked patch tokens;
- teacher, forward only: the global crops through the backbone, the head on their CLS tokens and
  on the same masked patches.

A forward over n tokens costs 2 n P (P: weights of the linear layers a token passes, read off the
model built on the meta device, so MLP and SwiGLU count alike) plus 4 n^2 D per block for
attention (QK^T and AV), plus the patch embedding. Losses, Sinkhorn and the optimizer are
elementwise or tiny next to that and are left out.
"""

from __future__ import annotations

import torch
from torch import nn

from radforge.trainer.recipe import RecipeConfig

# Dense peak FLOP/s per GPU (SXM parts) by compute precision; matched by substring of the device name.
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "bf16": {"B200": 2250e12, "H200": 989e12, "H100": 989e12, "A100": 312e12},
    "fp32": {"B200": 80e12, "H200": 67e12, "H100": 67e12, "A100": 19.5e12},
}


def _linear_weights(module: nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))


def forward_flops_per_crop(recipe: RecipeConfig, *, size: int) -> float:
    """FLOPs of one backbone forward over a ``size`` x ``size`` crop (no heads)."""
    from radforge.trainer.build import build_backbone

    with torch.device("meta"):
        vit = build_backbone(recipe)
    patches = (size // recipe.model.patch_size) ** 2
    tokens = patches + 1 + recipe.model.num_registers
    per_block = 2 * tokens * _linear_weights(vit.blocks[0]) + 4 * tokens**2 * vit.embed_dim
    patch_embed = 2 * patches * vit.patch_embed.proj.weight.numel()
    return float(vit.depth * per_block + patch_embed)


def head_flops_per_token(recipe: RecipeConfig) -> float:
    """FLOPs of the DINO/iBOT head for one token (MLP to the bottleneck, then the prototypes)."""
    from radforge.trainer.build import build_backbone

    h = recipe.heads

    with torch.device("meta"):
        width = build_backbone(recipe).embed_dim
    dims = [width] + [h.hidden_dim] * (h.num_layers - 1) + [h.bottleneck_dim]
    weights = (
        sum(a * b for a, b in zip(dims[:-1], dims[1:], strict=True)) + h.bottleneck_dim * h.num_prototypes
    )
    return 2.0 * weights


def expected_masked_patches(recipe: RecipeConfig) -> float:
    """Masked patch tokens per image on average: mask probability x mean ratio x patches x global crops."""
    m, c = recipe.masking, recipe.crops
    patches = (c.global_size // recipe.model.patch_size) ** 2
    return m.probability * (m.ratio[0] + m.ratio[1]) / 2 * patches * c.global_count


def step_flops(recipe: RecipeConfig, *, images: int, masked_patches: float | None = None) -> float:
    """Model FLOPs of one optimisation step over ``images`` images (student fwd+bwd, teacher fwd).

    ``masked_patches``: masked patch tokens in the whole batch (default: the expected number).
    """
    c = recipe.crops
    glob = c.global_count * forward_flops_per_crop(recipe, size=c.global_size)
    local = c.local_count * forward_flops_per_crop(recipe, size=c.local_size) if c.local_count else 0.0
    head = head_flops_per_token(recipe)
    masked = expected_masked_patches(recipe) * images if masked_patches is None else masked_patches
    student = images * (glob + local + (c.global_count + c.local_count) * head) + masked * head
    teacher = images * (glob + c.global_count * head) + masked * head
    return 3.0 * student + teacher


def peak_flops(device: torch.device, *, precision: str) -> float | None:
    """The device's dense peak FLOP/s at ``precision`` ("bf16" or "fp32"), or None (CPU, unknown GPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.get(precision, {}).items() if k in name), None)
