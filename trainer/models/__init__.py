"""Backbones: one ViT class and its named sizes, the input mapping, and the frozen export reader.

The package imports only torch, numpy and (to read an export) safetensors, with relative imports
between its modules: ``radforge export`` copies it verbatim into the export as ``radforge_vit``, so
code without radforge loads the same ViT (see :mod:`.backbone`).
"""

from .backbone import (
    BackboneLoadError,
    BackboneSpec,
    FrozenBackbone,
    load_backbone,
    spec_of,
    vit_from_spec,
)
from .preprocessing import ZSCORE_EPS, preprocess
from .vit import (
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
    "ZSCORE_EPS",
    "BackboneLoadError",
    "BackboneSpec",
    "Features",
    "FrozenBackbone",
    "VisionTransformer",
    "load_backbone",
    "preprocess",
    "spec_of",
    "vit_base",
    "vit_from_spec",
    "vit_giant",
    "vit_large",
    "vit_small",
    "vit_tiny",
]
