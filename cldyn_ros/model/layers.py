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


def box_mean(x: Tensor, size: int, border: str = "replicate") -> Tensor:
    """Mean over a ``size x size`` window per channel (odd ``size``): the one box filter of
    the package (the detail prior's levels and the 3x3 pool of the fusion block's inference
    form). Shape-preserving: ``(N, C, H, W) -> (N, C, H, W)``.

    ``border``:

    - ``"replicate"``: the window reaches past the edge into replicated edge pixels; the
      sums are running sums (a cumulative sum along each axis, then differences), so the
      cost does not grow with ``size``; float32 running sums are exact to about ``1e-5`` of
      the grey range at 640 px rows (far below one 8-bit level).
    - ``"valid"``: the mean of the window's pixels inside the image (``F.avg_pool2d`` with
      ``count_include_pad=False``); the sums are of ``size`` shifted views per axis, for the
      small windows this mode serves.
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"box size must be odd and positive, got {size}")
    pad = size // 2
    if border == "replicate":
        rows = F.pad(x, (pad + 1, pad, 0, 0), mode="replicate").cumsum(-1)
        x = (rows[..., size:] - rows[..., :-size]) / size
        cols = F.pad(x, (0, 0, pad + 1, pad), mode="replicate").cumsum(-2)
        return (cols[..., size:, :] - cols[..., :-size, :]) / size
    if border == "valid":
        count = _window_sums(torch.ones_like(x[:1, :1]), size)  # pixels inside each window
        return _window_sums(x, size) / count
    raise ValueError(f"box border must be 'replicate' or 'valid', got {border!r}")


def _window_sums(x: Tensor, size: int) -> Tensor:
    """Sums over ``size x size`` windows of the zero-padded input, from shifted views."""
    pad, height, width = size // 2, x.shape[-2], x.shape[-1]
    p = F.pad(x, (pad, pad, pad, pad))
    s = p[..., :width]
    for i in range(1, size):
        s = s + p[..., i:i + width]
    out = s[..., :height, :]
    for i in range(1, size):
        out = out + s[..., i:i + height, :]
    return out


def sobel_magnitude(x: Tensor) -> Tensor:
    """Per-channel gradient magnitude ``|Sobel_x| + |Sobel_y|`` with replicate borders.

    Shapes: ``(N, C, H, W) -> (N, C, H, W)``. Parameter-free; the L1 form matches the
    method's gradient loss and is cheaper than the Euclidean norm.
    """
    gx, gy = sobel_xy(x, "replicate")
    return gx.abs() + gy.abs()
