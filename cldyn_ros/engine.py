"""Inference engine: device, precision, task batching, pre/post-processing and timing.

No ROS import. The ROS node, bag replay and the command-line tools all fuse through
:meth:`FusionEngine.fuse`, so they share one code path.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .checkpoint import NO_TASK, LoadedModel, load_checkpoint
from .imaging.registration import Registration
from .imaging.thermal import ThermalNormalizer
from .model import rgb_to_ycbcr, ycbcr_to_rgb

PRECISIONS: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}
THERMAL_MODES = ("auto", "percentile", "fixed")


class InputError(ValueError):
    """An input frame cannot be fused; the message says why."""


class TaskError(ValueError):
    """An unknown task name, a bad blend or an out-of-range strength."""


@dataclass(frozen=True)
class TaskRequest:
    """One output to compute for a frame.

    ``vector`` is ``None`` for plain fusion (the task ``none``); ``label`` names the output.
    """

    label: str
    vector: Tensor | None = None
    strength: float = 1.0

    @property
    def is_plain(self) -> bool:
        return self.vector is None or self.strength == 0.0


@dataclass
class FusionResult:
    """Fused outputs of one frame.

    ``images`` maps each request label to an ``H x W x 3`` uint8 image in the requested
    channel order; ``fused_y`` is ``(T, 1, H, W)`` on the engine's device, ``ir`` the
    network's infrared input ``(1, 1, H, W)`` and ``ycbcr`` the colour frame ``(1, 3, H, W)``
    (for metrics and for rendering other fusions with :meth:`FusionEngine.render`);
    ``timings`` are milliseconds per stage.
    """

    images: dict[str, np.ndarray]
    fused_y: Tensor
    ir: Tensor
    ycbcr: Tensor
    color_order: str = "rgb"
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def vis_y(self) -> Tensor:
        """Visible luminance ``(1, 1, H, W)``."""
        return self.ycbcr[:, :1]


def select_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; anything else is passed to torch."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device '{device}' requested but CUDA is not available")
    return dev


def thermal_to_unit(
    thermal: np.ndarray, normalizer: ThermalNormalizer, mode: str = "auto"
) -> np.ndarray:
    """Thermal frame -> float32 ``H x W`` in ``[0, 1]``.

    ``fixed`` divides by the full scale of the dtype (8-bit images as the network was
    trained); ``percentile`` stretches between robust limits (raw radiometric counts use a
    small part of the 16-bit range); ``auto`` uses ``fixed`` for 8-bit and ``percentile``
    otherwise.
    """
    if mode not in THERMAL_MODES:
        raise ValueError(f"thermal mode must be one of {THERMAL_MODES}, got '{mode}'")
    if mode == "fixed" or (mode == "auto" and thermal.dtype == np.uint8):
        if thermal.dtype == np.uint8:
            return thermal.astype(np.float32) * (1.0 / 255.0)
        if thermal.dtype == np.uint16:
            return thermal.astype(np.float32) * (1.0 / 65535.0)
        return np.clip(np.nan_to_num(thermal.astype(np.float32)), 0.0, 1.0)
    return normalizer(thermal)


def validate_pair(thermal: np.ndarray, color: np.ndarray) -> None:
    """Raise :class:`InputError` unless ``thermal`` is ``H x W`` (or ``H x W x 1``) and
    ``color`` is ``H x W x 3`` uint8, both non-empty. Sizes may differ (registration)."""
    if not isinstance(thermal, np.ndarray) or not isinstance(color, np.ndarray):
        raise InputError("frames must be numpy arrays")
    if thermal.ndim == 3 and thermal.shape[2] == 1:
        thermal = thermal[:, :, 0]
    if thermal.ndim != 2:
        raise InputError(f"thermal frame must be single-channel, got shape {thermal.shape}")
    if color.ndim != 3 or color.shape[2] != 3:
        raise InputError(f"colour frame must be H x W x 3, got shape {color.shape}")
    if thermal.size == 0 or color.size == 0:
        raise InputError("empty frame (zero width or height)")
    if color.dtype != np.uint8:
        raise InputError(f"colour frame must be 8-bit, got {color.dtype}")
    if thermal.dtype not in (np.uint8, np.uint16) and not np.issubdtype(
        thermal.dtype, np.floating
    ):
        raise InputError(f"thermal frame must be uint8, uint16 or float, got {thermal.dtype}")


class FusionEngine:
    """Fuse thermal + colour frames with a CLDyN checkpoint.

    Args:
        model: checkpoint path, an already loaded model, or ``None`` for the shipped default.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``...
        precision: ``fp32``, ``fp16`` or ``bf16`` (autocast; weights stay fp32).
        normalizer: thermal normaliser (its temporal smoothing state lives across frames).
        thermal_mode: see :func:`thermal_to_unit`.
        registration: maps the thermal frame onto the colour frame.
        threads: CPU threads for torch (``None`` keeps torch's default).
    """

    def __init__(
        self,
        model: str | os.PathLike | LoadedModel | None = None,
        device: str = "auto",
        precision: str = "fp32",
        normalizer: ThermalNormalizer | None = None,
        thermal_mode: str = "auto",
        registration: Registration | None = None,
        threads: int | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got '{precision}'")
        if thermal_mode not in THERMAL_MODES:
            raise ValueError(f"thermal_mode must be one of {THERMAL_MODES}, got '{thermal_mode}'")
        if threads:
            torch.set_num_threads(threads)
        self.device = select_device(device)
        self.precision = precision
        if not isinstance(model, LoadedModel):
            if model is None:
                from .paths import default_model_path

                model = default_model_path()
            model = load_checkpoint(Path(model), self.device)
        self.loaded = model
        self.loaded.model.to(self.device).eval()
        self.task_vectors = {k: v.to(self.device) for k, v in model.task_vectors.items()}
        self.normalizer = normalizer or ThermalNormalizer()
        self.thermal_mode = thermal_mode
        self.registration = registration or Registration()

    # ------------------------------------------------------------------ tasks
    @property
    def task_names(self) -> list[str]:
        """Tasks of the loaded model, plus ``none``."""
        return [NO_TASK, *sorted(self.task_vectors)]

    def request(
        self,
        task: str | Mapping[str, float] = NO_TASK,
        strength: float = 1.0,
        label: str | None = None,
    ) -> TaskRequest:
        """Build a validated request: a task name, or a blend ``{name: weight}``.

        A blend mixes the task vectors with the normalised non-negative weights.
        """
        if not 0.0 <= float(strength) <= 1.0:
            raise TaskError(f"compensation strength must be in [0, 1], got {strength}")
        if isinstance(task, str):
            if task == NO_TASK:
                return TaskRequest(label or NO_TASK, None, float(strength))
            if task not in self.task_vectors:
                raise TaskError(f"unknown task '{task}'; this model has {self.task_names}")
            return TaskRequest(label or task, self.task_vectors[task], float(strength))
        weights = {k: float(v) for k, v in task.items() if float(v) != 0.0}
        if not weights:
            raise TaskError("a task blend needs at least one non-zero weight")
        bad = [k for k in weights if k not in self.task_vectors]
        if bad:
            raise TaskError(f"unknown task(s) {bad} in blend; this model has {self.task_names}")
        if any(w < 0 or not np.isfinite(w) for w in weights.values()):
            raise TaskError(f"blend weights must be finite and non-negative, got {weights}")
        total = sum(weights.values())
        vector = sum(self.task_vectors[k] * (w / total) for k, w in weights.items())
        name = label or "+".join(f"{k}:{w / total:.2f}" for k, w in sorted(weights.items()))
        return TaskRequest(name, vector, float(strength))

    # ----------------------------------------------------------------- fusion
    @torch.inference_mode()
    def fuse(
        self,
        thermal: np.ndarray,
        color: np.ndarray,
        requests: Sequence[TaskRequest | str] = (NO_TASK,),
        color_order: str = "rgb",
    ) -> FusionResult:
        """Fuse one frame pair for every request in one batched pass.

        Args:
            thermal: ``H x W`` uint8, uint16 or float.
            color: ``H' x W' x 3`` uint8 in ``color_order`` (``rgb`` or ``bgr``); the output
                has the colour frame's size and channel order.
            requests: task requests or task names.

        Raises:
            InputError: malformed frames. TaskError: unknown task names.
        """
        validate_pair(thermal, color)
        if color_order not in ("rgb", "bgr"):
            raise InputError(f"colour order must be 'rgb' or 'bgr', got '{color_order}'")
        reqs = [self.request(r) if isinstance(r, str) else r for r in requests]
        if not reqs:
            raise TaskError("at least one task request is needed")
        labels = [r.label for r in reqs]
        if len(set(labels)) != len(labels):
            raise TaskError(f"task requests need distinct labels, got {labels}")
        timings: dict[str, float] = {}

        with self._timed(timings, "preprocess"):
            ir, ycbcr = self._preprocess(thermal, color, color_order)
            vis_y = ycbcr[:, :1]
        with self._timed(timings, "fuse"):
            fused_y = self.fuse_luminance(ir, vis_y, reqs)
        with self._timed(timings, "postprocess"):
            images_np = self.render(fused_y, ycbcr, color_order)
        images = {r.label: images_np[i] for i, r in enumerate(reqs)}
        return FusionResult(images, fused_y, ir, ycbcr, color_order, timings)

    @staticmethod
    def render(fused_y: Tensor, ycbcr: Tensor, color_order: str = "rgb") -> np.ndarray:
        """Fused luminance ``(T, 1, H, W)`` + the frame's chroma -> ``(T, H, W, 3)`` uint8."""
        rgb = ycbcr_to_rgb(fused_y.float(), ycbcr[:, 1:2], ycbcr[:, 2:3])
        if color_order == "bgr":
            rgb = rgb.flip(1)
        images = (rgb * 255.0 + 0.5).clamp_(0, 255).to(torch.uint8)
        return images.permute(0, 2, 3, 1).cpu().numpy()

    def _preprocess(
        self, thermal: np.ndarray, color: np.ndarray, color_order: str
    ) -> tuple[Tensor, Tensor]:
        """-> infrared ``(1, 1, H, W)`` and YCbCr ``(1, 3, H, W)`` on the device, fp32."""
        if thermal.ndim == 3:
            thermal = thermal[:, :, 0]
        h, w = color.shape[:2]
        unit = thermal_to_unit(thermal, self.normalizer, self.thermal_mode)
        if unit.shape != (h, w) or self.registration.homography is not None:
            unit = self.registration(unit, (h, w))
        ir = torch.from_numpy(np.ascontiguousarray(unit, dtype=np.float32))
        ir = ir.to(self.device).view(1, 1, h, w).clamp_(0.0, 1.0)
        col = torch.from_numpy(np.ascontiguousarray(color)).to(self.device)
        col = col.permute(2, 0, 1).unsqueeze(0).float().mul_(1.0 / 255.0)
        if color_order == "bgr":
            col = col.flip(1)
        return ir, rgb_to_ycbcr(col)

    @torch.inference_mode()
    def fuse_luminance(self, ir: Tensor, vis_y: Tensor, reqs: Sequence[TaskRequest]) -> Tensor:
        """Network inputs ``(1, 1, H, W)`` each, on the engine's device -> fused luminance
        ``(T, 1, H, W)`` fp32, one per request, in the engine's precision. Plain requests
        share one VFN pass; compensated ones share one batched pass."""
        with self._autocast():
            return self._fuse_tensors(ir, vis_y, reqs)

    def _fuse_tensors(self, ir: Tensor, vis_y: Tensor, reqs: Sequence[TaskRequest]) -> Tensor:
        model = self.loaded.model
        out: list[Tensor | None] = [None] * len(reqs)
        plain = [i for i, r in enumerate(reqs) if r.is_plain]
        comp = [i for i, r in enumerate(reqs) if not r.is_plain]
        if plain:
            y = model(ir, vis_y).float()
            for i in plain:
                out[i] = y[0]
        if comp:
            vectors = torch.stack([reqs[i].vector for i in comp])  # type: ignore[misc]
            strengths = torch.tensor([reqs[i].strength for i in comp], device=ir.device)
            ys = model.fuse_tasks(ir, vis_y, vectors, strengths).float()
            for j, i in enumerate(comp):
                out[i] = ys[j, 0]
        return torch.stack(out)  # type: ignore[arg-type]

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        if self.precision == "fp32":
            yield
            return
        with torch.autocast(self.device.type, dtype=PRECISIONS[self.precision]):
            yield

    @contextlib.contextmanager
    def _timed(self, timings: dict[str, float], stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        timings[stage] = (time.perf_counter() - t0) * 1000.0
