"""The frozen backbone evaluation runs: re-exported from :mod:`radforge.trainer.models.backbone`.

The reader of ``radforge export`` folders lives in the model package (the one ViT), which the
export copies next to the weights so code without radforge loads them too; see docs/eval.md.
"""

from radforge.trainer.models.backbone import (
    CONFIG,
    FORMAT,
    FORMAT_VERSION,
    NATIVE,
    TRAINING_ONLY,
    WEIGHTS,
    BackboneLoadError,
    BackboneSpec,
    FrozenBackbone,
    load_backbone,
    native_folder,
    state_hash,
)
from radforge.trainer.models.preprocessing import preprocess
from radforge.trainer.models.vit import Features

__all__ = [
    "CONFIG",
    "FORMAT",
    "FORMAT_VERSION",
    "NATIVE",
    "TRAINING_ONLY",
    "WEIGHTS",
    "BackboneLoadError",
    "BackboneSpec",
    "Features",
    "FrozenBackbone",
    "load_backbone",
    "native_folder",
    "preprocess",
    "state_hash",
]
