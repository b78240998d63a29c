"""Building blocks shared by the VFN backbone and the RSC compensation blocks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NEGATIVE_SLOPE = 0.2


class ConvBNAct(nn.Sequential):
    """Reflect-padded ``k x k`` convolution, batch norm and LeakyReLU(0.2).

    Shapes: ``(N, in_channels, H, W) -> (N, out_channels, H, W)`` for any ``H, W``
    (the padding keeps the resolution; reflect padding avoids dark borders in the fusion).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        dilation: int = 1,
        norm: bool = True,
        act: bool = True,
    ) -> None:
        padding = dilation * (kernel_size - 1) // 2
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                padding=padding,
                dilation=dilation,
                padding_mode="reflect" if padding else "zeros",
            )
        ]
        if norm:
            layers.append(nn.BatchNorm2d(out_channels))
        if act:
            layers.append(nn.LeakyReLU(NEGATIVE_SLOPE))
        super().__init__(*layers)


class DenseBlock(nn.Module):
    """Residual dense block of the VFN at a fixed width.

    Two dilated (d=2) 3x3 conv-BN-LReLU layers whose outputs are concatenated with the input,
    a 1x1 conv + LReLU back to ``channels``, and a skip connection.
    Shapes: ``(N, C, H, W) -> (N, C, H, W)``.
    """

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(channels, channels, 3, dilation=2)
        self.conv2 = ConvBNAct(2 * channels, channels, 3, dilation=2)
        self.merge = ConvBNAct(3 * channels, channels, 1, norm=False)

    def forward(self, x: Tensor) -> Tensor:
        y1 = self.conv1(x)
        y2 = self.conv2(torch.cat([x, y1], dim=1))
        return x + self.merge(torch.cat([x, y1, y2], dim=1))


def sobel_xy(x: Tensor, border: str = "zeros") -> tuple[Tensor, Tensor]:
    """3x3 Sobel derivatives ``(gx, gy)`` per channel: the one Sobel of the package (the
    fusion block, its inference form, the Q^AB/F metric and the training losses).

    Shapes: ``(N, C, H, W)`` -> two ``(N, C, H, W)`` (``H - 2`` x ``W - 2`` for ``"valid"``).
    ``border``: ``"zeros"``, ``"reflect"`` or ``"replicate"`` padding, or ``"valid"``.
    """
    padded = x if border == "valid" else F.pad(
        x, (1, 1, 1, 1), mode="constant" if border == "zeros" else border
    )
    # Separable Sobel ([1, 2, 1] smoothing x [-1, 0, 1] difference) with shifted slices: the
    # same numbers as conv2d with the 3x3 kernels, several times faster than a one-channel
    # conv2d on CPU.
    diff_x = padded[..., :, 2:] - padded[..., :, :-2]
    gx = diff_x[..., :-2, :] + 2 * diff_x[..., 1:-1, :] + diff_x[..., 2:, :]
    smooth_x = padded[..., :, :-2] + 2 * padded[..., :, 1:-1] + padded[..., :, 2:]
    gy = smooth_x[..., 2:, :] - smooth_x[..., :-2, :]
    return gx, gy


def sobel_magnitude(x: Tensor) -> Tensor:
    """Per-channel gradient magnitude ``|Sobel_x| + |Sobel_y|`` with replicate borders.

    Shapes: ``(N, C, H, W) -> (N, C, H, W)``. Parameter-free; the L1 form matches the
    method's gradient loss and is cheaper than the Euclidean norm.
    """
    gx, gy = sobel_xy(x, "replicate")
    return gx.abs() + gy.abs()
