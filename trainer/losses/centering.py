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


# Rows of scores materialised at once by the factorised targets (x num_prototypes fp32 values)
CHUNK_ELEMENTS = 1 << 25  # 128 MiB of fp32


class FactorizedTargets:
    """Centred teacher targets kept as embeddings, made one micro-batch at a time.

    The scores of a global batch are ``z @ w.T``: L2-normalised head embeddings z (N, D) against
    normalised prototypes w (K, D). Held whole, they (and the targets) take N x K floats: at 512 px,
    65,536 prototypes and every masked patch of an accumulated batch, gigabytes per copy. Here only
    z (N x D, D = 256) and what the centering needs are kept; :meth:`targets` builds micro-batch
    ``j``'s rows when the student consumes them.

    Sinkhorn-Knopp in factorised form: with E = exp(scores / tau - peak), its iterations only ever
    scale E's rows and columns, so the result is Q[n, k] = E[n, k] r_k / sum_k' E[n, k'] r_k' for a
    prototype vector r found by ``iterations`` passes over the rows (each pass recomputes E chunk by
    chunk; the sums over samples are all-reduced). Equal to :func:`sinkhorn_knopp` on the whole
    score matrix, to float rounding. EMA centering: rows are softmax((scores - c) / tau) with the
    centre from before this step; the centre then moves toward the batch-mean score,
    mean(z) @ w.T, exactly as :meth:`Centering.forward` does.
    """

    def __init__(
        self,
        centering: Centering,
        embeddings: list[torch.Tensor],
        prototypes: torch.Tensor,
        *,
        temperature: float,
        chunk_elements: int = CHUNK_ELEMENTS,
    ) -> None:
        self.embeddings = [z.float() for z in embeddings]
        self.chunk_elements = chunk_elements
        self.prototypes = prototypes.float()
        self.temperature = temperature
        self.method = centering.method
        device = self.prototypes.device
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            if self.method == "sinkhorn":
                self.log_r = self._sinkhorn(centering.iterations)
            else:
                self.center = centering.center.clone()
                self._update_centre(centering)

    def _chunks(self) -> list[torch.Tensor]:
        rows = max(1, self.chunk_elements // max(1, self.prototypes.shape[0]))
        return [c for z in self.embeddings for c in z.split(rows) if len(c)]

    def _logits(self, z: torch.Tensor) -> torch.Tensor:
        return (z @ self.prototypes.t()) / self.temperature  # (n, K)

    def _sinkhorn(self, iterations: int) -> torch.Tensor:
        device, k = self.prototypes.device, self.prototypes.shape[0]
        n = all_reduce_(torch.tensor(float(sum(len(z) for z in self.embeddings)), device=device))
        local = [self._logits(c).max() for c in self._chunks()]
        peak = torch.stack(local).max() if local else torch.tensor(float("-inf"), device=device)
        peak = all_reduce_(peak.reshape(()), op="max")
        tiny = torch.finfo(torch.float32).tiny
        # q[n, k] = exp(logits[n, k] + log_r[k] + log_c[n]); in log space, so no factor overflows
        log_r = torch.zeros(k, device=device)
        for it in range(iterations):
            col = torch.zeros(k, device=device)  # sum over samples of exp(logits + log_c)
            for chunk in self._chunks():
                logits = self._logits(chunk)
                if it == 0:  # c uniform (its scale cancels): the global peak keeps exp in range
                    log_c = -peak.expand(len(chunk))
                else:  # column step with the previous r: c_n = 1 / (N sum_k exp(logits + log_r))
                    log_c = -torch.log(n) - torch.logsumexp(logits + log_r, dim=1)
                col += torch.exp(logits + log_c[:, None]).sum(0)
            log_r = -torch.log(k * all_reduce_(col).clamp_min(tiny))
        return log_r

    def _update_centre(self, centering: Centering) -> None:
        device = self.prototypes.device
        z_sum = torch.zeros(self.prototypes.shape[1], device=device)
        for z in self.embeddings:
            z_sum += z.sum(0)
        rows = float(sum(len(z) for z in self.embeddings))
        total = all_reduce_(torch.cat([z_sum @ self.prototypes.t(), z_sum.new_tensor([rows])]))
        if total[-1] > 0:
            m = centering.momentum
            centering.center.mul_(m).add_(total[:-1] / total[-1], alpha=1.0 - m)

    def softmax_sum(self) -> torch.Tensor:
        """(K,) sum over every row of softmax(scores / tau), uncentred (prototype usage), on this rank."""
        total = torch.zeros(self.prototypes.shape[0], device=self.prototypes.device)
        with torch.no_grad(), torch.autocast(total.device.type, enabled=False):
            for chunk in self._chunks():
                total += F.softmax(self._logits(chunk), dim=-1).sum(0)
        return total

    def targets(self, j: int) -> torch.Tensor:
        """Targets (n_j, K) of the ``j``-th embeddings tensor given at construction; rows sum to 1."""
        z = self.embeddings[j]
        with torch.no_grad(), torch.autocast(z.device.type, enabled=False):
            if self.method == "sinkhorn":
                return F.softmax(self._logits(z) + self.log_r, dim=-1)
            return F.softmax(self._logits(z) - self.center / self.temperature, dim=-1)
