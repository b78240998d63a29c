"""VFN: the unsupervised fusion backbone of CLDyN (stage 1).

With ``num_blocks = 2`` (the paper's L) the network has exactly 34,761 trainable
parameters. Everything runs at full resolution; any ``H x W`` works.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import ConvBNAct, DenseBlock, box_mean, sobel_magnitude


class Encoder(nn.Module):
    """Per-modality feature extractor: stem ``1 -> 4 -> 8`` channels, then ``L`` dense blocks.

    The stem and the blocks are exposed separately because RSC compensation is inserted
    between consecutive dense blocks. Shapes: ``(N, 1, H, W) -> (N, 8, H, W)``.
    """

    def __init__(self, num_blocks: int = 2, channels: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(ConvBNAct(1, 4), ConvBNAct(4, channels))
        self.blocks = nn.ModuleList(DenseBlock(channels) for _ in range(num_blocks))

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return x


class AttentionFusion(nn.Module):
    """Gradient-aware channel x spatial attention on the concatenated modality features.

    ``g = F + |grad F|`` (Sobel magnitude per channel) sharpens the features the attention
    looks at; the channel attention is ``MLP_a(avgpool g) + MLP_m(maxpool g)`` (global pools)
    and the spatial attention ``Blk_a(avgpool3x3 g) + Blk_m(maxpool3x3 g)``; the output is
    ``g * sigmoid(channel * spatial)``. The method doc leaves open where the gradient enters;
    adding it to the features is our choice and costs no parameters.
    Shapes: ``(N, 16, H, W) -> (N, 16, H, W)``.
    """

    def __init__(self, channels: int = 16, hidden: int = 32) -> None:
        super().__init__()
        self.mlp_avg = self._mlp(channels, hidden)
        self.mlp_max = self._mlp(channels, hidden)
        self.spatial_avg = self._conv_block(channels, hidden)
        self.spatial_max = self._conv_block(channels, hidden)

    @staticmethod
    def _mlp(channels: int, hidden: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1)
        )

    @staticmethod
    def _conv_block(channels: int, hidden: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(channels, hidden, 3, padding=1, padding_mode="reflect"),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 3, padding=1, padding_mode="reflect"),
        )

    def forward(self, features: Tensor) -> Tensor:
        g = features + sobel_magnitude(features)
        channel = self.mlp_avg(g.mean(dim=(2, 3), keepdim=True)) + self.mlp_max(
            g.amax(dim=(2, 3), keepdim=True)
        )
        spatial = self.spatial_avg(
            F.avg_pool2d(g, 3, stride=1, padding=1, count_include_pad=False)
        ) + self.spatial_max(F.max_pool2d(g, 3, stride=1, padding=1))
        return g * torch.sigmoid(channel * spatial)


class Decoder(nn.Module):
    """Reconstruction: ``16 -> 8`` channels, ``L`` dense blocks, ``8 -> 4 -> 1``, then
    ``(tanh + 1) / 2`` so the fused luminance lies in ``[0, 1]``; or, given a ``prior``
    image, ``clamp(prior + tanh, 0, 1)``: the decoder then predicts a correction of the prior.
    Shapes: ``(N, 16, H, W) -> (N, 1, H, W)``.
    """

    def __init__(self, num_blocks: int = 2, channels: int = 8) -> None:
        super().__init__()
        self.head = ConvBNAct(2 * channels, channels)
        self.blocks = nn.Sequential(*(DenseBlock(channels) for _ in range(num_blocks)))
        self.tail = nn.Sequential(
            ConvBNAct(channels, channels // 2),
            nn.Conv2d(channels // 2, 1, 3, padding=1, padding_mode="reflect"),
        )

    def residual(self, x: Tensor) -> Tensor:
        """The decoder's output before it is combined with a prior: ``tanh`` of the last
        convolution, in ``[-1, 1]``. Shapes: ``(N, 16, H, W) -> (N, 1, H, W)``."""
        return torch.tanh(self.tail(self.blocks(self.head(x))))

    def forward(self, x: Tensor, prior: Tensor | None = None) -> Tensor:
        x = self.residual(x)
        if prior is None:
            return (x + 1.0) / 2.0
        return (prior + x).clamp(0.0, 1.0)


def detail_selection(
    ir: Tensor, vis_y: Tensor, sizes: tuple[int, ...] = (3, 7, 15), window: int = 5
) -> Tensor:
    """Multi-scale detail selection: a classic fusion rule, used as the VFN's prior.

    Each source is split into detail layers ``x - box_k(x)`` for the box sizes in ``sizes``
    (each level filters the previous level's base) and a base layer. The fused image is the
    mean of the two bases plus, per level and pixel, the detail of the source whose mean
    absolute detail over a ``window x window`` neighbourhood is larger (so a flat, hazy
    source does not wash out the other's texture, as the per-pixel maximum does).
    Shapes: two ``(N, 1, H, W)`` in ``[0, 1]`` -> ``(N, 1, H, W)`` in ``[0, 1]``.
    """
    base = torch.cat([ir, vis_y], dim=1)  # both sources through each filter at once
    fused = torch.zeros_like(ir)
    for size in sizes:
        low = box_mean(base, size)
        detail = base - low
        energy = box_mean(detail.abs(), window)
        keep_ir = energy[:, :1] >= energy[:, 1:]
        fused = fused + torch.where(keep_ir, detail[:, :1], detail[:, 1:])
        base = low
    return (fused + base.mean(dim=1, keepdim=True)).clamp(0.0, 1.0)


class VFN(nn.Module):
    """Visible-infrared fusion network.

    ``forward(ir, vis_y)`` takes the infrared image and the visible luminance, both
    ``(N, 1, H, W)`` in ``[0, 1]``, and returns the fused luminance ``(N, 1, H, W)`` in
    ``[0, 1]``. The encoders are separate modules (separate weights per modality) so
    :class:`~cldyn_ros.model.cldyn.CLDyN` can insert compensation between their blocks.

    ``prior="none"`` is the method: the decoder outputs the fused image. With a prior the
    decoder outputs a correction of a parameter-free fusion of the inputs: ``"max"``, the
    per-pixel maximum ``max(ir, vis_y)``, or ``"detail"``, :func:`detail_selection` (a
    three-level box-filter decomposition that keeps, per level and pixel, the detail of the
    source with more local detail energy). The last convolution then starts at zero, so an
    untrained network returns the prior itself.
    """

    PRIORS = ("none", "max", "detail")

    def __init__(self, num_blocks: int = 2, channels: int = 8, prior: str = "none") -> None:
        super().__init__()
        if prior not in self.PRIORS:
            raise ValueError(f"prior must be one of {self.PRIORS}, got {prior!r}")
        self.num_blocks = num_blocks
        self.prior = prior
        self.encoder_ir = Encoder(num_blocks, channels)
        self.encoder_vis = Encoder(num_blocks, channels)
        self.fusion = AttentionFusion(2 * channels, 4 * channels)
        self.decoder = Decoder(num_blocks, channels)
        if prior != "none":
            self.reset_output()

    def reset_output(self) -> None:
        """Zero the last convolution: with a prior, the output is then the prior itself."""
        last = self.decoder.tail[-1]
        assert isinstance(last, nn.Conv2d) and last.bias is not None
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def prior_image(self, ir: Tensor, vis_y: Tensor) -> Tensor | None:
        """The image the decoder corrects (``None`` for the method's ``prior="none"``)."""
        if self.prior == "max":
            return torch.maximum(ir, vis_y)
        if self.prior == "detail":
            return detail_selection(ir, vis_y)
        return None

    def fuse_features(self, f_ir: Tensor, f_vis: Tensor, prior: Tensor | None = None) -> Tensor:
        """Attention fusion and reconstruction: ``2 x (N, 8, H, W) -> (N, 1, H, W)``;
        ``prior`` is :meth:`prior_image` of the inputs (``(N, 1, H, W)``)."""
        return self.decoder(self.fusion(torch.cat([f_ir, f_vis], dim=1)), prior)

    def fuse_correction(self, f_ir: Tensor, f_vis: Tensor) -> Tensor:
        """The decoder's correction of the prior, before it is added: ``2 x (N, 8, H, W) ->
        (N, 1, H, W)`` in ``[-1, 1]`` (``fuse_features`` returns ``clamp(prior + this)``)."""
        return self.decoder.residual(self.fusion(torch.cat([f_ir, f_vis], dim=1)))

    def forward(self, ir: Tensor, vis_y: Tensor) -> Tensor:
        return self.fuse_features(
            self.encoder_ir(ir), self.encoder_vis(vis_y), self.prior_image(ir, vis_y)
        )
