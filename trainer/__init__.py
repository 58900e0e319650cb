"""Trainer: the Curia-2 self-supervised recipe (model, losses, views, one training step) in plain PyTorch."""

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
from radforge.trainer.config import RecipeConfig, RecipeConfigError, load_recipe
from radforge.trainer.heads import DINOHead, Network
from radforge.trainer.models import VIT_SIZES, VisionTransformer
from radforge.trainer.step import LossWeights, NonFiniteLossError, Objective, TrainState, train_step
from radforge.trainer.views import MaskSampler, MultiCrop, ViewBatch, Views, collate_views

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
    "load_recipe",
    "train_step",
]
