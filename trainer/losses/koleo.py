"""KoLeo: the Kozachenko-Leonenko entropy estimator as a spreading regulariser on CLS tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from radforge.trainer.losses.precision import fp32_forward


class KoLeoLoss(nn.Module):
    """Push each embedding away from its nearest neighbour in the batch.

    Shapes: x (B, D) -> scalar. With x_i L2-normalised and d_i = min_{j != i} ||x_i - x_j||,

        L = -1/B sum_i log(d_i + eps),   eps = 1e-8

    (DINOv2, weight 0.1, applied per global-crop chunk.) Guards against the known NaN/inf: a batch
    of fewer than two rows has no neighbour and gives 0; distances are sqrt(|x_i - x_j|^2 + eps^2)
    so duplicate rows give a large but finite loss and finite gradients; maths in fp32.
    """

    def __init__(self, *, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    @fp32_forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] < 2:
            return x.sum() * 0.0  # keeps the graph (and FSDP's gradient hooks) intact
        x = F.normalize(x.float(), dim=-1, eps=self.eps)
        with torch.no_grad():
            dots = x @ x.t()
            dots.fill_diagonal_(-2.0)  # below any real cosine: never pick yourself
            nearest = dots.argmax(dim=1)
        sq = (x - x[nearest]).pow(2).sum(-1)
        dist = torch.sqrt(sq + self.eps**2)
        return -torch.log(dist + self.eps).mean()
