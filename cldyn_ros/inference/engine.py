"""Inference engine: device, precision, task batching, pre/post-processing and timing.

No ROS import. The ROS node, bag replay and the command-line tools all fuse through
:meth:`FusionEngine.fuse`, so they share one code path.

Speed (issue 6): the engine runs an inference copy of the model
(:func:`~cldyn_ros.inference.fast.inference_copy`: batch norms folded, in-place activations) in
``inference_mode``, optionally channels-last, with the A2SI image embedding at reduced
resolution (``embed_max_side``) and the task embeddings cached per task vector. The frame
is uploaded as raw 8/16-bit data (through pinned host buffers on CUDA) and converted on the
device: thermal normalisation (percentile limits by ``torch.quantile`` on the same strided
subsample the numpy normaliser uses) and colour conversion. ``compile=True`` wraps the
model in ``torch.compile`` once per frame size and task count (CUDA graphs on CUDA);
``backend="onnx"`` runs an exported model through onnxruntime. Out-of-memory and CUDA
errors raise :class:`DeviceError` (a ``RuntimeError``); with ``fallback_device`` the frame
is fused there instead.

Precision on the CPU: ``bf16`` needs native bf16 instructions (``avx512_bf16`` or
``amx_bf16``) and ``fp16`` native fp16 ones (``avx512_fp16`` or ``amx_fp16``). Without them
torch emulates the type and the network runs several times slower than in fp32, so such a
request is refused with a :class:`PrecisionError` that says so and names ``fp32``, rather
than silently running slow or silently running something else than asked
(:func:`cpu_features`, :func:`check_precision`).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor

from ..imaging.registration import Registration
from ..imaging.thermal import (
    THERMAL_MODES,
    ThermalNormalizer,
    thermal_limits_torch,
    thermal_to_unit,
    thermal_to_unit_torch,
)
from ..model import rgb_to_ycbcr, ycbcr_to_rgb
from .backend import DeviceError, FusionBackend, InputError, TaskError, TaskRequest
from .checkpoint import NO_TASK, LoadedModel, first_line, load_checkpoint
from .fast import inference_copy
from .reduced_scale import ReducedScaleFusion, check_internal_scale

__all__ = [
    "BACKENDS", "PRECISIONS", "THERMAL_MODES", "DeviceError", "FusionBackend", "FusionEngine",
    "FusionResult", "InputError", "PrecisionError", "TaskError", "TaskRequest", "TorchRunner",
    "select_device",
    "thermal_limits_torch", "thermal_to_unit",
]

log = logging.getLogger(__name__)

PRECISIONS: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}
BACKENDS = ("torch", "onnx")
#: Task-embedding cache entries kept (blends create new vectors; named tasks reuse theirs).
_TASK_CACHE_SIZE = 32


class PrecisionError(ValueError):
    """The requested precision cannot run well on the device (no native support)."""


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
    #: Device that fused this frame (differs from the engine's after a fallback).
    device: str = ""

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


#: CPU feature flags (``/proc/cpuinfo`` names) that give native support for a precision.
NATIVE_CPU_FEATURES: dict[str, tuple[str, ...]] = {
    "bf16": ("avx512_bf16", "amx_bf16"),
    "fp16": ("avx512_fp16", "amx_fp16"),
}


@functools.lru_cache(maxsize=1)
def cpu_features() -> frozenset[str]:
    """Feature flags of this machine's CPU: the ones torch reports
    (``torch.cpu.get_capabilities``), else the ``flags`` of ``/proc/cpuinfo``; empty when
    neither is available."""
    get = getattr(torch.cpu, "get_capabilities", None)
    if get is not None:
        with contextlib.suppress(Exception):
            return frozenset(k for k, v in get().items() if v is True)
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def check_precision(precision: str, device: torch.device,
                    features: Iterable[str] | None = None) -> None:
    """Raise :class:`PrecisionError` when ``precision`` has no native support on a CPU
    ``device`` (``features``: CPU feature flags, ``None``: :func:`cpu_features`)."""
    if device.type != "cpu" or precision not in NATIVE_CPU_FEATURES:
        return
    needed = NATIVE_CPU_FEATURES[precision]
    have = cpu_features() if features is None else frozenset(features)
    if not have.intersection(needed):
        raise PrecisionError(
            f"precision '{precision}' is refused on this CPU: it has no native {precision} "
            f"instructions ({' or '.join(needed)}), so {precision} would be emulated and run "
            "several times slower than fp32; use precision fp32 on this machine (or a GPU)"
        )


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


def is_device_failure(error: BaseException) -> bool:
    """Out of memory or a CUDA/driver error (not a bug in the caller's input)."""
    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    if isinstance(error, (torch.cuda.OutOfMemoryError, oom)):
        return True
    accel = getattr(torch, "AcceleratorError", None)
    if accel is not None and isinstance(error, accel):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        k in text for k in ("CUDA", "CUBLAS", "cuDNN", "CUDNN", "out of memory")
    )


class TorchRunner:
    """The network on one device: an inference copy of the model, its settings, the
    task-embedding cache and (optionally) compiled graphs per frame size."""

    def __init__(
        self,
        loaded: LoadedModel,
        device: torch.device,
        optimize: bool,
        channels_last: bool,
        embed_max_side: int | None,
        compile: bool,
        compile_backend: str | None,
        compile_mode: str | None,
        internal_scale: float = 1.0,
    ) -> None:
        model = loaded.model.to(device).eval()
        if embed_max_side is None:
            embed_max_side = model.config.embed_max_side
        retune_rsc = model.rsc is not None and (
            optimize or compile or embed_max_side != model.embed_max_side
        )
        if optimize:
            model = inference_copy(model)  # a copy
        elif retune_rsc or channels_last:  # never change the caller's model behind its back
            import copy

            model = copy.deepcopy(model)
        if retune_rsc:
            model.set_embed_max_side(embed_max_side)
            if compile:
                model.set_static_selection(True)
        if channels_last:
            # Weights in the same layout as the frames: oneDNN and cuDNN then run the
            # convolutions without converting layouts on every call.
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.model = model
        #: What runs the frames: the model, or the model at a reduced internal scale.
        self.network: torch.nn.Module = (
            ReducedScaleFusion(model, internal_scale) if internal_scale < 1.0 else model
        )
        self.internal_scale = internal_scale
        self.device = device
        self.channels_last = channels_last
        self.compile = compile
        self.compile_backend = compile_backend
        self.compile_mode = compile_mode
        #: (kind, T, H, W) -> compiled callable; one compilation per key.
        self.compiled: dict[tuple, Callable] = {}
        self.compile_count = 0
        self._task_cache: collections.OrderedDict[tuple, tuple[Tensor, dict]] = (
            collections.OrderedDict()
        )

    # -- task embeddings, once per task vector
    def task_embeddings(self, vectors: Sequence[Tensor]) -> dict[tuple[str, int], Tensor]:
        per_vector = []
        for v in vectors:
            key = (id(v), v._version, str(v.device))
            hit = self._task_cache.get(key)
            if hit is None or hit[0] is not v:
                with torch.autocast(self.device.type, enabled=False):
                    embs = self.model.embed_tasks(v.float().to(self.device).unsqueeze(0))
                hit = (v, embs)
                self._task_cache[key] = hit
                while len(self._task_cache) > _TASK_CACHE_SIZE:
                    self._task_cache.popitem(last=False)
            else:
                self._task_cache.move_to_end(key)
            per_vector.append(hit[1])
        return {k: torch.cat([e[k] for e in per_vector]) for k in per_vector[0]}

    # -- the network
    def _prepare(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def plain(self, ir: Tensor, vis_y: Tensor) -> Tensor:
        fn = self._fn("plain", 0, ir)
        return fn(self._prepare(ir), self._prepare(vis_y))

    def tasks(self, ir: Tensor, vis_y: Tensor, vectors: Sequence[Tensor],
              strengths: Tensor) -> Tensor:
        embs = self.task_embeddings(vectors)
        stacked = torch.stack([v.to(self.device) for v in vectors])
        fn = self._fn("tasks", len(vectors), ir)
        return fn(self._prepare(ir), self._prepare(vis_y), stacked, strengths, embs)

    def fuse_luminance(self, ir: Tensor, vis_y: Tensor, reqs: Sequence[TaskRequest]) -> Tensor:
        """:class:`~cldyn_ros.inference.backend.FusionBackend`: plain requests share one
        VFN pass, compensated ones one batched pass (in the caller's autocast)."""
        out: list[Tensor | None] = [None] * len(reqs)
        plain = [i for i, r in enumerate(reqs) if r.is_plain]
        comp = [i for i, r in enumerate(reqs) if not r.is_plain]
        if plain:
            y = self.plain(ir, vis_y).float()
            for i in plain:
                out[i] = y[0]
        if comp:
            vectors = [reqs[i].vector for i in comp]
            strengths = torch.tensor([reqs[i].strength for i in comp], device=ir.device)
            ys = self.tasks(ir, vis_y, vectors, strengths).float()  # type: ignore[arg-type]
            for j, i in enumerate(comp):
                out[i] = ys[j, 0]
        return torch.stack(out).contiguous()  # type: ignore[arg-type]

    def _fn(self, kind: str, t: int, ir: Tensor) -> Callable:
        network = self.network
        eager = cast(Callable[..., Any],
                     network.forward if kind == "plain" else network.fuse_tasks)
        if not self.compile:
            return eager
        key = (kind, t, *ir.shape[-2:])
        fn = self.compiled.get(key)
        if fn is None:
            kwargs: dict = {"dynamic": False}
            if self.compile_backend:
                kwargs["backend"] = self.compile_backend
            if self.compile_mode:
                kwargs["mode"] = self.compile_mode
            fn = torch.compile(eager, **kwargs)
            self.compiled[key] = fn
            self.compile_count += 1
        return fn


class FusionEngine:
    """Fuse thermal + colour frames with a CLDyN checkpoint.

    Args:
        model: checkpoint path, an already loaded model, or ``None`` for the shipped default.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``...
        precision: ``fp32``, ``fp16`` or ``bf16`` (autocast; weights stay fp32). On a CPU
            without native support for ``bf16`` / ``fp16`` the engine refuses it
            (:class:`PrecisionError`, a ``ValueError``: use ``fp32`` there).
        normalizer: thermal normaliser (its temporal smoothing state lives across frames).
        thermal_mode: see :func:`thermal_to_unit`.
        registration: maps the thermal frame onto the colour frame.
        threads: CPU threads for torch (``None`` keeps torch's default).
        optimize: run an inference copy of the model with batch norms folded into the
            convolutions (:func:`~cldyn_ros.inference.fast.inference_copy`; equal up to float
            rounding).
            ``False`` runs the model as loaded (the plain eager baseline).
        embed_max_side: longer side at which the A2SI image embeddings run (``0``: full
            resolution as in the method; ``None``: the checkpoint's setting).
        channels_last: channels-last memory format (``None``: with ``optimize`` and on CUDA).
        compile: ``torch.compile`` the network, once per frame size and task count (the
            first frame of a new size compiles); ``compile_mode`` defaults to
            ``reduce-overhead`` (CUDA graphs) on CUDA.
        compile_backend: ``torch.compile`` backend (``None``: inductor).
        backend: ``torch``, or ``onnx`` to run an exported model through onnxruntime
            (``onnx_path``, or exported on the fly for ``onnx_tasks``).
        fallback_device: device that fuses a frame when ``device`` fails with an
            out-of-memory or CUDA error (``None``: raise :class:`DeviceError`).
        warmup: frame size ``(H, W)`` to run once at start (compiles, allocates buffers),
            so the first real frame is not slow.
        cpu_features: CPU feature flags the precision is checked against (``None``: this
            machine's, :func:`cpu_features`).
        internal_scale: run the network at this fraction of the frame's size, in ``(0, 1]``,
            with the model's parameter-free prior and the composition at full size
            (:class:`~cldyn_ros.inference.reduced_scale.ReducedScaleFusion`; needs a model
            with a prior). About ``internal_scale^2`` of the network's cost: the CPU mode.
            ``1`` is the model as trained at full size; ``None``: the checkpoint's
            ``internal_scale`` metadata (a model fine-tuned for a scale), else 1.
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
        *,
        optimize: bool = True,
        embed_max_side: int | None = None,
        channels_last: bool | None = None,
        compile: bool = False,
        compile_backend: str | None = None,
        compile_mode: str | None = None,
        backend: str = "torch",
        onnx_path: str | os.PathLike | None = None,
        onnx_tasks: Sequence[str] | None = None,
        onnx_providers: Sequence[str] | None = None,
        fallback_device: str | None = None,
        warmup: tuple[int, int] | None = None,
        cpu_features: Iterable[str] | None = None,
        internal_scale: float | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got '{precision}'")
        if thermal_mode not in THERMAL_MODES:
            raise ValueError(f"thermal_mode must be one of {THERMAL_MODES}, got '{thermal_mode}'")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got '{backend}'")
        if embed_max_side is not None and embed_max_side < 0:
            raise ValueError(f"embed_max_side must be >= 0, got {embed_max_side}")
        if threads:
            torch.set_num_threads(threads)
        self.device = select_device(device)
        check_precision(precision, self.device, cpu_features)
        self.precision = precision
        self._cpu_features = None if cpu_features is None else frozenset(cpu_features)
        if not isinstance(model, LoadedModel):
            if model is None:
                from ..paths import default_model_path

                model = default_model_path()
            model = load_checkpoint(Path(model), self.device)
        self.loaded = model
        if internal_scale is None:
            internal_scale = model.metadata.get("internal_scale", 1.0)
        self.internal_scale = check_internal_scale(internal_scale)
        if self.internal_scale < 1.0 and backend == "onnx":
            raise ValueError("internal_scale < 1 runs in the torch backend only (the exported "
                             "ONNX graph is the full-resolution model)")
        self.loaded.model.to(self.device).eval()
        self.task_vectors = {k: v.to(self.device) for k, v in model.task_vectors.items()}
        self.normalizer = normalizer or ThermalNormalizer()
        self.thermal_mode = thermal_mode
        self.registration = registration or Registration()
        self.backend = backend
        if channels_last is None:
            # Faster on CUDA and, with the inference copy's convolutions, on CPU as well
            # (docs/benchmarks.md); the eager baseline stays as the method runs it.
            channels_last = optimize or self.device.type == "cuda"
        if compile and compile_mode is None and self.device.type == "cuda":
            compile_mode = "reduce-overhead"
        self._runner_args: dict[str, Any] = dict(
            optimize=optimize, channels_last=channels_last, embed_max_side=embed_max_side,
            compile=compile, compile_backend=compile_backend, compile_mode=compile_mode,
            internal_scale=self.internal_scale,
        )
        self.runner = TorchRunner(self.loaded, self.device, **self._runner_args)
        self.fallback_device = select_device(fallback_device) if fallback_device else None
        self._fallback_runner: TorchRunner | None = None
        #: Frames fused on the fallback device, and the last device failure.
        self.fallbacks = 0
        self.last_device_error: str | None = None
        #: Record convert/upload/preprocess/fuse/download/postprocess separately.
        self.detailed_timings = False
        self._pinned: dict[tuple, Tensor] = {}
        self.onnx: FusionBackend | None = None
        if backend == "onnx":
            from .export import OnnxRunner

            self.onnx = OnnxRunner.create(self.loaded, self.runner.model.embed_max_side,
                                          onnx_path, onnx_tasks, onnx_providers)
        if warmup is not None:
            self.warm_up(*warmup)

    @property
    def model(self):
        """The network the engine runs (the inference copy when ``optimize``)."""
        return self.runner.model

    def warm_up(self, height: int, width: int, requests: Sequence[TaskRequest | str] | None
                = None) -> None:
        """Fuse one synthetic frame of ``height x width`` (compilation, buffers, kernels)."""
        reqs = requests or self.task_names[:1] + self.task_names[1:2]
        thermal = np.zeros((height, width), np.uint8)
        color = np.zeros((height, width, 3), np.uint8)
        self.fuse(thermal, color, reqs)
        self.normalizer.reset()

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
        vector = cast(Tensor, sum(self.task_vectors[k] * (w / total) for k, w in weights.items()))
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
            DeviceError: the device failed (out of memory, CUDA error) and no fallback
                device is configured.
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
        detailed = self.detailed_timings
        device = self.device
        try:
            with self._timed(timings, "preprocess"):
                ir, ycbcr = self._preprocess(thermal, color, color_order,
                                             timings if detailed else None)
            with self._timed(timings, "fuse"):
                fused_y = self.fuse_luminance(ir, ycbcr[:, :1], reqs)
        except Exception as e:
            if not is_device_failure(e):
                raise
            fused_y, ir, ycbcr = self._recover(e, thermal, color, color_order, reqs, timings)
            assert self.fallback_device is not None  # _recover raised otherwise
            device = self.fallback_device
        with self._timed(timings, "postprocess"):
            images_np = self._render_timed(fused_y, ycbcr, color_order,
                                           timings if detailed else None)
        images = {r.label: images_np[i] for i, r in enumerate(reqs)}
        return FusionResult(images, fused_y, ir, ycbcr, color_order, timings, str(device))

    def _recover(self, error, thermal, color, color_order, reqs, timings):
        """A device failure: free what we can; fuse on the fallback device or raise."""
        self.last_device_error = f"{type(error).__name__}: {first_line(error)}"
        if self.device.type == "cuda":
            with contextlib.suppress(Exception):
                torch.cuda.empty_cache()
        if self.fallback_device is None:
            raise DeviceError(
                f"fusion failed on {self.device}: {self.last_device_error}") from error
        log.warning("fusion failed on %s (%s); fusing this frame on %s", self.device,
                    self.last_device_error, self.fallback_device)
        if self._fallback_runner is None:
            args = dict(self._runner_args, compile=False)
            import copy

            loaded = LoadedModel(copy.deepcopy(self.loaded.model).cpu(),
                                 self.loaded.task_vectors, self.loaded.metadata,
                                 self.loaded.path)
            self._fallback_runner = TorchRunner(loaded, self.fallback_device, **args)
        self.fallbacks += 1
        with self._timed(timings, "fallback"):
            ir, ycbcr = self._preprocess(thermal, color, color_order, None,
                                         device=self.fallback_device)
            with self._autocast(self.fallback_device):
                fused_y = self._fallback_runner.fuse_luminance(ir, ycbcr[:, :1], reqs)
        return fused_y, ir, ycbcr

    @staticmethod
    def render(fused_y: Tensor, ycbcr: Tensor, color_order: str = "rgb") -> np.ndarray:
        """Fused luminance ``(T, 1, H, W)`` + the frame's chroma -> ``(T, H, W, 3)`` uint8."""
        return FusionEngine._render_device(fused_y, ycbcr, color_order).cpu().numpy()

    @staticmethod
    def _render_device(fused_y: Tensor, ycbcr: Tensor, color_order: str) -> Tensor:
        ycbcr = ycbcr.to(fused_y.device)
        rgb = ycbcr_to_rgb(fused_y.float(), ycbcr[:, 1:2], ycbcr[:, 2:3])
        if color_order == "bgr":
            rgb = rgb.flip(1)
        images = (rgb * 255.0 + 0.5).clamp_(0, 255).to(torch.uint8)
        return images.permute(0, 2, 3, 1)

    def _render_timed(self, fused_y, ycbcr, color_order, timings) -> np.ndarray:
        if timings is None:
            return self.render(fused_y, ycbcr, color_order)
        with self._timed(timings, "render"):
            images = self._render_device(fused_y, ycbcr, color_order).contiguous()
        with self._timed(timings, "download"):
            return images.cpu().numpy()

    # ------------------------------------------------------------ preprocessing
    def _host_tensor(self, array: np.ndarray, name: str, device: torch.device) -> Tensor:
        """``array`` as a CPU tensor; for CUDA a reused pinned buffer (async copy)."""
        if device.type != "cuda":
            return torch.from_numpy(np.ascontiguousarray(array))
        key = (name, array.shape, array.dtype.str)
        buf = self._pinned.get(key)
        if buf is None:
            if len(self._pinned) > 8:  # sizes changed: drop the old buffers
                self._pinned.clear()
            buf = torch.empty(array.shape, dtype=_torch_dtype(array.dtype), pin_memory=True)
            self._pinned[key] = buf
        buf.numpy()[...] = array
        return buf

    def _preprocess(
        self,
        thermal: np.ndarray,
        color: np.ndarray,
        color_order: str,
        timings: dict[str, float] | None = None,
        device: torch.device | None = None,
    ) -> tuple[Tensor, Tensor]:
        """-> infrared ``(1, 1, H, W)`` and YCbCr ``(1, 3, H, W)`` on the device, fp32.

        The raw frames are uploaded and normalised / colour-converted there; only a
        registration (different sizes or a homography) runs on the host first.
        """
        device = device or self.device
        timings = timings if timings is not None else {}
        if thermal.ndim == 3:
            thermal = thermal[:, :, 0]
        h, w = color.shape[:2]
        with self._timed(timings, "convert"):
            host_norm = thermal.shape != (h, w) or self.registration.homography is not None
            if host_norm:  # registration works on the normalised float image, on the host
                unit = thermal_to_unit(thermal, self.normalizer, self.thermal_mode)
                thermal_src = self.registration(unit, (h, w))
            else:
                thermal_src = thermal
            if thermal_src.dtype not in (np.uint8, np.uint16, np.float32):
                thermal_src = thermal_src.astype(np.float32)
            t_host = self._host_tensor(thermal_src, "thermal", device)
            c_host = self._host_tensor(color, "color", device)
        with self._timed(timings, "upload"):
            nb = device.type == "cuda"
            t_dev = t_host.to(device, non_blocking=nb)
            c_dev = c_host.to(device, non_blocking=nb)
        with self._timed(timings, "normalise"):
            if host_norm:
                ir = t_dev.float()
            else:
                ir = thermal_to_unit_torch(t_dev, thermal.dtype, self.normalizer,
                                           self.thermal_mode)
            ir = ir.view(1, 1, h, w).clamp_(0.0, 1.0)
            col = c_dev.permute(2, 0, 1).unsqueeze(0).float().mul_(1.0 / 255.0)
            if color_order == "bgr":
                col = col.flip(1)
            ycbcr = rgb_to_ycbcr(col)
        return ir, ycbcr

    @torch.inference_mode()
    def fuse_luminance(self, ir: Tensor, vis_y: Tensor, reqs: Sequence[TaskRequest]) -> Tensor:
        """Network inputs ``(1, 1, H, W)`` each, on the engine's device -> fused luminance
        ``(T, 1, H, W)`` fp32, one per request, in the engine's precision. Plain requests
        share one VFN pass; compensated ones share one batched pass."""
        if self.onnx is not None:
            return self.onnx.fuse_luminance(ir, vis_y, reqs)
        with self._autocast():
            return self.runner.fuse_luminance(ir, vis_y, reqs)

    @contextlib.contextmanager
    def _autocast(self, device: torch.device | None = None) -> Iterator[None]:
        device = device or self.device
        if self.precision == "fp32" or (device != self.device
                                        and not self._native(self.precision, device)):
            yield  # a fallback CPU without native support for the precision: fp32
            return
        with torch.autocast(device.type, dtype=PRECISIONS[self.precision]):
            yield

    def _native(self, precision: str, device: torch.device) -> bool:
        try:
            check_precision(precision, device, self._cpu_features)
        except PrecisionError:
            return False
        return True

    @contextlib.contextmanager
    def _timed(self, timings: dict[str, float], stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        timings[stage] = (time.perf_counter() - t0) * 1000.0


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return {"|u1": torch.uint8, "<u2": torch.uint16, "<f4": torch.float32}[np.dtype(dtype).str]
