"""SigReg (LeJEPA): sketched isotropic Gaussian regularisation of embeddings.

Curia-2 adds it as a global latent regulariser (RECIPE.md, "Curia-2 changes" and "SigReg").
"""

from __future__ import annotations

import torch
from torch import nn

from radforge.trainer.losses.precision import fp32_forward


class SigRegLoss(nn.Module):
    """Epps-Pulley test statistic of random 1-D projections of the embeddings against N(0, 1).

    Shapes: z (N, D) -> scalar. Draw M unit directions a_m (seeded by ``step`` so every rank uses
    the same ones), project x = z a_m, and compare the empirical characteristic function
    phi(t) = mean_n exp(i t x_n) with the standard normal's exp(-t^2 / 2):

        T_m = N * 2 * int_0^t_max |phi(t) - exp(-t^2/2)|^2 exp(-t^2/2) dt    (trapezoid, P points)
        L   = mean_m T_m

    phi is the mean over the N rows given, with no communication: the step passes one micro-batch,
    whose size does not depend on the worker count (radforge.trainer.step). L is about 1.05 for
    isotropic Gaussian embeddings (the expectation of the statistic; exactly Gaussian data cannot do
    better with N samples) and grows like N for collapsed ones. LeJEPA uses
    M ~ 256-1024, t in [0, 3] with 17 points, and a weight around 0.02.
    """

    t: torch.Tensor
    target: torch.Tensor
    weights: torch.Tensor

    def __init__(self, *, num_directions: int = 256, t_max: float = 3.0, num_points: int = 17) -> None:
        super().__init__()
        self.num_directions = num_directions
        t = torch.linspace(0.0, t_max, num_points)
        gauss = torch.exp(-0.5 * t**2)
        trapezoid = torch.full((num_points,), t_max / (num_points - 1))
        trapezoid[[0, -1]] /= 2
        self.register_buffer("t", t, persistent=False)
        self.register_buffer("target", gauss, persistent=False)
        # x2 for the negative half of the symmetric integrand, times the Gaussian weight
        self.register_buffer("weights", 2.0 * trapezoid * gauss, persistent=False)

    def directions(self, dim: int, *, step: int, device: torch.device) -> torch.Tensor:
        """(dim, M) unit columns, a function of ``step`` only (identical on every rank)."""
        gen = torch.Generator(device=device).manual_seed(int(step))
        a = torch.randn(dim, self.num_directions, generator=gen, device=device)
        return a / a.norm(dim=0, keepdim=True)

    @fp32_forward
    def forward(self, z: torch.Tensor, *, step: int) -> torch.Tensor:
        z = z.float()
        x = z @ self.directions(z.shape[1], step=step, device=z.device)  # (N, M)
        xt = x.unsqueeze(-1) * self.t  # (N, M, P)
        cos = torch.cos(xt).mean(0)
        sin = torch.sin(xt).mean(0)
        err = (cos - self.target) ** 2 + sin**2  # (M, P)
        stat = (err * self.weights).sum(-1) * z.shape[0]
        return stat.mean()
