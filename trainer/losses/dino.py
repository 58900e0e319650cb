"""DINO loss: image-level self-distillation from teacher crops to student crops."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from radforge.trainer.losses.precision import fp32_forward


def crop_pairs(*, n_global: int, n_local: int, device: torch.device | None = None) -> torch.Tensor:
    """Which (student crop, teacher crop) pairs the loss uses: (n_global + n_local, n_global) bool.

    Student crops are ordered globals first, then locals; teachers see the globals only. Every
    pair counts except a global crop with itself (nothing to learn from the same view).
    """
    pairs = torch.ones(n_global + n_local, n_global, dtype=torch.bool, device=device)
    pairs[:n_global].fill_diagonal_(False)
    return pairs


class DINOLoss(nn.Module):
    """Cross-entropy between teacher targets and student predictions, averaged over crop pairs.

    Shapes: student_logits (S, B, K) prototype scores of S student crops of B images;
    teacher_probs (T, B, K) centred teacher targets of T (global) crops; pairs (S, T) bool.

        L = -1/|P| sum_{(s,t) in P} 1/B sum_b sum_k p_t[b, k] log softmax(z_s[b] / tau_s)_k

    with tau_s the student temperature (0.1). Averaging over all pairs equals DINOv2's weighting
    of its separate global and local terms (RECIPE.md, "Teacher").
    """

    def __init__(self, *, student_temp: float = 0.1) -> None:
        super().__init__()
        self.student_temp = student_temp

    @fp32_forward
    def forward(
        self, student_logits: torch.Tensor, teacher_probs: torch.Tensor, *, pairs: torch.Tensor | None = None
    ) -> torch.Tensor:
        s, b, _ = student_logits.shape
        t = teacher_probs.shape[0]
        if pairs is None:
            pairs = crop_pairs(n_global=t, n_local=s - t, device=student_logits.device)
        log_p = F.log_softmax(student_logits.float() / self.student_temp, dim=-1)
        cross = -torch.einsum("sbk,tbk->st", log_p, teacher_probs.float()) / b  # (S, T)
        return cross[pairs].mean()
