"""The Curia-2 recipe as one typed configuration (:class:`RecipeConfig`).

Defaults are DINOv2's public values (RECIPE.md, "DINOv2 defaults the recipe starts from") except
where Curia-2 is known to differ (content-aware crops, anatomy-guided masking, SigReg, 1 channel,
patch 16, SwiGLU, z-scored intensities). Values Curia-2 does not publish are marked "inferred" in
the comments and in docs/recipe.md. Every section forbids unknown keys, so a typo fails with the
field's name. The config stops at :mod:`radforge.trainer.build`, which turns it into keyword arguments.

Layering: defaults -> YAML file -> ``key.sub=value`` overrides (:func:`load_recipe`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from radforge.config import ConfigError, load_model
from radforge.trainer.losses.centering import CenteringMethod
from radforge.trainer.models.vit import VIT_SIZES
from radforge.trainer.schedules import LrScaling
from radforge.trainer.views.intensity import RANDOM_WINDOWS
from radforge.windowing import CT_PRESETS

ModelSize = Literal["vit_tiny", "vit_small", "vit_base", "vit_large", "vit_giant"]
Range = tuple[float, float]


class RecipeConfigError(ConfigError):
    """A recipe file or override is invalid; the message names the field and what is allowed."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Section):
    """Backbone: which ViT size and how it is built."""

    size: ModelSize = "vit_base"  # released Curia-2 ViT-B; vit_large / vit_giant for the larger runs
    embed_dim: int | None = Field(None, ge=8)  # None: the size's width; set for custom CPU-test models
    depth: int | None = Field(None, ge=1)  # None: the size's depth
    num_heads: int | None = Field(None, ge=1)  # None: the size's heads
    patch_size: int = Field(16, ge=2)  # released Curia-2 ViT-B uses 16 (DINOv2 uses 14)
    in_chans: int = Field(1, ge=1)  # one grey channel: no RGB replication
    img_size: int = Field(224, ge=8)  # grid the position table is stored at (the low-res stage)
    ffn: Literal["mlp", "swiglu"] | None = "swiglu"  # released Curia-2 ViT-B: SwiGLU; None = size default
    num_registers: int = Field(0, ge=0)  # not in the released Curia-2 config (inferred); DINOv2-reg uses 4
    layerscale_init: float | None = 1e-5  # DINOv2 LayerScale init; None disables LayerScale
    drop_path_rate: float = Field(0.3, ge=0.0, lt=1.0)  # DINOv2 (0.4 for giant); student only
    drop_path_uniform: bool = True  # DINOv2: same rate in every block
    qkv_bias: bool = True  # DINOv2
    activation_checkpointing: bool = False  # recompute blocks in backward: memory for compute (large/giant)


class HeadConfig(_Section):
    """DINO and iBOT projection heads."""

    num_prototypes: int = Field(65536, ge=2)  # DINOv2 (131,072 for giant)
    bottleneck_dim: int = Field(256, ge=1)  # DINOv2 (384 for giant)
    hidden_dim: int = Field(2048, ge=1)  # DINOv2
    num_layers: int = Field(3, ge=1)  # DINOv2
    ibot_separate_head: bool = False  # DINOv2 shares it except for giant


class LossConfig(_Section):
    """Loss terms, their weights, temperatures and the teacher centering."""

    dino_weight: float = Field(1.0, ge=0.0)  # DINOv2
    ibot_weight: float = Field(1.0, ge=0.0)  # DINOv2
    koleo_weight: float = Field(0.1, ge=0.0)  # DINOv2; 0 leaves SigReg as the only global regulariser
    sigreg_weight: float = Field(0.02, ge=0.0)  # Curia-2 uses SigReg; LeJEPA's lambda (value inferred)
    sigreg_directions: int = Field(256, ge=1)  # LeJEPA: 256-1024 random directions
    sigreg_points: int = Field(17, ge=3)  # LeJEPA: 17 trapezoid points on t in [0, t_max]
    sigreg_t_max: float = Field(3.0, gt=0.0)  # LeJEPA
    student_temp: float = Field(0.1, gt=0.0)  # DINOv2
    centering: CenteringMethod = "sinkhorn"  # DINOv2's Sinkhorn-Knopp (EMA centre as the option)
    sinkhorn_iterations: int = Field(3, ge=1)  # DINOv2
    center_momentum: float = Field(0.9, ge=0.0, lt=1.0)  # DINO's EMA centre momentum (centering="ema")


class OptimConfig(_Section):
    """AdamW with layer-wise lr decay, a slower patch embedding and gradient clipping."""

    base_lr: float = Field(
        4e-3, gt=0.0
    )  # DINOv2 per 1024 images (2e-4 giant); Curia-2 "higher lr" (value not public)
    lr_scaling: LrScaling = "sqrt_1024"  # DINOv2: lr = base_lr * sqrt(batch / 1024)
    min_lr: float = Field(1e-6, ge=0.0)  # DINOv2 cosine floor
    betas: tuple[float, float] = (0.9, 0.999)  # DINOv2 AdamW betas
    layerwise_decay: float = Field(0.9, gt=0.0, le=1.0)  # DINOv2 (1.0 giant): block i gets decay^(depth+1-i)
    patch_embed_lr_mult: float = Field(0.2, ge=0.0)  # DINOv2
    clip_grad: float | None = Field(3.0, gt=0.0)  # DINOv2 max global grad norm; None disables


class ScheduleConfig(_Section):
    """Run length and every schedule, in DINOv2 "epochs" of ``epoch_length`` steps."""

    epochs: int = Field(100, ge=1)  # DINOv2 ViT-L/g runs use 500 (inferred: shorter default)
    epoch_length: int = Field(1250, ge=1)  # DINOv2's OFFICIAL_EPOCH_LENGTH
    warmup_epochs: float = Field(10, ge=0)  # DINOv2 lr warm-up (80 giant)
    weight_decay: float = Field(0.04, ge=0.0)  # DINOv2 cosine start
    weight_decay_end: float = Field(0.4, ge=0.0)  # DINOv2 (0.2 giant)
    momentum_teacher: float = Field(0.992, ge=0.0, le=1.0)  # DINOv2 (0.994 giant)
    momentum_teacher_end: float = Field(1.0, ge=0.0, le=1.0)  # DINOv2
    teacher_temp_start: float = Field(0.04, gt=0.0)  # DINOv2 warm-up start
    teacher_temp: float = Field(0.07, gt=0.0)  # DINOv2
    teacher_temp_warmup_epochs: float = Field(30, ge=0)  # DINOv2
    freeze_last_layer_epochs: float = Field(1, ge=0)  # DINOv2: prototypes frozen at first

    @property
    def total_steps(self) -> int:
        return self.epochs * self.epoch_length

    def steps(self, epochs: float) -> int:
        """A duration in epochs as a whole number of steps."""
        return int(round(epochs * self.epoch_length))


class CropConfig(_Section):
    """Multi-crop geometry and Curia-2's content-aware placement."""

    global_count: int = Field(2, ge=1)  # DINOv2
    global_size: int = Field(224, ge=8)  # DINOv2 (512 in the high-res stage)
    global_scale: Range = (0.32, 1.0)  # DINOv2, area fraction of the slice
    local_count: int = Field(8, ge=0)  # DINOv2
    local_size: int = Field(96, ge=8)  # DINOv2 (98 with patch 14)
    local_scale: Range = (0.05, 0.32)  # DINOv2
    ratio: Range = (3 / 4, 4 / 3)  # RandomResizedCrop aspect ratios (log-uniform)
    content_aware: bool = True  # Curia-2: centres on anatomy; False = DINOv2's uniform placement
    center_sigma: float = Field(0.25, gt=0.0)  # Gaussian std of centres, in body-box sizes (inferred)
    min_foreground: float = Field(0.3, ge=0.0, le=1.0)  # crops below this body share are redrawn (inferred)
    max_tries: int = Field(10, ge=1)  # redraws before falling back to a crop on the body box


class MaskConfig(_Section):
    """iBOT masking of the student's global crops."""

    probability: float = Field(0.5, ge=0.0, le=1.0)  # DINOv2: half of the global crops get a mask
    ratio: Range = (0.1, 0.5)  # DINOv2: per-sample ratios spread over linspace(0.1, 0.5)
    prior: Literal["anatomy", "uniform"] = "anatomy"  # Curia-2's anatomically-guided masking
    min_block: int = Field(4, ge=1)  # DINOv2: smallest rectangle, in patches
    min_aspect: float = Field(0.3, gt=0.0, le=1.0)  # DINOv2: aspect log-uniform in [0.3, 1/0.3]
    prior_floor: float = Field(0.02, ge=0.0)  # weight a block on pure air keeps (inferred)


class IntensityConfig(_Section):
    """From stored pixels to network input, and radiology-safe augmentations (no colour, no solarize)."""

    ct_air_hu: float = -1000.0  # released processor: clip raw CT below air, then z-score per image
    random_window_p: float = Field(0.0, ge=0.0, le=1.0)  # raw CT: chance of a random clinical window first
    random_windows: tuple[str, ...] = RANDOM_WINDOWS  # presets (radforge.windowing.CT_PRESETS) drawn from
    window_jitter: float = Field(0.1, ge=0.0)  # window centre shift (x width) and log-width spread (inferred)
    hflip_p: float = Field(0.5, ge=0.0, le=1.0)  # DINOv2 horizontal flip
    vflip_p: float = Field(0.0, ge=0.0, le=1.0)  # off: anterior/posterior is meaningful (inferred)
    rotation_p: float = Field(0.3, ge=0.0, le=1.0)  # small rotations (inferred)
    rotation_deg: float = Field(10.0, ge=0.0, le=45.0)  # max angle of a small rotation (inferred)
    contrast_p: float = Field(0.8, ge=0.0, le=1.0)  # replaces DINOv2's colour-jitter probability
    contrast: Range = (0.6, 1.4)  # DINOv2 jitter strength 0.4 as a contrast factor
    brightness: Range = (-0.4, 0.4)  # additive shift in z-score units (inferred from jitter 0.4)
    gamma_p: float = Field(0.2, ge=0.0, le=1.0)  # takes RandomGrayscale's 0.2 slot (inferred)
    gamma: Range = (0.7, 1.5)  # log-uniform gamma on the view's min-max range (inferred)
    blur_p: tuple[float, float, float] = (1.0, 0.1, 0.5)  # DINOv2: first global, other globals, locals
    blur_sigma: Range = (0.1, 2.0)  # DINOv2, pixels of the output view
    noise_p: float = Field(0.2, ge=0.0, le=1.0)  # Gaussian noise (inferred)
    noise_std: Range = (0.0, 0.1)  # noise std in z-score units (inferred)

    @field_validator("random_windows")
    @classmethod
    def _known_windows(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [w for w in v if w not in CT_PRESETS]
        if bad or not v:
            raise ValueError(f"unknown CT window {bad or '(empty list)'}; valid: {', '.join(CT_PRESETS)}")
        return v


class ComputeConfig(_Section):
    """How a step runs on the hardware; does not change the maths beyond rounding."""

    precision: Literal["bf16", "fp32"] = "bf16"  # DINOv3: bf16 compute, fp32 master weights and reductions
    compile_blocks: bool = False  # torch.compile each transformer block (DINOv3)
    compile_heads: bool = False  # torch.compile the student heads and DINO/iBOT losses (fuses logit work)
    fused_optimizer: bool = False  # fused AdamW kernel (CUDA)


class RecipeConfig(_Section):
    """The whole self-supervised recipe; issue 5's run config embeds it as one field."""

    model: ModelConfig = ModelConfig()
    heads: HeadConfig = HeadConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    crops: CropConfig = CropConfig()
    masking: MaskConfig = MaskConfig()
    intensity: IntensityConfig = IntensityConfig()
    compute: ComputeConfig = ComputeConfig()

    @model_validator(mode="after")
    def _check(self) -> RecipeConfig:
        p = self.model.patch_size
        for name, size in [
            ("model.img_size", self.model.img_size),
            ("crops.global_size", self.crops.global_size),
            ("crops.local_size", self.crops.local_size),
        ]:
            if size % p:
                raise ValueError(f"{name}={size} must be a multiple of model.patch_size={p}")
        for name, (lo, hi) in [
            ("crops.global_scale", self.crops.global_scale),
            ("crops.local_scale", self.crops.local_scale),
            ("masking.ratio", self.masking.ratio),
        ]:
            if not 0.0 < lo <= hi <= 1.0:
                raise ValueError(f"{name}=({lo}, {hi}) must satisfy 0 < low <= high <= 1")
        if self.crops.global_count < 2 and self.crops.local_count == 0:
            raise ValueError("the DINO loss needs two global crops or some local crops")
        if self.model.size not in VIT_SIZES:  # Literal already checks; kept in step with the registry
            raise ValueError(f"unknown model.size {self.model.size!r}; valid: {', '.join(VIT_SIZES)}")
        if not math.isfinite(self.optim.base_lr):
            raise ValueError("optim.base_lr must be finite")
        return self

    def to_yaml(self) -> str:
        """The resolved config as YAML (saved next to every output)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def load_recipe(path: str | Path | None = None, *, overrides: Sequence[str] = ()) -> RecipeConfig:
    """Resolve a recipe: defaults, then the YAML file at ``path``, then ``section.field=value`` overrides.

    Override values are parsed as YAML (``loss.koleo_weight=0``, ``crops.global_scale=[0.4, 1]``).
    Raises :class:`RecipeConfigError` naming the offending field.
    """
    return load_model(RecipeConfig, path, overrides=overrides, error=RecipeConfigError, what="recipe")
