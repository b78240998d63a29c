"""Reduced internal resolution: the network at a fraction of the frame size, the
parameter-free prior and the composition at the frame's full size.

A VFN with a prior (``prior="detail"`` or ``"max"``) outputs ``clamp(prior + r)``, where
``r`` is the decoder's correction. The prior carries the fine structure and costs a few
percent of the network, so :class:`ReducedScaleFusion` computes ``r`` from inputs
area-downsampled by ``scale`` (about ``scale^2`` of the network's cost), upsamples it
bilinearly and adds it to the prior of the full-resolution inputs. ``scale = 1`` is the
model itself (the engine does not wrap it then). The same module is used for inference and,
differentiably, for fine-tuning a model at its deployment scale.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from ..model import CLDyN

#: Shortest internal side: the dilated 3x3 convolutions reflect-pad by 2 pixels.
MIN_INTERNAL_SIDE = 8


def check_internal_scale(scale: float) -> float:
    """``scale`` as a float in ``(0, 1]``, or a :class:`ValueError` saying what is allowed."""
    try:
        value = float(scale)
    except (TypeError, ValueError):
        raise ValueError(f"internal_scale must be a number in (0, 1], got {scale!r}") from None
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise ValueError(f"internal_scale must be in (0, 1] (1 = full resolution), got {scale}")
    return value


def internal_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """The network's input size for a ``height x width`` frame: ``round(side * scale)``,
    at least :data:`MIN_INTERNAL_SIDE` (and at most the frame's side)."""

    def side(n: int) -> int:
        return min(n, max(MIN_INTERNAL_SIDE, round(n * scale)))

    return side(height), side(width)


class ReducedScaleFusion(nn.Module):
    """A CLDyN model with a prior, run at ``scale`` of the frame size.

    Same interface as the model for the engine: ``forward(ir, vis_y)`` (plain fusion),
    :meth:`fuse_tasks` and :meth:`embed_tasks`. The wrapped ``model`` is shared, not copied.
    Shapes: as :class:`~cldyn_ros.model.cldyn.CLDyN` (output at the input's size).
    """

    def __init__(self, model: CLDyN, scale: float) -> None:
        super().__init__()
        scale = check_internal_scale(scale)
        if model.vfn.prior == "none":
            raise ValueError(
                "internal_scale < 1 needs a model whose VFN corrects a prior (prior 'detail' "
                "or 'max'); this checkpoint has prior 'none', whose network makes the whole "
                "image, so it would only come out blurred")
        self.model = model
        self.scale = scale

    @property
    def config(self):
        return self.model.config

    def embed_tasks(self, task_vectors: Tensor) -> dict[tuple[str, int], Tensor]:
        return self.model.embed_tasks(task_vectors)

    def _down(self, x: Tensor) -> Tensor:
        size = internal_size(x.shape[-2], x.shape[-1], self.scale)
        if size == tuple(x.shape[-2:]):
            return x
        return F.interpolate(x, size=size, mode="area")

    @staticmethod
    def _compose(prior: Tensor, correction: Tensor) -> Tensor:
        if correction.shape[-2:] != prior.shape[-2:]:
            correction = F.interpolate(correction, size=prior.shape[-2:], mode="bilinear",
                                       align_corners=False)
        return (prior + correction).clamp(0.0, 1.0)

    def forward(self, ir: Tensor, vis_y: Tensor) -> Tensor:
        """Plain fusion: ``(B, 1, H, W) x 2 -> (B, 1, H, W)``."""
        vfn = self.model.vfn
        prior = vfn.prior_image(ir, vis_y)
        assert prior is not None  # the constructor refuses models without a prior
        correction = vfn.fuse_correction(vfn.encoder_ir(self._down(ir)),
                                         vfn.encoder_vis(self._down(vis_y)))
        return self._compose(prior, correction)

    def fuse_tasks(
        self,
        ir: Tensor,
        vis_y: Tensor,
        task_vectors: Tensor,
        strength: Tensor | float = 1.0,
        task_embeddings: dict[tuple[str, int], Tensor] | None = None,
    ) -> Tensor:
        """Compensated fusion for ``T`` tasks (see :meth:`CLDyN.fuse_tasks`):
        ``-> (T, B, 1, H, W)``; the compensation runs at the internal size too."""
        t, b = task_vectors.shape[0], ir.shape[0]
        features = self.model.task_features(self._down(ir), self._down(vis_y), task_vectors,
                                            strength, task_embeddings)
        correction = self.model.vfn.fuse_correction(*features)
        prior = self.model.vfn.prior_image(ir, vis_y)
        assert prior is not None  # the constructor refuses models without a prior
        prior = prior.repeat(t, 1, 1, 1)
        fused = self._compose(prior, correction)
        return fused.view(t, b, *fused.shape[1:])
