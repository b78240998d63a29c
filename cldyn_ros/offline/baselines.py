"""The two simple reference fusions every comparison table carries."""

from __future__ import annotations

import torch
from torch import Tensor


def average_fusion(ir: Tensor, vis_y: Tensor) -> Tensor:
    """Pixel average of infrared and visible luminance: ``(N, 1, H, W) -> (N, 1, H, W)``."""
    return (ir + vis_y) * 0.5


def max_fusion(ir: Tensor, vis_y: Tensor) -> Tensor:
    """Per-pixel maximum of infrared and visible luminance: ``(N, 1, H, W) -> (N, 1, H, W)``."""
    return torch.maximum(ir, vis_y)


BASELINES = {"average": average_fusion, "max": max_fusion}
