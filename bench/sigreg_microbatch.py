"""SigReg per micro-batch vs over the whole batch: how well do their gradients agree?

radforge computes SigReg's characteristic function per micro-batch (so a step's loss does not depend
on the worker count); LeJEPA all-reduces it over the global batch. This measures the cosine between
the gradient of the mean per-micro-batch statistic (16 rows each) and the gradient of the statistic
over all 256 rows, for isotropic, anisotropic and nearly collapsed embeddings (384-d, 256
directions, 10 trials each). Prints one JSON line.

    .venv/bin/python -m bench.sigreg_microbatch
"""

from __future__ import annotations

import json

import torch

from radforge.trainer.losses import SigRegLoss


def main() -> None:
    torch.manual_seed(0)
    loss = SigRegLoss(num_directions=256)
    cases = {
        "isotropic": torch.ones(384),
        "anisotropic": torch.linspace(0.05, 1.5, 384),
        "near_collapse": torch.cat([torch.ones(8), torch.full((376,), 0.02)]),
    }
    out = {}
    for case, scale in cases.items():
        cos = []
        for trial in range(10):
            z = (torch.randn(256, 384) * scale).requires_grad_(True)
            g_full = torch.autograd.grad(loss(z, step=trial), z)[0]
            per_micro = torch.stack([loss(c, step=trial) for c in z.chunk(16)]).mean()
            g_micro = torch.autograd.grad(per_micro, z)[0]
            cos.append(torch.cosine_similarity(g_full.flatten(), g_micro.flatten(), dim=0).item())
        out[case] = round(sum(cos) / len(cos), 3)
    print(json.dumps({"bench": "sigreg_microbatch", "micro_batch": 16, "batch": 256, "grad_cosine": out}))


if __name__ == "__main__":
    main()
