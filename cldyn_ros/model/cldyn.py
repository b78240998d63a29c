"""CLDyN: the VFN backbone with optional task-driven RSC compensation."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from .rsc import A2SI, RSC
from .vfn import VFN


@dataclass(frozen=True)
class CLDyNConfig:
    """Architecture settings; stored in every checkpoint.

    ``num_blocks`` is the paper's L (dense blocks per encoder and in the decoder),
    ``branches`` its M (dynamic-conv branches per A2SI block). ``embed_max_side`` is the
    longer side (pixels) at which the A2SI image embeddings are computed (block-averaged
    features, see :meth:`A2SI.embed_image`); ``0`` is the method's full resolution. The
    default 160 leaves training crops up to 160 px untouched and cuts the embedding cost
    at 640x512 sixteen-fold (see docs/benchmarks.md, "Speed"). ``prior`` is the VFN's
    output form (``"none"``, the method, ``"max"`` or ``"detail"``, see :class:`VFN`). Checkpoints
    written before a field existed load with its default.
    """

    num_blocks: int = 2
    channels: int = 8
    with_rsc: bool = True
    branches: int = 4
    task_dim: int = 256
    embed_dim: int = 128
    bank_size: int = 32
    basis_dim: int = 256
    kernel_hidden: int = 32
    temperature: float = 0.5
    embed_max_side: int = 160
    prior: str = "none"  # "max" / "detail": the VFN decoder corrects a prior, see VFN

    def __post_init__(self) -> None:
        if self.num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {self.num_blocks}")
        if self.with_rsc and self.num_blocks < 2:
            raise ValueError("RSC sits between dense blocks: it needs num_blocks >= 2")
        if self.branches < 1:
            raise ValueError(f"branches must be >= 1, got {self.branches}")
        if self.embed_max_side < 0:
            raise ValueError(f"embed_max_side must be >= 0, got {self.embed_max_side}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CLDyNConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown architecture settings: {sorted(unknown)}")
        return cls(**data)


class CLDyN(nn.Module):
    """Closed-loop dynamic fusion network.

    Inputs are the infrared image and the visible luminance, ``(B, 1, H, W)`` in ``[0, 1]``.
    Without task vectors the output is the plain VFN fusion. With ``T`` task vectors the
    stems and the first dense block of each encoder (which do not depend on the task) and the
    first A2SI image embedding run once, and the rest runs on ``T x B`` samples, task-major.
    """

    def __init__(self, config: CLDyNConfig | None = None) -> None:
        super().__init__()
        self.config = config or CLDyNConfig()
        c = self.config
        self.vfn = VFN(c.num_blocks, c.channels, c.prior)
        self.rsc = (
            RSC(
                c.num_blocks,
                c.channels,
                c.branches,
                c.task_dim,
                c.embed_dim,
                c.bank_size,
                c.basis_dim,
                c.kernel_hidden,
                c.temperature,
            )
            if c.with_rsc
            else None
        )
        self.set_embed_max_side(c.embed_max_side)

    # ------------------------------------------------------------ speed settings
    def set_embed_max_side(self, max_side: int) -> CLDyN:
        """Run every A2SI image embedding at a longer side of at most ``max_side`` pixels
        (``0``: full resolution). Overrides the config at run time; returns ``self``."""
        if max_side < 0:
            raise ValueError(f"embed_max_side must be >= 0, got {max_side}")
        for block in self._a2si():
            block.embed_max_side = int(max_side)
        return self

    @property
    def embed_max_side(self) -> int:
        blocks = self._a2si()
        return blocks[0].embed_max_side if blocks else self.config.embed_max_side

    def set_static_selection(self, static: bool = True, unfold_conv: bool = False) -> CLDyN:
        """Inference through the gated mixture of all configurations (same forward value,
        no data-dependent shapes: for export, CUDA graphs and ``torch.compile``);
        ``unfold_conv`` computes the dynamic convolutions as im2col matrix products (ONNX
        export with symbolic height and width)."""
        for block in self._a2si():
            block.static_selection = bool(static)
            block.unfold_conv = bool(unfold_conv)
        return self

    def _a2si(self) -> list[A2SI]:
        return [] if self.rsc is None else [b for _, _, b in self.rsc.a2si_blocks()]

    def embed_tasks(self, task_vectors: Tensor) -> dict[tuple[str, int], Tensor]:
        """The task-only part of every A2SI block: ``(T, task_dim)`` -> ``{(modality,
        index): (T, embed_dim)}``. Depends on the task vectors only, so callers serving a
        fixed set of tasks compute it once and pass it to :meth:`fuse_tasks`."""
        if self.rsc is None:
            raise RuntimeError("this model has no RSC: it has no task embeddings")
        return {(m, i): block.task_embed(task_vectors) for m, i, block in self.rsc.a2si_blocks()}

    def forward(self, ir: Tensor, vis_y: Tensor) -> Tensor:
        """Plain VFN fusion: ``(B, 1, H, W) x 2 -> (B, 1, H, W)``."""
        return self.vfn(ir, vis_y)

    def fuse_tasks(
        self,
        ir: Tensor,
        vis_y: Tensor,
        task_vectors: Tensor,
        strength: Tensor | float = 1.0,
        task_embeddings: dict[tuple[str, int], Tensor] | None = None,
    ) -> Tensor:
        """Compensated fusion for several tasks at once, sharing the task-independent work.

        Args:
            ir, vis_y: ``(B, 1, H, W)`` in ``[0, 1]``.
            task_vectors: ``(T, task_dim)``.
            strength: scalar or ``(T,)`` compensation strengths in ``[0, 1]``.
            task_embeddings: optional :meth:`embed_tasks` of ``task_vectors`` (cached).

        Returns:
            ``(T, B, 1, H, W)``.
        """
        t = task_vectors.shape[0]
        features = self.task_features(ir, vis_y, task_vectors, strength, task_embeddings)
        prior = self.vfn.prior_image(ir, vis_y)
        if prior is not None:
            prior = prior.repeat(t, 1, 1, 1)
        fused = self.vfn.fuse_features(*features, prior)
        return fused.view(t, ir.shape[0], *fused.shape[1:])

    def task_features(
        self,
        ir: Tensor,
        vis_y: Tensor,
        task_vectors: Tensor,
        strength: Tensor | float = 1.0,
        task_embeddings: dict[tuple[str, int], Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The compensated encoder features of :meth:`fuse_tasks` (everything before the
        attention fusion): two ``(T x B, 8, H, W)``, task-major."""
        t, b = task_vectors.shape[0], ir.shape[0]
        strengths = torch.as_tensor(strength, dtype=ir.dtype, device=ir.device).expand(t)
        embs = None
        if task_embeddings is not None:
            embs = {k: v.repeat_interleave(b, dim=0) for k, v in task_embeddings.items()}
        return self._encode_compensated(
            ir,
            vis_y,
            task_vectors.to(ir.dtype).repeat_interleave(b, dim=0),
            strengths.repeat_interleave(b),
            repeats=t,
            task_embeddings=embs,
        )

    def fuse_per_sample(
        self, ir: Tensor, vis_y: Tensor, task_features: Tensor, strength: Tensor | float = 1.0
    ) -> Tensor:
        """Compensated fusion with one task vector per sample (closed-loop training).

        Args:
            ir, vis_y: ``(N, 1, H, W)``.
            task_features: ``(N, task_dim)``.
            strength: scalar or ``(N,)``.

        Returns:
            ``(N, 1, H, W)``.
        """
        n = ir.shape[0]
        strengths = torch.as_tensor(strength, dtype=ir.dtype, device=ir.device).expand(n)
        features = self._encode_compensated(ir, vis_y, task_features, strengths, repeats=1)
        return self.vfn.fuse_features(*features, self.vfn.prior_image(ir, vis_y))

    def _encode_compensated(
        self,
        ir: Tensor,
        vis_y: Tensor,
        tasks: Tensor,
        strengths: Tensor,
        repeats: int,
        task_embeddings: dict[tuple[str, int], Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Run the encoders with compensation on ``N = repeats x B`` samples, task-major.

        The stem, the first dense block and the first image embedding depend only on the
        frame, so they run on the ``B`` frames and are repeated. ``-> 2 x (N, 8, H, W)``.
        """
        if self.rsc is None:
            raise RuntimeError("this model has no RSC: use forward() for plain fusion")
        features = []
        for modality, encoder, x in (
            ("ir", self.vfn.encoder_ir, ir),
            ("vis", self.vfn.encoder_vis, vis_y),
        ):
            f = encoder.blocks[0](encoder.stem(x))
            image_emb = self.rsc.block(modality, 0).embed_image(f).repeat(repeats, 1)
            f = f.repeat(repeats, 1, 1, 1)
            for i, block in enumerate(encoder.blocks[1:]):
                emb = image_emb if i == 0 else None
                t_emb = None if task_embeddings is None else task_embeddings[(modality, i)]
                f = block(self.rsc.compensate(modality, i, f, tasks, strengths, emb, t_emb))
            features.append(f)
        return features[0], features[1]


def count_parameters(module: nn.Module | None) -> int:
    """Number of trainable parameters (0 for ``None``)."""
    if module is None:
        return 0
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
