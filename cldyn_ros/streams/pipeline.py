"""The ROS-free frame pipeline the fusion node and ``cldyn eval bag`` both run.

::

    add(role, frame) ── pairing session (time-jump reset, statistics) ──> Pair
    fuse(pair) ──────── task requests + per-task strengths ─> engine ─> FrameOutput
                        (images in the output encoding)
    finish(output, ...) frame bookkeeping, metrics every n-th frame ─> statuses (plain data)
    feedback(stamp, scores)  closed loop: scores of frames fused at a controller's strength
    health_status(...)  the periodic health report (plain data)

The node wires ROS to it: subscriptions call :meth:`FramePipeline.add`, its worker thread
calls :meth:`~FramePipeline.fuse` and :meth:`~FramePipeline.finish`, publishers turn the
outputs and :class:`Status` records into messages. Every method is thread-safe; the engine
is only touched by :meth:`~FramePipeline.fuse` (one thread).
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..imaging.registration import Registration
from ..inference.checkpoint import NO_TASK, first_line
from ..inference.engine import FusionEngine, FusionResult, InputError, TaskError, TaskRequest
from ..metrics import FAST_METRICS, fusion_metrics
from .controller import ScoreAverager, StrengthController
from .demand import OutputDemand
from .frame_input import FrameConversionError, InputImage, convert_pair
from .pairing import ApproximateTimePairer, Frame, Pair, PairingStats
from .rejections import RejectionCounter
from .settings import FusionSettings

__all__ = ["FrameOutput", "FramePipeline", "InputImage", "Status", "engine_from_settings"]

_NS = 1_000_000_000
#: Fused frames whose strengths are remembered for the feedback that scores them.
FRAME_MEMORY = 256
#: Least time between two immediate error reports (the periodic report repeats them).
ERROR_REPORT_INTERVAL_S = 0.2


@dataclass(frozen=True)
class Status:
    """One diagnostics status as plain data; ``level`` is ``OK``, ``WARN`` or ``ERROR``."""

    level: str
    name: str
    message: str
    values: list[tuple[str, Any]]


@dataclass
class FrameOutput:
    """One fused pair: ``images`` maps output labels (``fused``, or the task in multi-task
    mode) to ``H x W x 3`` uint8 images in ``settings.output_encoding``."""

    pair: Pair
    settings: FusionSettings
    strengths: dict[str, float]
    result: FusionResult
    images: dict[str, np.ndarray]
    started_ns: int


@dataclass
class _Loop:
    """Closed-loop state of one task: controller plus score window."""

    controller: StrengthController
    averager: ScoreAverager
    fed: int = 0  # scores counted
    stale: int = 0  # scores for frames fused with another strength


@dataclass
class _Health:
    """Counters since the last periodic health report."""

    received: int = 0
    fused: int = 0
    slow: int = 0
    errors: int = 0
    last_error: str = ""
    last_error_kind: str = ""
    worst_ms: float = 0.0


def engine_from_settings(settings: FusionSettings, model_path: str) -> FusionEngine:
    """The engine the read-only settings describe (raises what :class:`FusionEngine`
    raises: CheckpointError, ValueError, RuntimeError)."""
    return FusionEngine(
        model_path,
        device=settings.device,
        precision=settings.precision,
        normalizer=settings.thermal_normalizer(),
        thermal_mode=settings.thermal_mode,
        threads=settings.threads or None,
        compile=settings.compile,
        internal_scale=settings.internal_scale or None,
    )


def _constant(array: np.ndarray) -> bool:
    return bool(array.size) and array.min() == array.max()


def _add_stats(a: PairingStats, b: PairingStats) -> PairingStats:
    da, db = a.as_dict(), b.as_dict()
    return PairingStats(**{k: da[k] + db[k] for k in da})


class FramePipeline:
    """Pairing, task strengths, fusion, metrics and health of one pair of streams.

    Args:
        engine: the fusion engine (only :meth:`fuse` uses it).
        settings: the validated settings; :meth:`update` replaces them.
        name: prefix of the status names (the node's name).
        on_error: called with ``(reason, report_now)`` for every error; ``report_now`` is
            true at most every 0.2 s (an immediate health report is due).
        on_info: called with notable events (a pairing restart).
        on_warning: called with each standing warning (see :meth:`warn`).
        configure_engine: apply the settings' thermal and registration options to the
            engine now (the node); ``False`` leaves the engine as the caller configured it
            until the settings change.
    """

    def __init__(self, engine: FusionEngine, settings: FusionSettings, name: str = "",
                 on_error: Callable[[str, bool], None] | None = None,
                 on_info: Callable[[str], object] | None = None,
                 on_warning: Callable[[str], object] | None = None,
                 configure_engine: bool = True) -> None:
        self.engine = engine
        self.name = name
        self._on_error = on_error or (lambda reason, now: None)
        self._on_info = on_info or (lambda text: None)
        self._on_warning = on_warning or (lambda text: None)
        self._lock = threading.RLock()  # settings, pairer, loops, frame memory
        self._health_lock = threading.Lock()
        self._settings = settings
        if configure_engine:
            self._configure_engine(settings, None)
        # The settings the engine was last configured with: fuse() re-configures it at the
        # start of a frame, so a frame's metrics name exactly what it was fused with.
        self._engine_settings = settings
        self._pairer = ApproximateTimePairer(settings.slop, settings.queue_size,
                                             settings.max_delay)
        self._pairing_base = PairingStats()  # counts of replaced pairers
        self._last_stamp: dict[str, int | None] = {"thermal": None, "color": None}
        self._loops: dict[str, _Loop] = {}
        self._frame_strengths: collections.OrderedDict[int, dict[str, float]] = (
            collections.OrderedDict()
        )
        self.frames = 0
        self.input_errors = 0
        self.rejections = RejectionCounter()  # every rejected input, by cause
        self.fusion_errors = 0
        self.feedback_counts = {"received": 0, "unknown_frame": 0, "unknown_task": 0,
                                "invalid": 0}
        self._health = _Health()
        self._ever_received = False
        self._last_error_report = 0.0
        self._prev_drops: dict[str, int] = {}
        #: The reason of the last error.
        self.last_error = ""
        #: Standing warnings (configuration), repeated in every health report.
        self.warnings: list[str] = []
        self._float_warned = False
        #: Fusion on demand: whether any output has a subscriber (the node asks per pair).
        self.demand = OutputDemand()

    # --------------------------------------------------------------- settings
    @property
    def settings(self) -> FusionSettings:
        return self._settings

    def update_values(self, values: Mapping[str, Any]) -> FusionSettings:
        """Validate ``values`` (parameter name -> value) against the schema and the engine's
        tasks and :meth:`update` to them; ValueError (counted as a ``parameters``
        rejection) when they are invalid."""
        try:
            settings = FusionSettings.from_values(values, self.engine.task_names)
        except ValueError:
            self.rejections.add("parameters")
            raise
        self.update(settings)
        return settings

    def update(self, settings: FusionSettings) -> None:
        """New settings from the next frame: a new pairer when pairing changed (its counts
        kept), controllers restarted when the closed loop changed."""
        with self._lock:
            old = self._settings
            if (settings.slop, settings.queue_size, settings.max_delay) != (
                old.slop, old.queue_size, old.max_delay
            ):
                self._pairing_base = _add_stats(self._pairing_base, self._pairer.stats)
                self._pairer = ApproximateTimePairer(
                    settings.slop, settings.queue_size, settings.max_delay
                )
            loop_fields = ("adaptive_strength", "compensation_strength", "adaptive_min_strength",
                           "adaptive_max_strength", "adaptive_step", "adaptive_window")
            if any(getattr(settings, f) != getattr(old, f) for f in loop_fields):
                self._loops = {}  # controllers restart from compensation_strength
            self._settings = settings

    def _configure_engine(self, s: FusionSettings, old: FusionSettings | None) -> None:
        thermal = ("thermal_low_percentile", "thermal_high_percentile", "thermal_smoothing")
        if old is None or any(getattr(s, f) != getattr(old, f) for f in thermal):
            self.engine.normalizer = s.thermal_normalizer()
        self.engine.thermal_mode = s.thermal_mode
        if old is None or s.homography != old.homography:
            self.engine.registration = Registration(list(s.homography) or None)

    # ---------------------------------------------------------------- pairing
    def add(self, role: str, frame: Frame) -> list[Pair]:
        """A ``thermal`` or ``color`` frame -> the pairs it completes. A stamp that jumps
        back (bag loop, simulation restart) restarts pairing."""
        with self._lock:
            last = self._last_stamp[role]
            self._last_stamp[role] = frame.stamp_ns
            jump = max(_NS, 2 * round(self._settings.max_delay * _NS))
            if last is not None and frame.stamp_ns < last - jump:
                self._on_info(f"{role} stamps jumped back by {(last - frame.stamp_ns) / _NS:.3f}"
                              " s: pairing restarts")
                self._pairer.reset()
                self._last_stamp = {"thermal": None, "color": None}
            pairer = self._pairer
        return pairer.add_thermal(frame) if role == "thermal" else pairer.add_color(frame)

    def flush(self) -> list[Pair]:
        """End of the streams: decide every waiting colour frame."""
        with self._lock:
            return self._pairer.flush()

    def pairing_stats(self) -> dict[str, int]:
        """Cumulative pairing counters (over pairers replaced by settings changes)."""
        with self._lock:
            return _add_stats(self._pairing_base, self._pairer.stats).as_dict()

    @property
    def pending(self) -> tuple[int, int]:
        """Colour and thermal frames waiting in the pairer."""
        with self._lock:
            return self._pairer.pending_color, self._pairer.pending_thermal

    def received(self, count: int = 1) -> None:
        """Count images received (for the health report), valid or not."""
        with self._health_lock:
            self._health.received += count
            self._ever_received = True

    # ---------------------------------------------------------------- strengths
    def strengths(self, s: FusionSettings) -> dict[str, float]:
        """Strength per output task for this frame (controller or parameter)."""
        out = {}
        with self._lock:
            for task in s.output_tasks:
                out[task] = (self._loop(task, s).controller.strength if s.adaptive_strength
                             else s.compensation_strength)
        return out

    def _loop(self, task: str, s: FusionSettings) -> _Loop:
        loop = self._loops.get(task)
        if loop is None:
            start = min(max(s.compensation_strength, s.adaptive_min_strength),
                        s.adaptive_max_strength)
            loop = _Loop(
                StrengthController(
                    strength=start, min_strength=s.adaptive_min_strength,
                    max_strength=s.adaptive_max_strength, step=s.adaptive_step,
                    min_step=min(0.01, s.adaptive_step), max_step=max(0.3, s.adaptive_step),
                ),
                ScoreAverager(window=s.adaptive_window),
            )
            self._loops[task] = loop
        return loop

    def requests(self, s: FusionSettings, strengths: Mapping[str, float]) -> list[TaskRequest]:
        """The engine requests of one frame: one per task in multi-task mode, else one
        labelled ``fused`` (a task or a blend)."""
        engine = self.engine
        strength = s.compensation_strength
        if s.tasks:
            return [engine.request(t, strengths.get(t, strength), label=t) for t in s.tasks]
        if s.task_weights:
            return [engine.request(dict(s.weights), strength, label="fused")]
        return [engine.request(s.task, strengths.get(s.task, strength), label="fused")]

    # ------------------------------------------------------------------ fusion
    def warm_up(self) -> tuple[bool, str]:
        """Fuse one blank frame of the configured warm-up size with the start requests:
        ``(done, what to log)``; a failure (out of memory at this size) is a warning."""
        s = self._settings
        if not (s.warmup_width and s.warmup_height):
            return True, "no warm-up (warmup_width or warmup_height is 0)"
        size = f"{s.warmup_width}x{s.warmup_height}"
        started = time.monotonic()
        try:
            self.engine.warm_up(s.warmup_height, s.warmup_width, self.requests(s, {}))
        except RuntimeError as e:
            text = f"warm-up at {size} failed: {first_line(e)}"
            self.warn(text)
            return False, text
        return True, f"warmed up at {size} in {time.monotonic() - started:.2f} s"

    def describe(self) -> str:
        """One line on the engine and the output, as the node logs it when ready."""
        e, s = self.engine, self._settings
        return (f"model {e.loaded.path} on {e.device} (precision {e.precision}, "
                f"internal_scale {e.internal_scale:g}, threads {s.threads or 'default'}); "
                f"tasks {e.task_names}; output {s.active_label}")

    def warn(self, text: str) -> None:
        """A standing warning: passed to ``on_warning`` and repeated in every health
        report."""
        self._on_warning(text)
        self.warnings.append(text)

    def fuse_received(self, pair: Pair) -> FrameOutput | None:
        """Convert a pair of received images (:func:`~.frame_input.convert_pair`), then
        :meth:`fuse` it; None when it cannot be used (counted and reported)."""
        try:
            pair = convert_pair(pair)
        except FrameConversionError as e:
            self.error("input", str(e), e.cause)
            return None
        thermal = pair.thermal.data.array
        if (not self._float_warned and thermal.dtype.kind == "f"
                and self._settings.thermal_mode == "fixed"):
            self._float_warned = True
            self.warn("float (32FC1) thermal frames with thermal_mode 'fixed' are clipped to "
                      "[0, 1]: use 'auto' or 'percentile' for temperatures")
        return self.fuse(pair)

    def fuse(self, pair: Pair) -> FrameOutput | None:
        """Fuse one pair of :class:`InputImage` frames; None when it failed (the error is
        counted and reported through ``on_error``)."""
        started = time.monotonic_ns()
        s = self._settings
        if s is not self._engine_settings:  # only this thread touches the engine
            self._configure_engine(s, self._engine_settings)
            self._engine_settings = s
        color: InputImage = pair.color.data
        thermal: InputImage = pair.thermal.data
        strengths = self.strengths(s)
        warnings = []
        for name, image in (("thermal", thermal), ("colour", color)):
            if _constant(image.array):
                warnings.append((
                    f"{name} frame is constant (every pixel {image.array.flat[0]}): "
                    "no usable image information (sensor covered, failed or not started?)",
                    f"{name}_constant"))
        try:
            result = self.engine.fuse(
                thermal.array, color.array, self.requests(s, strengths),
                color_order="bgr" if color.encoding == "bgr8" else "rgb",
            )
        except InputError as e:
            self.error("input", f"frame pair rejected: {e}", "pair_invalid")
            return None
        except TaskError as e:
            self.error("fusion", f"task request failed: {e}")
            return None
        except RuntimeError as e:  # CUDA out of memory, device errors, ...
            if self.engine.device.type == "cuda":
                torch.cuda.empty_cache()
            self.error("fusion", f"fusion failed: {first_line(e)}")
            return None
        for text, cause in warnings:
            self.error("input", text, cause)  # fused anyway (finite output), but reported
        want = "bgr" if s.output_encoding == "bgr8" else "rgb"
        images = {label: (img[..., ::-1] if want != result.color_order else img)
                  for label, img in result.images.items()}
        return FrameOutput(pair, s, strengths, result, images, started)

    def finish(self, out: FrameOutput, decided_ns: int, done_ns: int, now_ns: int,
               worker_counts: Mapping[str, int], header: Any = None) -> list[Status]:
        """After the images went out: count the frame, remember its strengths for the
        feedback, compute the metrics on every ``metrics_every_n``-th frame and return the
        frame's statuses. ``now_ns`` is the clock of the stamps (latency from the stamp),
        ``decided_ns`` / ``done_ns`` monotonic (pairing decision, images published)."""
        s, pair = out.settings, out.pair
        with self._lock:
            self.frames += 1
            frame_index = self.frames
            self._frame_strengths[pair.color.stamp_ns] = out.strengths
            while len(self._frame_strengths) > FRAME_MEMORY:
                self._frame_strengths.popitem(last=False)
        latency_arrival = (done_ns - pair.color.arrival_ns) / 1e6
        with self._health_lock:
            h = self._health
            h.fused += 1
            h.worst_ms = max(h.worst_ms, latency_arrival)
            if latency_arrival > s.slow_frame_ms:
                h.slow += 1
        metrics = None
        if s.metrics_every_n and frame_index % s.metrics_every_n == 0:
            metrics = self.metrics(out.result)
        latency = {
            "latency_stamp": (now_ns - pair.color.stamp_ns) / 1e6,
            "latency_arrival": latency_arrival,
            "pairing_wait": (decided_ns - pair.color.arrival_ns) / 1e6,
            "queue_wait": (out.started_ns - decided_ns) / 1e6,
            "processing": (done_ns - out.started_ns) / 1e6,
        }
        return self._frame_statuses(out, frame_index, metrics, latency, worker_counts,
                                    pair.color.frame_id)

    @staticmethod
    def metrics(result: FusionResult) -> dict[str, dict[str, float]]:
        """The fast fusion metrics of every output of a frame, by label."""
        with torch.inference_mode():
            fused = result.fused_y.float().clamp(0.0, 1.0)
            n = fused.shape[0]
            values = fusion_metrics(
                fused, result.ir.expand(n, -1, -1, -1), result.vis_y.expand(n, -1, -1, -1),
                FAST_METRICS,
            )
        return {label: {k: float(v[i]) for k, v in values.items()}
                for i, label in enumerate(result.images)}

    def _frame_statuses(self, out: FrameOutput, frame_index: int,
                        metrics: dict[str, dict[str, float]] | None,
                        latency: Mapping[str, float], worker_counts: Mapping[str, int],
                        frame_id: str) -> list[Status]:
        s, strengths = out.settings, out.strengths
        stats = self.pairing_stats()
        values: list[tuple[str, Any]] = [
            ("frame", frame_index),
            ("frame_id", frame_id),
            ("active_task", s.active_label),
            ("compensation_strength", s.compensation_strength),
            ("adaptive_strength", s.adaptive_strength),
            ("thermal_low_percentile", s.thermal_low_percentile),
            ("thermal_high_percentile", s.thermal_high_percentile),
            *((f"{k}_ms", v) for k, v in latency.items()),
            *((f"{k}_ms", v) for k, v in out.result.timings.items()),
            ("pairing_gap_ms", out.pair.gap_ns / 1e6),
            *((f"pairing_{k}", v) for k, v in stats.items()),
            ("worker_dropped", worker_counts.get("dropped", 0)),
            ("worker_processed", worker_counts.get("processed", 0)),
            ("input_errors", self.input_errors),
            ("fusion_errors", self.fusion_errors),
            *((f"feedback_{k}", v) for k, v in self.feedback_counts.items()),
            ("metrics_computed", metrics is not None),
        ]
        statuses = [Status("OK", f"{self.name}: frame", f"fused {s.active_label}", values)]
        outputs: list[tuple[str, str | None, str]]  # (output label, task, topic)
        if s.tasks:
            outputs = [(t, t, f"fused/{t}/image") for t in s.tasks]
        else:
            outputs = [("fused", None if s.task_weights else s.task, "fused/image")]
        for label, task, topic in outputs:
            if task is None:  # a blend
                strength = s.compensation_strength
            elif task == NO_TASK:
                strength = 0.0
            else:
                strength = strengths[task]
            task_values: list[tuple[str, Any]] = [("topic", topic), ("strength", strength)]
            if metrics is not None:
                task_values += list(metrics[label].items())
            with self._lock:
                loop = self._loops.get(task) if s.adaptive_strength and task else None
                if loop is not None:
                    task_values += [(f"controller_{k}", v)
                                    for k, v in loop.controller.state().items()]
                    task_values += [("controller_scores_fed", loop.fed),
                                    ("controller_scores_stale", loop.stale)]
            statuses.append(Status("OK", f"task: {task or s.active_label}",
                                   f"strength {strength:.3f}", task_values))
        return statuses

    # ---------------------------------------------------------------- feedback
    def feedback(self, stamp_ns: int,
                 statuses: Sequence[tuple[str, Sequence[tuple[str, str]]]]) -> None:
        """Scores from a downstream node: ``(task, [(key, value), ...])`` per status for
        the frame stamped ``stamp_ns``; the ``score`` value is the number."""
        with self._lock:
            s = self._settings
            used = self._frame_strengths.get(stamp_ns)
            counts = self.feedback_counts
            for task, values in statuses:
                counts["received"] += 1
                if task not in self.engine.task_vectors:
                    counts["unknown_task"] += 1
                    self.rejections.add("feedback_unknown_task")
                    continue
                score = None
                for key, value in values:
                    if key == "score":
                        try:
                            score = float(value)
                        except ValueError:
                            score = None
                if score is None or not math.isfinite(score):
                    counts["invalid"] += 1
                    self.rejections.add("feedback_invalid")
                    continue
                if used is None or task not in used:
                    counts["unknown_frame"] += 1
                    self.rejections.add("feedback_unknown_frame")
                    continue
                if not s.adaptive_strength:
                    continue
                loop = self._loop(task, s)
                if abs(used[task] - loop.controller.strength) > 1e-9:
                    loop.stale += 1  # fused before the controller's last change
                    continue
                loop.averager.add(task, score)
                loop.fed += 1
                mean = loop.averager.pop_mean()
                if mean is not None:
                    loop.controller.update(mean)

    # ------------------------------------------------------------------ health
    def error(self, kind: str, reason: str, cause: str | None = None) -> None:
        """Count an ``input`` or ``fusion`` error and pass it to ``on_error``; an input
        error is also counted as a rejection by ``cause`` (default ``input``)."""
        if kind == "input":
            self.rejections.add(cause or "input")
        with self._health_lock:
            self.last_error = reason
            if kind == "input":
                self.input_errors += 1
            else:
                self.fusion_errors += 1
            self._health.errors += 1
            self._health.last_error = reason
            self._health.last_error_kind = kind
            now = time.monotonic()
            report = now - self._last_error_report >= ERROR_REPORT_INTERVAL_S
            if report:
                self._last_error_report = now
        self._on_error(reason, report)

    def status(self, level: str, message: str, values: Mapping[str, Any]) -> Status:
        """A health status (``<name>: fusion``) with the standing values."""
        s = self._settings
        return Status(level, f"{self.name}: fusion", message, [
            ("model", self.engine.loaded.path),
            ("precision", self.engine.precision),
            ("active_task", s.active_label),
            ("compensation_strength", s.compensation_strength),
            ("adaptive_strength", s.adaptive_strength),
            ("frames", self.frames),
            ("input_errors", self.input_errors),
            ("fusion_errors", self.fusion_errors),
            *((f"rejected_{k}", v) for k, v in self.rejections.counts().items()),
            *values.items(),
        ])

    def health_status(self, period: float, worker_dropped: int) -> Status:
        """The periodic report over the window since the previous one."""
        stats = self.pairing_stats()
        drops = {
            "color_unmatched": stats["color_unmatched"],
            "out_of_order": stats["out_of_order"],
            "stale": stats["stale"],
            "overflow": stats["overflow"],
            "worker_dropped": worker_dropped,
        }
        with self._health_lock:
            h, self._health = self._health, _Health()
            ever = self._ever_received
        new_drops = {k: v - self._prev_drops.get(k, 0) for k, v in drops.items()}
        self._prev_drops = drops
        dropped = {k: v for k, v in new_drops.items() if v > 0}
        values: dict[str, Any] = {
            "window_s": period, "received": h.received, "fused": h.fused, "slow_frames": h.slow,
            "worst_latency_ms": h.worst_ms, **{f"dropped_{k}": v for k, v in new_drops.items()},
        }
        s = self._settings
        if h.errors:
            level, message = "ERROR", (
                f"{h.errors} {h.last_error_kind} error(s) in the last {period:g} s; "
                f"last: {h.last_error}"
            )
        elif dropped or h.slow or self.warnings:
            parts = []
            if dropped:
                parts.append("dropped " + ", ".join(f"{v} {k}" for k, v in dropped.items()))
            if h.slow:
                parts.append(
                    f"{h.slow} slow frame(s) over {s.slow_frame_ms:g} ms "
                    f"(worst {h.worst_ms:.0f} ms)"
                )
            parts += self.warnings
            level, message = "WARN", "; ".join(parts)
        elif h.received and not h.fused:
            level, message = "WARN", (
                "receiving images but no pair was fused: check stamps, slop and that both "
                "streams run"
            )
        elif not ever:
            level, message = "OK", "waiting for thermal and colour images"
        elif self.demand.paused:
            level, message = "OK", "paused: no subscriber to any output"
        else:
            level, message = "OK", f"fusing {s.active_label}"
        values.update(self.demand.values())
        return self.status(level, message, values)

