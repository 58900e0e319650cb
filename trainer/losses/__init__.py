"""Self-supervised losses, one per file, each with its shapes and maths in the docstring."""

from trainer.losses.centering import Centering, CenteringMethod, sinkhorn_knopp
from trainer.losses.dino import DINOLoss, crop_pairs
from trainer.losses.ibot import IBOTLoss
from trainer.losses.koleo import KoLeoLoss
from trainer.losses.sigreg import SigRegLoss

__all__ = [
    "Centering",
    "CenteringMethod",
    "DINOLoss",
    "IBOTLoss",
    "KoLeoLoss",
    "SigRegLoss",
    "crop_pairs",
    "sinkhorn_knopp",
]
