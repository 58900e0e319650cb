"""Training schedules as pure functions of the step (RECIPE.md, "DINOv2 defaults").

Learning rate: linear warm-up from 0, then cosine to a floor. Weight decay: cosine 0.04 -> 0.4.
Teacher EMA momentum: cosine 0.992 -> 1. Teacher temperature: linear warm-up 0.04 -> 0.07, then
flat. The prototype layer is frozen for the first epoch. Values depend on the step alone, so a
resumed run only needs the step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

LrScaling = Literal["sqrt_1024", "linear_256", "none"]


def cosine(
    step: int, *, total: int, start: float, end: float, warmup: int = 0, warmup_from: float = 0.0
) -> float:
    """Cosine from ``start`` (after ``warmup`` linear steps from ``warmup_from``) to ``end`` at ``total``.

    Steps past ``total`` stay at ``end``.
    """
    if step < warmup:
        return warmup_from + (start - warmup_from) * step / warmup
    progress = min(max((step - warmup) / max(total - warmup, 1), 0.0), 1.0)
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress))


def warmup_then_constant(step: int, *, warmup: int, start: float, end: float) -> float:
    """Linear from ``start`` to ``end`` over ``warmup`` steps, then ``end``."""
    if step >= warmup:
        return end
    return start + (end - start) * step / warmup


def scaled_lr(base_lr: float, *, batch_size: int, rule: LrScaling = "sqrt_1024") -> float:
    """Peak learning rate for a global ``batch_size``: DINOv2 scales ``base_lr`` by sqrt(batch / 1024)."""
    if rule == "sqrt_1024":
        return base_lr * math.sqrt(batch_size / 1024)
    if rule == "linear_256":
        return base_lr * batch_size / 256
    if rule == "none":
        return base_lr
    raise ValueError(f"unknown lr scaling rule {rule!r}; valid: sqrt_1024, linear_256, none")


@dataclass(frozen=True)
class ScheduleValues:
    """Everything that varies with the step."""

    lr: float
    weight_decay: float
    momentum: float
    teacher_temp: float
    freeze_last_layer: bool


@dataclass(frozen=True)
class Schedules:
    """The schedule parameters, in steps; :meth:`at` gives the values for one step."""

    total_steps: int
    lr: float
    min_lr: float
    lr_warmup_steps: int
    weight_decay: float
    weight_decay_end: float
    momentum: float
    momentum_end: float
    teacher_temp_start: float
    teacher_temp: float
    teacher_temp_warmup_steps: int
    freeze_last_layer_steps: int

    def at(self, step: int) -> ScheduleValues:
        """Schedule values at ``step`` (0-based)."""
        return ScheduleValues(
            lr=cosine(
                step, total=self.total_steps, start=self.lr, end=self.min_lr, warmup=self.lr_warmup_steps
            ),
            weight_decay=cosine(
                step, total=self.total_steps, start=self.weight_decay, end=self.weight_decay_end
            ),
            momentum=cosine(step, total=self.total_steps, start=self.momentum, end=self.momentum_end),
            teacher_temp=warmup_then_constant(
                step,
                warmup=self.teacher_temp_warmup_steps,
                start=self.teacher_temp_start,
                end=self.teacher_temp,
            ),
            freeze_last_layer=step < self.freeze_last_layer_steps,
        )
