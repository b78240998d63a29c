"""Stage-1 (unsupervised) fusion loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import sobel_magnitude


class FusionLoss(nn.Module):
    """The method's loss:

    ``w_int * L1(I_f, max(I_ir, Y_vis)) + w_grad * L1(|grad I_f|, max(|grad I_ir|, |grad Y_vis|))``
    with ``|grad| = |Sobel_x| + |Sobel_y|`` (the method's loss; defaults 0.2 and 1.0).
    Inputs ``(N, 1, H, W)`` in ``[0, 1]``; returns a scalar. ``components`` holds the last
    unweighted terms for logging.
    """

    def __init__(self, intensity_weight: float = 0.2, gradient_weight: float = 1.0) -> None:
        super().__init__()
        self.intensity_weight = intensity_weight
        self.gradient_weight = gradient_weight
        self.components: dict[str, float] = {}

    def forward(self, fused: Tensor, ir: Tensor, vis_y: Tensor) -> Tensor:
        intensity = F.l1_loss(fused, torch.maximum(ir, vis_y))
        gradient = F.l1_loss(
            sobel_magnitude(fused), torch.maximum(sobel_magnitude(ir), sobel_magnitude(vis_y))
        )
        self.components = {"intensity": intensity.item(), "gradient": gradient.item()}
        return self.intensity_weight * intensity + self.gradient_weight * gradient
