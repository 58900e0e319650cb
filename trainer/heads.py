"""Projection heads and the student/teacher network that carries them.

DINOv2's head (RECIPE.md, "Heads"): a 3-layer MLP (hidden 2048, GELU) down to a 256-d bottleneck,
L2-normalised, then a bias-free linear layer onto 65,536 weight-normalised prototypes. The same
head class serves the image-level DINO loss (on CLS tokens) and the patch-level iBOT loss (on
masked patch tokens), either shared or as a separate instance (DINOv2's giant).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from radforge.trainer.models.vit import VisionTransformer


class DINOHead(nn.Module):
    """(..., in_dim) -> prototype logits (..., num_prototypes), each in [-1, 1].

    logits = normalize(mlp(x)) @ normalize_rows(W)^T. Normalising the prototype rows in the
    forward is weight normalisation with the gain fixed at 1: DINO v1's ``norm_last_layer=True``.
    DINOv2 learns the gain (initialised at 1); radforge keeps logits as cosines so temperatures
    mean the same at every step (docs/recipe.md, "Departures"). Written without a
    parametrisation so the weight shards and initialises like any other.
    """

    def __init__(
        self,
        in_dim: int,
        *,
        num_prototypes: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_layers: int = 3,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            layers.append(nn.Linear(a, b))
            if i < num_layers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        self.last_layer = nn.Linear(bottleneck_dim, num_prototypes, bias=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Truncated normal (std 0.02) weights and zero biases, as DINOv2."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_dim) -> the L2-normalised bottleneck (..., bottleneck_dim) the prototypes score."""
        return F.normalize(self.mlp(x), dim=-1, eps=1e-6)

    def prototypes(self) -> torch.Tensor:
        """The L2-normalised prototypes (num_prototypes, bottleneck_dim)."""
        return F.normalize(self.last_layer.weight, dim=1, eps=1e-6)

    def embed_and_prototypes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`embed` of ``x`` and :meth:`prototypes`, in one call (an FSDP2 forward method).

        The teacher builds its targets from these (radforge.trainer.step). Under FSDP2 the
        prototypes are whole only inside a forward call, and a forward call needs a tensor argument.
        """
        return self.embed(x), self.prototypes()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.embed(x), self.prototypes())


class Network(nn.Module):
    """A backbone with its DINO and iBOT heads: the student, or (a copy of it) the teacher.

    With a shared iBOT head, ``ibot_head`` is the same module as ``dino_head``; parameters are
    then counted once by ``parameters()`` and the EMA pairs them the same way on both sides.
    """

    def __init__(
        self, *, backbone: VisionTransformer, dino_head: DINOHead, ibot_head: DINOHead | None
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.dino_head = dino_head
        self.ibot_head = ibot_head if ibot_head is not None else dino_head

    @property
    def shared_head(self) -> bool:
        return self.ibot_head is self.dino_head

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialise the backbone and heads (after ``to_empty`` on a meta-built network)."""
        self.backbone.init_weights()
        self.dino_head.init_weights()
        if not self.shared_head:
            self.ibot_head.init_weights()
