"""Trainer: the Curia-2 self-supervised recipe (model, losses, views, one training step) in plain PyTorch.

The recipe's building blocks import with the package (they need torch alone); the run's entry
points (:func:`load_train_config`, :func:`run_training`, the Ray Train :func:`launch`) are imported
on first use, so ``import radforge.trainer`` does not import Ray or streaming.
"""

from typing import TYPE_CHECKING

from radforge.exports import lazy_exports
from radforge.trainer.build import (
    build_backbone,
    build_mask_sampler,
    build_multicrop,
    build_network,
    build_objective,
    build_optimizer,
    build_schedules,
    build_train_state,
)
from radforge.trainer.heads import DINOHead, Network
from radforge.trainer.models import VIT_SIZES, VisionTransformer
from radforge.trainer.recipe import RecipeConfig, RecipeConfigError, load_recipe
from radforge.trainer.step import LossWeights, NonFiniteLossError, Objective, TrainState, train_step
from radforge.trainer.views import MaskSampler, MultiCrop, ViewBatch, Views, collate_views

if TYPE_CHECKING:
    from radforge.trainer.loop import run_training
    from radforge.trainer.ray_launcher import launch
    from radforge.trainer.run_config import TrainConfig, TrainConfigError, load_train_config

__all__ = [
    "VIT_SIZES",
    "DINOHead",
    "LossWeights",
    "MaskSampler",
    "MultiCrop",
    "Network",
    "NonFiniteLossError",
    "Objective",
    "RecipeConfig",
    "RecipeConfigError",
    "TrainConfig",
    "TrainConfigError",
    "TrainState",
    "ViewBatch",
    "Views",
    "VisionTransformer",
    "build_backbone",
    "build_mask_sampler",
    "build_multicrop",
    "build_network",
    "build_objective",
    "build_optimizer",
    "build_schedules",
    "build_train_state",
    "collate_views",
    "launch",
    "load_recipe",
    "load_train_config",
    "run_training",
    "train_step",
]

__getattr__ = lazy_exports(
    __name__,
    {
        "run_training": "loop",
        "launch": "ray_launcher",
        "TrainConfig": "run_config",
        "TrainConfigError": "run_config",
        "load_train_config": "run_config",
    },
)
