"""The CLDyN network in pure PyTorch (no ROS import)."""

from .cldyn import CLDyN, CLDyNConfig, count_parameters
from .color import rgb_to_ycbcr, ycbcr_to_rgb
from .rsc import A2SI, RSC, BasisVectorBank
from .vfn import VFN

__all__ = [
    "A2SI",
    "RSC",
    "VFN",
    "BasisVectorBank",
    "CLDyN",
    "CLDyNConfig",
    "count_parameters",
    "rgb_to_ycbcr",
    "ycbcr_to_rgb",
]
