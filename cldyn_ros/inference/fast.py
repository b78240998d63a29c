"""Deployment rewrites of the CLDyN network: same outputs up to float rounding, faster.

The architecture (:mod:`cldyn_ros.model`) stays as the method describes it; the engine and
the ONNX export run :func:`inference_copy`: batch norms folded into the convolutions, the
fusion block's attention on separable pools and Sobel over shifted views, reflect-padded
convolutions without padded copies, in-place activations.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F  # noqa: N812  (torch convention)
from torch import Tensor, nn

from ..model import CLDyN
from ..model.layers import ConvBNAct, box_mean, sobel_xy
from ..model.vfn import AttentionFusion

__all__ = ["FastAttentionFusion", "ReflectConv2d", "fold_batch_norm", "inference_copy"]


def inference_copy(model: CLDyN) -> CLDyN:
    """An equivalent copy for inference: eval mode, no gradients, every batch norm that
    follows a convolution folded into it, in-place activations. Outputs equal ``model``'s
    in eval mode up to float rounding. The original is left untouched."""
    fused = copy.deepcopy(model).eval()
    for module in list(fused.modules()):
        if isinstance(module, ConvBNAct):
            _fold_sequential(module)
    fused.vfn.fusion = FastAttentionFusion(fused.vfn.fusion)  # type: ignore[assignment]
    for module in list(fused.vfn.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Conv2d) and child.padding_mode == "reflect":
                setattr(module, name, ReflectConv2d(child))
    fused.requires_grad_(False)
    return fused


def _max3x3(x: Tensor) -> Tensor:
    """3x3 stride-1 max pool with ``padding=1`` (borders: the window's valid pixels), as
    two separable maxima of shifted views. Replicate padding gives the same maxima as
    ignoring the outside, since the replicated pixels are inside the window already."""
    p = F.pad(x, (1, 1, 0, 0), mode="replicate")
    h = torch.maximum(torch.maximum(p[..., :-2], p[..., 1:-1]), p[..., 2:])
    p = F.pad(h, (0, 0, 1, 1), mode="replicate")
    return torch.maximum(torch.maximum(p[..., :-2, :], p[..., 1:-1, :]), p[..., 2:, :])


def _avg3x3(x: Tensor) -> Tensor:
    """3x3 stride-1 mean over the valid pixels of each window (``count_include_pad=False``):
    the pooling kernel on channels-last features (faster there), else the package's box
    filter on shifted views."""
    if _channels_last(x):
        return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    return box_mean(x, 3, "valid")


def _channels_last(x: Tensor) -> bool:
    return x.shape[1] > 1 and not x.is_contiguous() and x.is_contiguous(
        memory_format=torch.channels_last
    )


def _sobel_l1(x: Tensor) -> Tensor:
    """``|Sobel_x| + |Sobel_y|`` per channel with replicate borders, separably (on a
    channels-first copy of channels-last features: shifted views along W are slow there)."""
    if _channels_last(x):
        return _sobel_l1(x.contiguous()).contiguous(memory_format=torch.channels_last)
    gx, gy = sobel_xy(x, "replicate")
    return gx.abs_().add_(gy.abs_())


class FastAttentionFusion(nn.Module):
    """Inference form of :class:`AttentionFusion` with the same output: separable 3x3
    pools and Sobel on shifted views (no pooling indices, no depthwise conv), reflect-padded
    convolutions without padded copies (:class:`ReflectConv2d`), and the two spatial conv
    blocks' second convolutions summed instead of added after two sigmoid inputs are built
    (``conv_a(h_a) + conv_m(h_m)``, the same sum the original computes)."""

    def __init__(self, att: AttentionFusion) -> None:
        super().__init__()
        self.mlp_avg, self.mlp_max = att.mlp_avg, att.mlp_max
        self.avg1, self.avg2 = _reflect(att.spatial_avg[0]), _reflect(att.spatial_avg[2])
        self.max1, self.max2 = _reflect(att.spatial_max[0]), _reflect(att.spatial_max[2])

    def forward(self, features: Tensor) -> Tensor:
        g = features + _sobel_l1(features)
        channel = self.mlp_avg(g.mean(dim=(2, 3), keepdim=True)) + self.mlp_max(
            g.amax(dim=(2, 3), keepdim=True)
        )
        spatial = self.avg2(self.avg1(_avg3x3(g)).relu_())
        spatial += self.max2(self.max1(_max3x3(g)).relu_())
        return g * torch.sigmoid(channel * spatial)


class ReflectConv2d(nn.Module):
    """A reflect-padded convolution computed without padding the whole input.

    ``nn.Conv2d(padding_mode="reflect")`` copies the input into a padded tensor first; for
    the wide feature maps of the VFN that copy costs as much as a thin convolution. Here the
    convolution runs with zero padding (inside the convolution routine, no copy), and only
    the ``p``-pixel frame of the output, the part the padding mode affects, is recomputed
    from reflect-padded strips of the input. Same values up to float rounding.
    Shapes: as the wrapped convolution; falls back to padding for inputs smaller than
    ``2p + 1`` pixels.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.padding_mode != "reflect" or conv.groups != 1 or conv.stride != (1, 1):
            raise ValueError("ReflectConv2d wraps stride-1 ungrouped reflect-padded convs")
        self.weight, self.bias = conv.weight, conv.bias
        self.dilation = conv.dilation
        padding = conv.padding
        if isinstance(padding, str):
            raise ValueError("ReflectConv2d needs numeric padding")
        self.pad = int(padding[0])
        if padding != (self.pad, self.pad):
            raise ValueError("ReflectConv2d needs the same padding on both axes")

    def _conv(self, x: Tensor, padding: int = 0) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, padding=padding, dilation=self.dilation)

    def forward(self, x: Tensor) -> Tensor:
        p = self.pad
        h, w = x.shape[-2:]
        if p == 0:
            return self._conv(x)
        if h < 3 * p or w < 3 * p:
            return self._conv(F.pad(x, (p, p, p, p), mode="reflect"))
        out = self._conv(x, padding=p)  # exact except the p-pixel frame
        out[..., :p, :] = self._conv(F.pad(x[..., : 2 * p, :], (p, p, p, 0), mode="reflect"))
        out[..., h - p :, :] = self._conv(
            F.pad(x[..., h - 2 * p :, :], (p, p, 0, p), mode="reflect")
        )
        out[..., p : h - p, :p] = self._conv(F.pad(x[..., :, : 2 * p], (p, 0, 0, 0),
                                                   mode="reflect"))
        out[..., p : h - p, w - p :] = self._conv(
            F.pad(x[..., :, w - 2 * p :], (0, p, 0, 0), mode="reflect")
        )
        return out


def _reflect(module: nn.Module) -> ReflectConv2d:
    assert isinstance(module, nn.Conv2d)
    return ReflectConv2d(module)


def fold_batch_norm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A convolution equal to ``bn(conv(x))`` with ``bn`` in eval mode (running stats)."""
    if bn.running_var is None or bn.running_mean is None:
        raise ValueError("fold_batch_norm needs a batch norm with running statistics")
    folded = copy.deepcopy(conv)
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        folded.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        new_bias = (bias - bn.running_mean) * scale + bn.bias
        if folded.bias is None:
            folded.bias = nn.Parameter(new_bias)
        else:
            folded.bias.copy_(new_bias)
    return folded


def _fold_sequential(seq: nn.Sequential) -> None:
    """Fold every ``Conv2d, BatchNorm2d`` pair of ``seq`` in place; activations in place."""
    names = list(seq._modules)
    for a, b in zip(names, names[1:], strict=False):
        conv, bn = seq._modules[a], seq._modules[b]
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            seq._modules[a] = fold_batch_norm(conv, bn)
            seq._modules[b] = nn.Identity()
    for module in seq._modules.values():
        if isinstance(module, nn.LeakyReLU):
            module.inplace = True
