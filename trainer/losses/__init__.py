"""Self-supervised losses, one per file, each with its shapes and maths in the docstring."""

from radforge.trainer.losses.centering import Centering, CenteringMethod, sinkhorn_knopp
from radforge.trainer.losses.dino import DINOLoss, crop_pairs
from radforge.trainer.losses.ibot import IBOTLoss
from radforge.trainer.losses.koleo import KoLeoLoss
from radforge.trainer.losses.sigreg import SigRegLoss

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
