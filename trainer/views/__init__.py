"""Radiology views: intensities, content-aware crops, anatomy-guided masks, multi-crop batches."""

from radforge.trainer.views.crops import body_region, box_foreground, sample_crop_boxes
from radforge.trainer.views.intensity import ViewAugment, apply_view_augment, sample_view_augment, to_input
from radforge.trainer.views.masking import block_mask, sample_masks
from radforge.trainer.views.multicrop import CropPlan, MaskSampler, MultiCrop, ViewBatch, Views, collate_views

__all__ = [
    "CropPlan",
    "MaskSampler",
    "MultiCrop",
    "ViewAugment",
    "ViewBatch",
    "Views",
    "apply_view_augment",
    "block_mask",
    "body_region",
    "box_foreground",
    "collate_views",
    "sample_crop_boxes",
    "sample_masks",
    "sample_view_augment",
    "to_input",
]
