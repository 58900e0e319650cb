"""iBOT loss: patch-level self-distillation on the patches hidden from the student."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from radforge.trainer.losses.precision import fp32_forward


class IBOTLoss(nn.Module):
    """Cross-entropy between teacher and student prototype distributions of masked patches.

    Shapes: student_logits (M, K) and teacher_probs (M, K) for the M masked patches of the batch,
    in the order of ``masks.nonzero()``; masks (B, N) bool over the B global crops. The student
    saw a mask token where the teacher saw the patch.

        L = -1/B sum_b 1/M_b sum_{m in mask_b} sum_k p_m[k] log softmax(z_m / tau_s)_k

    M_b is image b's number of masked patches: each masked image weighs the same whatever its
    ratio, and unmasked images count in B with zero loss (DINOv2's normalisation, RECIPE.md
    "iBOT masking"). Unmasked patches never contribute.
    """

    def __init__(self, *, student_temp: float = 0.1) -> None:
        super().__init__()
        self.student_temp = student_temp

    @fp32_forward
    def forward(
        self, student_logits: torch.Tensor, teacher_probs: torch.Tensor, *, masks: torch.Tensor
    ) -> torch.Tensor:
        per_image = masks.sum(-1, keepdim=True).clamp(min=1)
        weights = (1.0 / per_image).expand_as(masks)[masks]  # (M,)
        log_p = F.log_softmax(student_logits.float() / self.student_temp, dim=-1)
        cross = -(teacher_probs.float() * log_p).sum(-1)  # (M,)
        return (cross * weights).sum() / masks.shape[0]
