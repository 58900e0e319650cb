"""Teacher centering: turn teacher prototype scores into targets that cannot collapse.

Without centering, a teacher can put all samples on one prototype (or spread each uniformly) and
the student trivially matches it. Two remedies, both from DINOv2 (RECIPE.md, "Centering"):

- Sinkhorn-Knopp (default): find targets Q (N, K) close to softmax(scores / tau) whose
  prototype marginals are uniform (each prototype receives N/K of the mass) and whose sample
  marginals are one (each row a distribution). Three alternating normalisations suffice.
- EMA centering (DINO): subtract a running mean c of the scores before the softmax,
  p = softmax((s - c) / tau), c <- m c + (1 - m) mean_batch(s), m = 0.9.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from radforge.trainer.collectives import all_reduce_
from radforge.trainer.losses.precision import fp32_forward

CenteringMethod = Literal["sinkhorn", "ema"]


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, *, temperature: float, iterations: int = 3) -> torch.Tensor:
    """Sinkhorn-Knopp targets: scores (N, K) -> Q (N, K), rows summing to 1, columns to ~N/K.

    Q starts as exp(scores / tau) normalised to total mass 1; each iteration divides every
    prototype row (over the global batch) by its mass and by K, then every sample column by its
    mass and by N. Sums over samples are all-reduced, so N is the global number of rows and ranks
    may hold different N (iBOT's masked patches). The global maximum is subtracted before exp
    (it cancels in the normalisations) so low temperatures cannot overflow.
    """
    scores = scores.float()
    n = all_reduce_(torch.tensor(float(scores.shape[0]), device=scores.device))
    k = scores.shape[1]
    local_max = scores.max() if scores.numel() else torch.tensor(float("-inf"), device=scores.device)
    peak = all_reduce_(local_max.reshape(()) / temperature, op="max")
    q = torch.exp(scores / temperature - peak).t()  # (K, N)
    tiny = torch.finfo(q.dtype).tiny  # a prototype or sample whose exp underflowed keeps 0, not NaN
    q /= all_reduce_(q.sum()).clamp_min(tiny)
    for _ in range(iterations):
        q /= all_reduce_(q.sum(dim=1, keepdim=True)).clamp_min(tiny)
        q /= k
        q /= q.sum(dim=0, keepdim=True).clamp_min(tiny)
        q /= n
    q *= n
    return q.t()


class Centering(nn.Module):
    """Teacher scores (N, K) -> centred targets (N, K), by Sinkhorn-Knopp or an EMA centre.

    With the EMA method, each call uses the current centre and then moves it toward this batch's
    (all-reduced) mean score, as DINO does.
    """

    center: torch.Tensor

    def __init__(
        self,
        num_prototypes: int,
        *,
        method: CenteringMethod = "sinkhorn",
        iterations: int = 3,
        momentum: float = 0.9,
    ) -> None:
        super().__init__()
        if method not in ("sinkhorn", "ema"):
            raise ValueError(f"unknown centering method {method!r}; valid: sinkhorn, ema")
        self.method = method
        self.iterations = iterations
        self.momentum = momentum
        self.register_buffer("center", torch.zeros(1, num_prototypes))

    @torch.no_grad()
    @fp32_forward
    def forward(self, scores: torch.Tensor, *, temperature: float) -> torch.Tensor:
        if self.method == "sinkhorn":
            return sinkhorn_knopp(scores, temperature=temperature, iterations=self.iterations)
        scores = scores.float()
        probs = F.softmax((scores - self.center) / temperature, dim=-1)
        total = all_reduce_(torch.cat([scores.sum(0), scores.new_tensor([scores.shape[0]])]))
        if total[-1] > 0:
            self.center.mul_(self.momentum).add_(total[:-1] / total[-1], alpha=1.0 - self.momentum)
        return probs
