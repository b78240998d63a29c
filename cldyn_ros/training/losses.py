"""Stage-1 (unsupervised) fusion loss."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import metrics
from ..model.layers import sobel_magnitude

QABF_BORDERS = ("zeros", "reflect", "valid")
ANCHOR_WINDOW = 16


class FusionLoss(nn.Module):
    """The method's loss plus optional structure terms.

    ``w_int * L1(I_f, max(I_ir, Y_vis)) + w_grad * L1(|grad I_f|, max(|grad I_ir|, |grad Y_vis|))``
    with ``|grad| = |Sobel_x| + |Sobel_y|`` is the method's loss (defaults 0.2 and 1.0). Two
    terms can be added:

    - ``w_qabf * (1 - soft Q^AB/F)``: edge preservation as Xydeas and Petrovic score it
      (strength *and* orientation of both sources' edges, weighted by their strength), see
      :func:`soft_qabf`;
    - ``w_ssim * (1 - (SSIM(F, IR) + SSIM(F, Y)) / 2)``: local structure against both sources;
    - ``w_anchor * mean |avgpool16(F - prior)|`` (with a VFN prior passed to ``forward``):
      keeps the low frequencies of the prior, so the decoder corrects edges and texture
      rather than learning the training set's brightness.

    Inputs ``(N, 1, H, W)`` in ``[0, 1]``; returns a scalar. ``components`` holds the last
    unweighted terms for logging.
    """

    def __init__(
        self,
        intensity_weight: float = 0.2,
        gradient_weight: float = 1.0,
        qabf_weight: float = 0.0,
        ssim_weight: float = 0.0,
        qabf_border: str = "valid",
        anchor_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if qabf_border not in QABF_BORDERS:
            raise ValueError(f"qabf_border must be one of {QABF_BORDERS}, got {qabf_border!r}")
        self.intensity_weight = intensity_weight
        self.gradient_weight = gradient_weight
        self.qabf_weight = qabf_weight
        self.ssim_weight = ssim_weight
        self.qabf_border = qabf_border
        self.anchor_weight = anchor_weight
        self.components: dict[str, float] = {}

    def forward(
        self, fused: Tensor, ir: Tensor, vis_y: Tensor, prior: Tensor | None = None
    ) -> Tensor:
        terms: dict[str, tuple[float, Tensor]] = {}
        if self.intensity_weight:
            terms["intensity"] = (
                self.intensity_weight, F.l1_loss(fused, torch.maximum(ir, vis_y))
            )
        if self.gradient_weight:
            target = torch.maximum(sobel_magnitude(ir), sobel_magnitude(vis_y))
            terms["gradient"] = (self.gradient_weight, F.l1_loss(sobel_magnitude(fused), target))
        if self.qabf_weight:
            score = soft_qabf(fused, ir, vis_y, self.qabf_border).mean()
            terms["qabf"] = (self.qabf_weight, 1.0 - score)
        if self.ssim_weight:
            score = (ssim_valid(fused, ir) + ssim_valid(fused, vis_y)) / 2
            terms["ssim"] = (self.ssim_weight, 1.0 - score.mean())
        if self.anchor_weight and prior is not None:
            low = F.avg_pool2d(fused - prior, ANCHOR_WINDOW, stride=ANCHOR_WINDOW // 2)
            terms["anchor"] = (self.anchor_weight, low.abs().mean())
        self.components = {name: value.item() for name, (_, value) in terms.items()}
        return sum((weight * value for weight, value in terms.values()), fused.new_zeros(()))


def ssim_valid(x: Tensor, y: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """SSIM of ``x`` against ``y`` with a separable gaussian window, over valid positions.

    The constants of :func:`cldyn_ros.metrics.ssim` (K1 = 0.01, K2 = 0.03, data range 1,
    11x11 gaussian of sigma 1.5), computed with two 1-D convolutions instead of one 2-D
    one: the same values away from the border, at a fraction of the cost of the backward
    pass. Shapes: two ``(N, 1, H, W)`` -> ``(N,)``.
    """
    coords = torch.arange(window, dtype=x.dtype, device=x.device) - (window - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = (g / g.sum()).repeat(5, 1, 1, 1)  # (5, 1, 1, window): five maps, one group each
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    blurred = F.conv2d(F.conv2d(stack, g, groups=5), g.transpose(-1, -2), groups=5)
    mu_x, mu_y, xx, yy, xy = blurred.unbind(dim=1)
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return (num / den).mean(dim=(1, 2))


def soft_qabf(fused: Tensor, ir: Tensor, vis: Tensor, border: str = "valid") -> Tensor:
    """Differentiable Q^AB/F: the metric's formula with a gradient everywhere.

    Same Sobel, sigmoids and weighting as :func:`cldyn_ros.metrics.qabf` (which this equals
    up to ``1e-4`` away from ``gx = 0``), but the strength is ``sqrt(gx^2 + gy^2 + eps)`` and
    the orientation uses a ``gx`` kept away from zero, so neither has an infinite derivative.
    ``border="valid"`` scores only pixels whose 3x3 window lies inside the crop: a random
    training crop has no image frame, so the frame edges that zero padding creates would only
    teach the network about crop borders.

    Args:
        fused, ir, vis: ``(N, 1, H, W)`` in ``[0, 1]``.
        border: ``"zeros"``, ``"reflect"`` or ``"valid"``.

    Returns:
        ``(N,)`` scores in ``[0, 1)``.
    """
    batch = fused.shape[0]
    gx, gy = metrics.sobel_xy(torch.cat([fused, ir, vis]) * metrics.GREY_MAX, border)
    strength = torch.sqrt(gx * gx + gy * gy + 1e-6)
    eps = 1e-3
    gx_safe = torch.where(gx >= 0, gx.clamp_min(eps), gx.clamp_max(-eps))
    # Where gx is (near) 0 the metric uses pi/2; atan(gy / eps) tends to +-pi/2 there.
    alpha = torch.where(gx.abs() < eps, torch.full_like(gx, math.pi / 2), torch.atan(gy / gx_safe))
    g_f, g_a, g_b = strength.split(batch)
    a_f, a_a, a_b = alpha.split(batch)
    q_af = metrics.edge_preservation(g_a, a_a, g_f, a_f)
    q_bf = metrics.edge_preservation(g_b, a_b, g_f, a_f)
    num = (q_af * g_a + q_bf * g_b).sum(dim=(1, 2, 3))
    den = (g_a + g_b).sum(dim=(1, 2, 3)).clamp_min(1e-6)
    return num / den
