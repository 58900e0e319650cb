"""Backbones: one ViT class and its named sizes."""

from radforge.trainer.models.vit import (
    VIT_SIZES,
    Features,
    VisionTransformer,
    vit_base,
    vit_giant,
    vit_large,
    vit_small,
    vit_tiny,
)

__all__ = [
    "VIT_SIZES",
    "Features",
    "VisionTransformer",
    "vit_base",
    "vit_giant",
    "vit_large",
    "vit_small",
    "vit_tiny",
]
