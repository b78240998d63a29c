"""BT.601 full-range RGB <-> YCbCr in torch (the method's colour handling)."""

from __future__ import annotations

import torch
from torch import Tensor

_RGB_TO_YCBCR = (
    (0.299, 0.587, 0.114),
    (-0.1687, -0.3313, 0.5),
    (0.5, -0.4187, -0.0813),
)


def rgb_to_ycbcr(rgb: Tensor) -> Tensor:
    """``(N, 3, H, W)`` RGB in ``[0, 1]`` -> ``(N, 3, H, W)`` Y, Cb, Cr (chroma centred on 0.5)."""
    m = torch.tensor(_RGB_TO_YCBCR, dtype=rgb.dtype, device=rgb.device)
    out = torch.einsum("ij,njhw->nihw", m, rgb)
    offset = torch.tensor([0.0, 0.5, 0.5], dtype=rgb.dtype, device=rgb.device)
    return out + offset.view(1, 3, 1, 1)


def ycbcr_to_rgb(y: Tensor, cb: Tensor, cr: Tensor) -> Tensor:
    """Inverse of :func:`rgb_to_ycbcr`: three ``(N, 1, H, W)`` planes -> ``(N, 3, H, W)`` RGB,
    clamped to ``[0, 1]``. Y may have a leading batch that is a multiple of the chroma batch
    (several fused outputs of the same frame share its colour).
    """
    if y.shape[0] != cb.shape[0]:
        reps = y.shape[0] // cb.shape[0]
        cb, cr = cb.repeat(reps, 1, 1, 1), cr.repeat(reps, 1, 1, 1)
    cb, cr = cb - 0.5, cr - 0.5
    r = y + 1.402 * cr
    g = y - 0.344136 * cb - 0.714136 * cr
    b = y + 1.772 * cb
    return torch.cat([r, g, b], dim=1).clamp_(0.0, 1.0)


def fused_rgb(fused_y: Tensor, vis_rgb: Tensor) -> Tensor:
    """Fused luminance with the visible chroma, as the node renders it: ``(B, 3, H, W)``."""
    ycc = rgb_to_ycbcr(vis_rgb)
    return ycbcr_to_rgb(fused_y, ycc[:, 1:2], ycc[:, 2:3]).clamp(0, 1)
