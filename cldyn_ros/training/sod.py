"""A small salient-object-detection network: U^2-Net-lite (U2NETP).

U^2-Net (Qin et al., "U^2-Net: Going deeper with nested U-structure for salient object
detection", Pattern Recognition 2020) stacks residual U-blocks (RSU) in a U-shaped network;
U2NETP is its small configuration (every block with 16 inner and 64 outer channels, about
1.1 M parameters). Six side outputs (one per decoder stage and the bottom stage) are
upsampled to the input size and fused by a 1x1 convolution; all seven are supervised in
training (deep supervision). Written from the paper's description.

The loss here is BCE + soft IoU (:func:`bce_iou_loss`), as in BASNet-style SOD training.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["RSU", "RSU4F", "U2NetP", "bce_iou_loss", "sod_deep_loss"]


class ConvBNReLU(nn.Sequential):
    """3x3 convolution (dilation ``d``), batch norm, ReLU; keeps the spatial size."""

    def __init__(self, cin: int, cout: int, dilation: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _up_to(x: Tensor, ref: Tensor) -> Tensor:
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


class RSU(nn.Module):
    """Residual U-block of height ``height`` (RSU-7 ... RSU-4).

    ``(B, cin, H, W) -> (B, cout, H, W)``: an input convolution, a small encoder-decoder with
    ``height - 2`` poolings (``mid`` channels, dilated convolution at the bottom), added to
    the input convolution's output.
    """

    def __init__(self, height: int, cin: int, mid: int, cout: int) -> None:
        super().__init__()
        self.inp = ConvBNReLU(cin, cout)
        self.enc = nn.ModuleList([ConvBNReLU(cout, mid)]
                                 + [ConvBNReLU(mid, mid) for _ in range(height - 2)])
        self.bottom = ConvBNReLU(mid, mid, dilation=2)
        self.dec = nn.ModuleList([ConvBNReLU(2 * mid, mid) for _ in range(height - 2)]
                                 + [ConvBNReLU(2 * mid, cout)])

    def forward(self, x: Tensor) -> Tensor:
        hx_in = self.inp(x)
        feats = []
        h = hx_in
        for i, conv in enumerate(self.enc):
            if i > 0:
                h = F.max_pool2d(h, 2, ceil_mode=True)
            h = conv(h)
            feats.append(h)
        h = self.bottom(h)
        for conv, skip in zip(self.dec, reversed(feats), strict=True):
            h = conv(torch.cat([_up_to(h, skip), skip], 1))
        return h + hx_in


class RSU4F(nn.Module):
    """RSU-4F: the residual U-block without pooling (dilations 1, 2, 4, 8), for the
    low-resolution stages. ``(B, cin, H, W) -> (B, cout, H, W)``."""

    def __init__(self, cin: int, mid: int, cout: int) -> None:
        super().__init__()
        self.inp = ConvBNReLU(cin, cout)
        self.enc = nn.ModuleList([ConvBNReLU(cout, mid, 1), ConvBNReLU(mid, mid, 2),
                                  ConvBNReLU(mid, mid, 4)])
        self.bottom = ConvBNReLU(mid, mid, 8)
        self.dec = nn.ModuleList([ConvBNReLU(2 * mid, mid, 4), ConvBNReLU(2 * mid, mid, 2),
                                  ConvBNReLU(2 * mid, cout, 1)])

    def forward(self, x: Tensor) -> Tensor:
        hx_in = self.inp(x)
        feats = []
        h = hx_in
        for conv in self.enc:
            h = conv(h)
            feats.append(h)
        h = self.bottom(h)
        for conv, skip in zip(self.dec, reversed(feats), strict=True):
            h = conv(torch.cat([h, skip], 1))
        return h + hx_in


class U2NetP(nn.Module):
    """U2NETP: ``(B, in_channels, H, W)`` -> saliency logits.

    In training mode the output is a tuple ``(fused, side1, ..., side6)`` of ``(B, 1, H, W)``
    logits (for deep supervision); in eval mode only ``fused``. The bottom stage
    ``stage6`` (``width`` channels at 1/32 resolution) is the natural task-feature layer.
    ``input_scale`` < 1 runs the network on the input resized by that factor and returns
    logits resized back (SOD networks usually run at a fixed reduced size; this keeps the
    CPU cost in bounds).
    """

    def __init__(self, in_channels: int = 3, mid: int = 16, width: int = 64,
                 input_scale: float = 1.0) -> None:
        super().__init__()
        self.input_scale = float(input_scale)
        self.stage1 = RSU(7, in_channels, mid, width)
        self.stage2 = RSU(6, width, mid, width)
        self.stage3 = RSU(5, width, mid, width)
        self.stage4 = RSU(4, width, mid, width)
        self.stage5 = RSU4F(width, mid, width)
        self.stage6 = RSU4F(width, mid, width)
        self.stage5d = RSU4F(2 * width, mid, width)
        self.stage4d = RSU(4, 2 * width, mid, width)
        self.stage3d = RSU(5, 2 * width, mid, width)
        self.stage2d = RSU(6, 2 * width, mid, width)
        self.stage1d = RSU(7, 2 * width, mid, width)
        self.side = nn.ModuleList([nn.Conv2d(width, 1, 3, padding=1) for _ in range(6)])
        self.fuse = nn.Conv2d(6, 1, 1)

    def forward(self, x: Tensor) -> Any:
        full = x
        if self.input_scale != 1.0:
            x = F.interpolate(x, scale_factor=self.input_scale, mode="bilinear",
                              align_corners=False, recompute_scale_factor=False)
        enc = []
        h = x
        for i, stage in enumerate((self.stage1, self.stage2, self.stage3, self.stage4,
                                   self.stage5)):
            if i > 0:
                h = F.max_pool2d(h, 2, ceil_mode=True)
            h = stage(h)
            enc.append(h)
        h = self.stage6(F.max_pool2d(h, 2, ceil_mode=True))
        dec = [h]
        for stage, skip in zip((self.stage5d, self.stage4d, self.stage3d, self.stage2d,
                                self.stage1d), reversed(enc), strict=True):
            h = stage(torch.cat([_up_to(h, skip), skip], 1))
            dec.append(h)
        # side outputs from the finest (stage1d) to the bottom (stage6)
        sides = [_up_to(conv(f), full)
                 for conv, f in zip(self.side, reversed(dec), strict=True)]
        fused = self.fuse(torch.cat(sides, 1))
        return (fused, *sides) if self.training else fused


def bce_iou_loss(logits: Any, target: Tensor) -> Tensor:
    """BCE with logits + soft IoU loss ``1 - sum(p t) / sum(p + t - p t)`` per image, on the
    fused output (the first tensor of a tuple)."""
    out = logits[0] if isinstance(logits, (tuple, list)) else logits
    target = target.to(out.dtype)
    bce = F.binary_cross_entropy_with_logits(out, target)
    p = torch.sigmoid(out)
    inter = (p * target).flatten(1).sum(1)
    union = (p + target - p * target).flatten(1).sum(1)
    iou = 1.0 - (inter + 1.0) / (union + 1.0)
    return bce + iou.mean()


def sod_deep_loss(outputs: Any, target: Tensor) -> Tensor:
    """Deep supervision: :func:`bce_iou_loss` summed over the fused and all side outputs."""
    outs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    total = bce_iou_loss(outs[0], target)
    for o in outs[1:]:
        total = total + bce_iou_loss(o, target)
    return total
