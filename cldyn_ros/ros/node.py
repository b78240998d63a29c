"""The ROS 2 fusion node ``cldyn_fusion`` (executable ``fusion_node``).

A thin adapter over the ROS-free layers, which bag replay and the command-line tools share::

    thermal/image ─┐  image_msgs.image_to_numpy    pairing.ApproximateTimePairer
                   ├─> (zero-copy views) ────────> (colour-referenced, bounded) ─┐
    rgb/image ─────┘                                                             │
                                                                                 v
    fused/image  <── engine.FusionEngine.fuse <── worker.LatestPairWorker (newest pair only)
    fused/<task>/image, ~/metrics, /diagnostics

Subscription callbacks only convert and pair (never block); inference runs in one worker
thread on the newest pair, older waiting pairs are dropped and counted, so latency stays one
fusion step under overload. Parameters are declared from :data:`PARAMETERS` (also read by
the launch/config consistency tests), validated in one place (:func:`settings_from_values`)
and take effect from the next frame. Downstream nodes close the loop through
``~/task_feedback`` (see :class:`FusionNode`).

A model that cannot be loaded at start is fatal: the node logs why and ``main`` returns 1.
"""

from __future__ import annotations

import collections
import contextlib
import math
import re
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import rclpy
import torch
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    SetParametersResult,
)
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from std_srvs.srv import Trigger

from ..imaging.registration import Registration
from ..imaging.thermal import ThermalNormalizer
from ..inference.checkpoint import NO_TASK, CheckpointError
from ..inference.engine import PRECISIONS, THERMAL_MODES, FusionEngine, InputError, TaskError
from ..metrics import FAST_METRICS, fusion_metrics
from ..streams.controller import ScoreAverager, StrengthController
from ..streams.image_msgs import (
    COLOR_ENCODINGS,
    THERMAL_ENCODINGS,
    ImageMessageError,
    image_to_numpy,
    numpy_to_image,
    stamp_to_ns,
)
from ..streams.pairing import ApproximateTimePairer, Frame, Pair, PairingStats
from ..streams.worker import LatestPairWorker

try:  # ROS 2 message_filters: optional (not installable from PyPI)
    import message_filters
except ImportError:  # pragma: no cover - depends on the installation
    message_filters = None

NODE_NAME = "cldyn_fusion"

# Topic names as the node uses them (relative: they follow the namespace; remappable).
THERMAL_TOPIC = "thermal/image"
RGB_TOPIC = "rgb/image"
FUSED_TOPIC = "fused/image"
TASK_TOPIC = "fused/{task}/image"
METRICS_TOPIC = "~/metrics"
FEEDBACK_TOPIC = "~/task_feedback"
DIAGNOSTICS_TOPIC = "/diagnostics"
SELECT_TASK_SERVICE = "~/select_task/{task}"
#: Every topic name a launch file may remap.
TOPICS = (THERMAL_TOPIC, RGB_TOPIC, FUSED_TOPIC, METRICS_TOPIC, FEEDBACK_TOPIC, DIAGNOSTICS_TOPIC)

OUTPUT_ENCODINGS = ("rgb8", "bgr8")
RELIABILITIES = ("best_effort", "reliable")
# Task names become topic and service name tokens.
_TOKEN = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_NS = 1_000_000_000


# ----------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class ParamSpec:
    """One declared parameter: the single source for the node, the launch file and tests.

    ``kind`` is one of ``bool``, ``int``, ``double``, ``string``, ``string_array``,
    ``double_array``; ``low``/``high`` give a ROS range (inclusive); ``choices`` a closed
    set of strings; ``read_only`` parameters are fixed after start.
    """

    name: str
    kind: str
    default: Any
    description: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    read_only: bool = False
    constraints: str = ""

    def descriptor(self) -> ParameterDescriptor:
        d = ParameterDescriptor(description=self.description, read_only=self.read_only)
        notes = [self.constraints] if self.constraints else []
        if self.choices:
            notes.insert(0, "one of: " + ", ".join(self.choices))
        d.additional_constraints = "; ".join(notes)
        if self.low is not None and self.high is not None:
            if self.kind == "double":
                d.floating_point_range = [
                    FloatingPointRange(from_value=float(self.low), to_value=float(self.high))
                ]
            elif self.kind == "int":
                d.integer_range = [
                    IntegerRange(from_value=int(self.low), to_value=int(self.high), step=1)
                ]
        return d


PARAMETERS: tuple[ParamSpec, ...] = (
    # --- model (read-only) ---
    ParamSpec("model_path", "string", "",
              "CLDyN checkpoint (.pt); empty: the shipped models/cldyn_default.pt found "
              "through the package's share directory", read_only=True),
    ParamSpec("device", "string", "auto",
              "torch device: auto (CUDA when present, else CPU), cpu, cuda, cuda:N",
              read_only=True, constraints="auto, cpu, cuda or cuda:N"),
    ParamSpec("precision", "string", "fp32", "inference precision (autocast)",
              choices=tuple(PRECISIONS), read_only=True),
    ParamSpec("threads", "int", 0, "CPU threads for torch; 0 keeps torch's default",
              low=0, high=256, read_only=True),
    ParamSpec("compile", "bool", False,
              "torch.compile the network, once per frame size (CUDA graphs on CUDA); the "
              "first frame of a size compiles (minutes on a CPU): use with the warm-up",
              read_only=True),
    ParamSpec("warmup_width", "int", 0,
              "fuse one blank frame of warmup_width x warmup_height at start (kernels, "
              "buffers, compilation) so the first real frame is not slow; 0 = no warm-up",
              low=0, high=16384, read_only=True, constraints="0 or > 0 with warmup_height"),
    ParamSpec("warmup_height", "int", 0, "height of the start-up warm-up frame (see "
              "warmup_width)", low=0, high=16384, read_only=True,
              constraints="0 or > 0 with warmup_width"),
    # --- task selection ---
    ParamSpec("task", "string", NO_TASK,
              "task the compensation serves on fused/image; 'none' is plain fusion",
              constraints="a task of the loaded model, or none"),
    ParamSpec("tasks", "string_array", (),
              "when non-empty: one batched inference serves all these tasks and each goes "
              "to fused/<task>/image (fused/image is then not published)",
              constraints="distinct tasks of the loaded model, or none"),
    ParamSpec("task_weights", "string_array", (),
              "a blend of task vectors for fused/image, as 'task:weight' entries (weights "
              "are normalised); when non-empty it replaces 'task'",
              constraints="'task:weight', weight finite and >= 0, at least one > 0"),
    ParamSpec("compensation_strength", "double", 1.0,
              "strength of the task compensation (0 = plain fusion); the start value of "
              "the adaptive controller", low=0.0, high=1.0),
    # --- closed loop ---
    ParamSpec("adaptive_strength", "bool", False,
              "adapt the strength per task from scores on ~/task_feedback"),
    ParamSpec("adaptive_min_strength", "double", 0.0,
              "lower bound of the adaptive strength", low=0.0, high=1.0),
    ParamSpec("adaptive_max_strength", "double", 1.0,
              "upper bound of the adaptive strength", low=0.0, high=1.0,
              constraints=">= adaptive_min_strength"),
    ParamSpec("adaptive_step", "double", 0.1,
              "initial step of the reward-penalty controller", low=0.01, high=0.5),
    ParamSpec("adaptive_window", "int", 1,
              "feedback scores averaged per controller update", low=1, high=1000),
    # --- pairing ---
    ParamSpec("slop", "double", 0.02,
              "largest stamp difference between the colour and thermal frame of a pair, "
              "seconds", low=0.0, high=10.0),
    ParamSpec("queue_size", "int", 10,
              "most frames kept waiting per stream for pairing", low=1, high=1000),
    ParamSpec("max_delay", "double", 0.5,
              "frames older than the newest stamp minus this are stale, seconds",
              low=0.001, high=60.0),
    ParamSpec("use_message_filters", "bool", False,
              "pair with message_filters.ApproximateTimeSynchronizer instead of the built-in "
              "pairer (only where the ROS 2 message_filters package is installed; otherwise "
              "a warning and the built-in pairer)", read_only=True),
    # --- input QoS (read-only) ---
    ParamSpec("qos_reliability", "string", "best_effort",
              "reliability of the input subscriptions (best_effort = sensor-data QoS)",
              choices=RELIABILITIES, read_only=True),
    ParamSpec("qos_depth", "int", 5, "history depth of the input subscriptions",
              low=1, high=1000, read_only=True),
    # --- output ---
    ParamSpec("output_encoding", "string", "rgb8", "encoding of the fused images",
              choices=OUTPUT_ENCODINGS),
    ParamSpec("metrics_every_n", "int", 10,
              "compute fusion metrics (EN, SD, SF, AG, MI, Qabf) on every n-th fused frame; "
              "0 disables", low=0, high=100000),
    ParamSpec("slow_frame_ms", "double", 100.0,
              "a frame whose arrival-to-publish latency exceeds this is slow (diagnostics "
              "WARN)", low=1.0, high=60000.0),
    ParamSpec("diagnostics_period", "double", 1.0, "period of /diagnostics reports, seconds",
              low=0.05, high=60.0, read_only=True),
    # --- thermal pre-processing and registration ---
    ParamSpec("thermal_mode", "string", "auto",
              "thermal normalisation: fixed (divide by the dtype's full scale), percentile "
              "(robust stretch), auto (fixed for 8-bit, percentile for 16-bit)",
              choices=THERMAL_MODES),
    ParamSpec("thermal_low_percentile", "double", 1.0,
              "percentile mapped to 0 (percentile mode)", low=0.0, high=100.0),
    ParamSpec("thermal_high_percentile", "double", 99.0,
              "percentile mapped to 1 (percentile mode)", low=0.0, high=100.0,
              constraints="> thermal_low_percentile"),
    ParamSpec("thermal_smoothing", "double", 0.9,
              "weight of the previous frame's limits in their moving average; 0 = none",
              low=0.0, high=0.999),
    ParamSpec("homography", "double_array", (),
              "3x3 row-major homography from thermal to colour pixels; empty = resize only",
              constraints="empty or 9 finite numbers, invertible"),
)
PARAMETER_SPECS: dict[str, ParamSpec] = {p.name: p for p in PARAMETERS}
#: Parameters every rclpy node declares itself.
BUILTIN_PARAMETERS = ("use_sim_time",)


def check_value(spec: ParamSpec, value: Any) -> str | None:
    """Why ``value`` is not a valid value of ``spec`` (type, range, choices), or None.

    Types are as strict as rclpy's: a double parameter needs a float (``1.0``, not ``1``).
    """
    kind = spec.kind
    if kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "double":
        ok = isinstance(value, float)
    elif kind == "string":
        ok = isinstance(value, str)
    elif kind == "string_array":
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
    elif kind == "double_array":
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, float) for v in value)
    else:  # pragma: no cover - a broken table
        return f"parameter '{spec.name}' has an unknown kind {kind!r}"
    if not ok:
        return f"parameter '{spec.name}' must be of type {kind}, got {value!r}"
    if spec.low is not None and spec.high is not None and kind in ("int", "double"):
        if not (spec.low <= value <= spec.high) or (kind == "double" and not math.isfinite(value)):
            return f"'{spec.name}' must be in [{spec.low}, {spec.high}], got {value}"
    if spec.choices and value not in spec.choices:
        return f"'{spec.name}' must be one of {list(spec.choices)}, got '{value}'"
    return None


def parse_task_weights(entries: Sequence[str]) -> dict[str, float]:
    """``['detection:0.7', 'segmentation:0.3']`` -> ``{'detection': 0.7, ...}``.

    Raises ValueError with the reason on a malformed entry, a duplicate task, a negative or
    non-finite weight, or no positive weight. Task names are checked by the caller.
    """
    weights: dict[str, float] = {}
    for entry in entries:
        name, sep, number = str(entry).rpartition(":")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"task_weights entry '{entry}' is not 'task:weight'")
        try:
            weight = float(number)
        except ValueError:
            raise ValueError(f"task_weights entry '{entry}': '{number}' is not a number") from None
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"task_weights entry '{entry}': weight must be finite and >= 0")
        if name in weights:
            raise ValueError(f"task_weights names task '{name}' twice")
        weights[name] = weight
    if weights and not any(w > 0 for w in weights.values()):
        raise ValueError("task_weights needs at least one weight > 0")
    return weights


@dataclass(frozen=True)
class Settings:
    """The validated run-time settings (an immutable snapshot: each frame reads one)."""

    task: str
    tasks: tuple[str, ...]
    weights: tuple[tuple[str, float], ...]
    strength: float
    adaptive: bool
    adaptive_min: float
    adaptive_max: float
    adaptive_step: float
    adaptive_window: int
    slop: float
    queue_size: int
    max_delay: float
    output_encoding: str
    metrics_every_n: int
    slow_frame_ms: float
    thermal_mode: str
    thermal_low: float
    thermal_high: float
    thermal_smoothing: float
    homography: tuple[float, ...]

    @property
    def output_tasks(self) -> tuple[str, ...]:
        """Tasks whose strength the frame uses (and that may have a controller)."""
        if self.tasks:
            return tuple(t for t in self.tasks if t != NO_TASK)
        if self.weights:
            return ()
        return () if self.task == NO_TASK else (self.task,)

    @property
    def active_label(self) -> str:
        """What fused/image currently shows (or the task list in multi-task mode)."""
        if self.tasks:
            return ",".join(self.tasks)
        if self.weights:
            return "+".join(f"{k}:{w:g}" for k, w in self.weights)
        return self.task


def settings_from_values(values: Mapping[str, Any], task_names: Sequence[str]) -> Settings:
    """Validate a full set of parameter values against the loaded model's ``task_names``
    (which include ``none``); raise ValueError with the reason of the first problem."""
    for spec in PARAMETERS:
        if spec.name not in values:
            raise ValueError(f"parameter '{spec.name}' has no value")
        reason = check_value(spec, values[spec.name])
        if reason:
            raise ValueError(reason)
    known = list(task_names)
    task = values["task"]
    if task not in known:
        raise ValueError(f"unknown task '{task}'; this model has {known}")
    tasks = tuple(values["tasks"])
    for t in tasks:
        if t not in known:
            raise ValueError(f"unknown task '{t}' in tasks; this model has {known}")
        if not _TOKEN.fullmatch(t):
            raise ValueError(f"task '{t}' cannot name a topic (fused/{t}/image)")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks lists a task twice: {list(tasks)}")
    weights = parse_task_weights(values["task_weights"])
    for name in weights:
        if name == NO_TASK or name not in known:
            raise ValueError(
                f"unknown task '{name}' in task_weights; blendable tasks: "
                f"{[k for k in known if k != NO_TASK]}"
            )
    lo, hi = values["adaptive_min_strength"], values["adaptive_max_strength"]
    if lo > hi:
        raise ValueError(
            f"adaptive_min_strength ({lo}) must not exceed adaptive_max_strength ({hi})"
        )
    plo, phi = values["thermal_low_percentile"], values["thermal_high_percentile"]
    if plo >= phi:
        raise ValueError(
            f"thermal_low_percentile ({plo}) must be below thermal_high_percentile ({phi})"
        )
    homography = tuple(float(v) for v in values["homography"])
    if homography:
        if len(homography) != 9:
            raise ValueError(
                f"homography needs 9 numbers (3x3 row-major) or none, got {len(homography)}"
            )
        try:
            Registration(homography)
        except ValueError as e:
            raise ValueError(f"homography: {e}") from None
    return Settings(
        task=task,
        tasks=tasks,
        weights=tuple((k, w) for k, w in weights.items() if w > 0),
        strength=float(values["compensation_strength"]),
        adaptive=bool(values["adaptive_strength"]),
        adaptive_min=float(lo),
        adaptive_max=float(hi),
        adaptive_step=float(values["adaptive_step"]),
        adaptive_window=int(values["adaptive_window"]),
        slop=float(values["slop"]),
        queue_size=int(values["queue_size"]),
        max_delay=float(values["max_delay"]),
        output_encoding=values["output_encoding"],
        metrics_every_n=int(values["metrics_every_n"]),
        slow_frame_ms=float(values["slow_frame_ms"]),
        thermal_mode=values["thermal_mode"],
        thermal_low=float(plo),
        thermal_high=float(phi),
        thermal_smoothing=float(values["thermal_smoothing"]),
        homography=homography,
    )


# ------------------------------------------------------------------------------- helpers
class StartupError(RuntimeError):
    """The node cannot start (model, device or parameters); the message says why."""


@dataclass(frozen=True)
class _Image:
    """Payload of a pairing Frame: the pixels (a view on the message) and its header."""

    array: np.ndarray
    encoding: str
    header: Header


@dataclass
class _Loop:
    """Closed-loop state of one task: controller plus score window."""

    controller: StrengthController
    averager: ScoreAverager
    fed: int = 0  # scores counted
    stale: int = 0  # scores for frames fused with another strength


@dataclass
class _Health:
    """Counters since the last periodic /diagnostics report."""

    received: int = 0
    fused: int = 0
    slow: int = 0
    errors: int = 0
    last_error: str = ""
    last_error_kind: str = ""
    worst_ms: float = 0.0
    drops: dict[str, int] = field(default_factory=dict)


def ns_to_time(ns: int) -> Time:
    return Time(sec=int(ns // _NS), nanosec=int(ns % _NS))


def _kv(key: str, value: Any) -> KeyValue:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = f"{value:.6g}"
    elif value is None:
        text = ""
    else:
        text = str(value)
    return KeyValue(key=key, value=text)


def _constant(array: np.ndarray) -> bool:
    return bool(array.size) and array.min() == array.max()


def _qos(reliability: str, depth: int) -> QoSProfile:
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=(
            ReliabilityPolicy.BEST_EFFORT if reliability == "best_effort"
            else ReliabilityPolicy.RELIABLE
        ),
        durability=DurabilityPolicy.VOLATILE,
    )


# ---------------------------------------------------------------------------------- node
class FusionNode(Node):
    """Thermal + colour fusion with task selection, metrics, diagnostics and closed loop.

    Topics (relative names follow the namespace and can be remapped):

    - in: ``thermal/image`` (mono8, mono16, 16UC1, 8UC1), ``rgb/image`` (rgb8, bgr8)
    - out: ``fused/image`` or ``fused/<task>/image`` per task when ``tasks`` is set
      (header of the colour frame); ``~/metrics`` and ``/diagnostics``
      (``diagnostic_msgs/DiagnosticArray``)
    - feedback in: ``~/task_feedback``: ``DiagnosticArray`` whose header stamp is the stamp of
      the fused frame scored; statuses named after a task with a ``score`` value (higher is
      better). With ``adaptive_strength`` each task's strength follows a
      :class:`~cldyn_ros.streams.controller.StrengthController` fed with the scores of frames fused
      at its current strength (scores of older frames are counted as stale and ignored).
    - services ``~/select_task/<task>`` (std_srvs/Trigger) for every task and ``none``.

    Raises:
        StartupError: the model cannot be loaded or a parameter is invalid.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self._closed = False
        self.worker: LatestPairWorker | None = None
        try:
            self._setup()
        except BaseException:
            self._closed = True
            super().destroy_node()
            raise

    def _setup(self) -> None:
        self._lock = threading.RLock()  # settings, values, pairer, loops
        self._health_lock = threading.Lock()
        self._values = self._declare_parameters()
        for spec in PARAMETERS:  # types, ranges and choices before the (slow) model load
            reason = check_value(spec, self._values[spec.name])
            if reason:
                raise StartupError(f"invalid parameter: {reason}")
        if (self._values["warmup_width"] == 0) != (self._values["warmup_height"] == 0):
            raise StartupError(
                "invalid parameter: warmup_width and warmup_height must both be 0 (no "
                f"warm-up) or both > 0, got {self._values['warmup_width']} x "
                f"{self._values['warmup_height']}"
            )
        self.engine = self._load_engine()
        try:
            self._settings = settings_from_values(self._values, self.engine.task_names)
        except ValueError as e:
            raise StartupError(f"invalid parameter: {e}") from None
        self._apply_engine_settings(self._settings, None)
        # The settings the engine was last configured with: the worker re-configures it at
        # the start of a frame, so a frame's ~/metrics name exactly what it was fused with.
        self._engine_settings = self._settings
        s = self._settings

        self._pairer = ApproximateTimePairer(s.slop, s.queue_size, s.max_delay)
        self._pairing_base = PairingStats()  # counts of replaced pairers
        self._last_stamp = {"thermal": None, "color": None}
        self._loops: dict[str, _Loop] = {}
        self._frame_strengths: collections.OrderedDict[int, dict[str, float]] = (
            collections.OrderedDict()
        )
        self._frames = 0
        self._input_errors = 0
        self._fusion_errors = 0
        self._feedback = {"received": 0, "unknown_frame": 0, "unknown_task": 0, "invalid": 0}
        self._health = _Health()
        self._ever_received = False
        self._last_error_report = 0.0
        self._warnings: list[str] = []
        self._prev_drops: dict[str, int] = {}

        # One group per input: each stream stays in order under any executor (the node's
        # own main() spins a single-threaded one, see make_executor).
        self._thermal_group = MutuallyExclusiveCallbackGroup()
        self._color_group = MutuallyExclusiveCallbackGroup()
        self._feedback_group = MutuallyExclusiveCallbackGroup()
        self._timer_group = MutuallyExclusiveCallbackGroup()

        out_qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        self._fused_pub = self.create_publisher(Image, FUSED_TOPIC, out_qos)
        self._task_pubs: dict[str, Any] = {}
        for task in s.tasks:
            self._task_publisher(task)
        self._metrics_pub = self.create_publisher(DiagnosticArray, METRICS_TOPIC, 10)
        self._diag_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
        self._publish_lock = threading.Lock()

        self.worker = LatestPairWorker(
            self._process, name="cldyn-fusion-worker", on_error=self._on_worker_error
        )
        self._make_inputs()
        self.create_subscription(
            DiagnosticArray, FEEDBACK_TOPIC, self._on_feedback, 10,
            callback_group=self._feedback_group,
        )
        self._select_services = []
        for task in self.engine.task_names:
            if not _TOKEN.fullmatch(task):
                self._warn(f"task '{task}' cannot name a service: no select_task service")
                continue
            self._select_services.append(self.create_service(
                Trigger, SELECT_TASK_SERVICE.format(task=task), partial(self._on_select_task, task)
            ))
        self.add_on_set_parameters_callback(self._on_set_parameters)
        period = float(self.get_parameter("diagnostics_period").value)
        self._timer = self.create_timer(period, self._on_timer, callback_group=self._timer_group)
        self._warm_up(s)
        self.worker.start()
        self.get_logger().info(
            f"ready: model {self.engine.loaded.path} on {self.engine.device} "
            f"({self.engine.precision}); tasks {self.engine.task_names}; "
            f"output {s.active_label}"
        )

    # ------------------------------------------------------------------ set-up
    def _declare_parameters(self) -> dict[str, Any]:
        """Declare every parameter of :data:`PARAMETERS`; return their start values."""
        values: dict[str, Any] = {}
        for spec in PARAMETERS:
            try:
                if spec.kind in ("string_array", "double_array"):
                    ptype = (Parameter.Type.STRING_ARRAY if spec.kind == "string_array"
                             else Parameter.Type.DOUBLE_ARRAY)
                    # rclpy cannot infer the type of an empty default: declare typed, then
                    # give the empty default unless an override set a value.
                    p = self.declare_parameter(spec.name, ptype, spec.descriptor())
                    if p.value is None:
                        self.set_parameters([Parameter(spec.name, ptype, list(spec.default))])
                else:
                    self.declare_parameter(spec.name, spec.default, spec.descriptor())
            except Exception as e:  # wrong type or out of range in a params file / override
                raise StartupError(f"invalid parameter '{spec.name}': {e}") from None
            value = self.get_parameter(spec.name).value
            if spec.kind.endswith("_array"):
                value = list(value)
            values[spec.name] = value
        return values

    def _load_engine(self) -> FusionEngine:
        model_path = self._values["model_path"]
        if not model_path:
            from ..paths import default_model_path

            try:
                model_path = str(default_model_path())
            except FileNotFoundError as e:
                raise StartupError(
                    f"no model_path given and the default model is missing: {e}"
                ) from None
        v = self._values
        try:
            return FusionEngine(
                model_path,
                device=v["device"],
                precision=v["precision"],
                normalizer=ThermalNormalizer(
                    v["thermal_low_percentile"], v["thermal_high_percentile"],
                    v["thermal_smoothing"],
                ),
                thermal_mode=v["thermal_mode"],
                threads=v["threads"] or None,
                compile=v["compile"],
            )
        except CheckpointError as e:
            raise StartupError(str(e)) from None
        except (ValueError, RuntimeError) as e:  # device, precision, thermal settings
            raise StartupError(f"cannot start the fusion engine: {e}") from None

    def _warm_up(self, s: Settings) -> None:
        """Fuse one blank frame of the configured warm-up size with the start requests."""
        width, height = self._values["warmup_width"], self._values["warmup_height"]
        if not (width and height):
            return
        started = time.monotonic()
        try:
            self.engine.warm_up(height, width, self._requests(s, {}))
        except RuntimeError as e:  # out of memory at this size: serve anyway, say so
            self._warn(f"warm-up at {width}x{height} failed: {_first_line(e)}")
            return
        self.get_logger().info(
            f"warmed up at {width}x{height} in {time.monotonic() - started:.2f} s"
        )

    def _make_inputs(self) -> None:
        qos = _qos(self._values["qos_reliability"], self._values["qos_depth"])
        self._synchronizer = None
        if self._values["use_message_filters"]:
            if message_filters is None:
                self._warn(
                    "use_message_filters is true but the ROS 2 message_filters package is not "
                    "installed: using the built-in approximate-time pairer"
                )
            else:
                subs = [
                    message_filters.Subscriber(
                        self, Image, topic, qos_profile=qos, callback_group=group
                    )
                    for topic, group in ((THERMAL_TOPIC, self._thermal_group),
                                         (RGB_TOPIC, self._color_group))
                ]
                s = self._settings
                self._synchronizer = message_filters.ApproximateTimeSynchronizer(
                    subs, s.queue_size, s.slop
                )
                self._synchronizer.registerCallback(self._on_synchronized)
                self._mf_subscribers = subs
                return
        self.create_subscription(
            Image, THERMAL_TOPIC, partial(self._on_image, "thermal"), qos,
            callback_group=self._thermal_group,
        )
        self.create_subscription(
            Image, RGB_TOPIC, partial(self._on_image, "color"), qos,
            callback_group=self._color_group,
        )

    def _warn(self, text: str) -> None:
        self.get_logger().warning(text)
        self._warnings.append(text)

    # -------------------------------------------------------------- parameters
    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        with self._lock:
            values = dict(self._values)
            for p in params:
                spec = PARAMETER_SPECS.get(p.name)
                if spec is not None:  # others: use_sim_time, handled by rclpy
                    value = p.value
                    if spec.kind.endswith("_array") and value is not None:
                        value = list(value)
                    values[p.name] = value
            try:
                settings = settings_from_values(values, self.engine.task_names)
            except ValueError as e:
                return SetParametersResult(successful=False, reason=str(e))
            old = self._settings
            if self._synchronizer is not None and (
                (settings.slop, settings.queue_size) != (old.slop, old.queue_size)
            ):
                return SetParametersResult(
                    successful=False,
                    reason="slop and queue_size are fixed while use_message_filters is on",
                )
            self._values = values
            if (settings.slop, settings.queue_size, settings.max_delay) != (
                old.slop, old.queue_size, old.max_delay
            ):
                self._pairing_base = _add_stats(self._pairing_base, self._pairer.stats)
                self._pairer = ApproximateTimePairer(
                    settings.slop, settings.queue_size, settings.max_delay
                )
            if (
                settings.adaptive != old.adaptive
                or settings.strength != old.strength
                or (settings.adaptive_min, settings.adaptive_max, settings.adaptive_step,
                    settings.adaptive_window)
                != (old.adaptive_min, old.adaptive_max, old.adaptive_step, old.adaptive_window)
            ):
                self._loops = {}  # controllers restart from compensation_strength
            self._settings = settings
            for task in settings.tasks:  # subscribers can connect before the first frame
                self._task_publisher(task)
        if settings.active_label != old.active_label:
            self.get_logger().info(f"output now: {settings.active_label}")
        return SetParametersResult(successful=True)

    def _apply_engine_settings(self, s: Settings, old: Settings | None) -> None:
        if old is None or (s.thermal_low, s.thermal_high, s.thermal_smoothing) != (
            old.thermal_low, old.thermal_high, old.thermal_smoothing
        ):
            self.engine.normalizer = ThermalNormalizer(
                s.thermal_low, s.thermal_high, s.thermal_smoothing
            )
        self.engine.thermal_mode = s.thermal_mode
        if old is None or s.homography != old.homography:
            self.engine.registration = Registration(list(s.homography) or None)

    @property
    def settings(self) -> Settings:
        return self._settings

    def _on_select_task(self, task: str, request: Trigger.Request, response: Trigger.Response):
        result = self.set_parameters_atomically([
            Parameter("task", Parameter.Type.STRING, task),
            Parameter("task_weights", Parameter.Type.STRING_ARRAY, []),
        ])
        response.success = bool(result.successful)
        if result.successful:
            response.message = f"active task: {task}"
            if self._settings.tasks:
                response.message += (
                    f" (note: 'tasks' is set, outputs go to fused/<task>/image for "
                    f"{list(self._settings.tasks)})"
                )
        else:
            response.message = f"cannot select task '{task}': {result.reason}"
        return response

    # ------------------------------------------------------------------ inputs
    def _convert(self, role: str, msg: Image) -> _Image | None:
        allowed = THERMAL_ENCODINGS if role == "thermal" else COLOR_ENCODINGS
        name = "thermal" if role == "thermal" else "colour"
        if msg.encoding not in allowed:
            self._input_error(
                f"{name} image rejected: encoding '{msg.encoding}' is not one of {list(allowed)}"
            )
            return None
        try:
            array = image_to_numpy(msg)
        except ImageMessageError as e:
            self._input_error(f"{name} image rejected: {e}")
            return None
        return _Image(array, msg.encoding, msg.header)

    def _on_image(self, role: str, msg: Image) -> None:
        if self._closed:
            return
        arrival = time.monotonic_ns()
        with self._health_lock:
            self._health.received += 1
            self._ever_received = True
        image = self._convert(role, msg)
        if image is None:
            return
        stamp = stamp_to_ns(msg.header.stamp)
        frame = Frame(stamp, image, msg.header.frame_id, arrival)
        with self._lock:
            last = self._last_stamp[role]
            self._last_stamp[role] = stamp
            jump = max(_NS, 2 * round(self._settings.max_delay * _NS))
            if last is not None and stamp < last - jump:
                # Time went backwards (bag loop, simulation restart): start pairing over.
                self.get_logger().info(
                    f"{role} stamps jumped back by {(last - stamp) / _NS:.3f} s: pairing restarts"
                )
                self._pairer.reset()
                self._last_stamp = {"thermal": None, "color": None}
            pairer = self._pairer
        pairs = pairer.add_thermal(frame) if role == "thermal" else pairer.add_color(frame)
        for pair in pairs:
            self.worker.submit((pair, time.monotonic_ns()))

    def _on_synchronized(self, thermal_msg: Image, color_msg: Image) -> None:
        """message_filters callback (only where it is installed)."""
        if self._closed:
            return
        arrival = time.monotonic_ns()
        with self._health_lock:
            self._health.received += 2
            self._ever_received = True
        thermal, color = self._convert("thermal", thermal_msg), self._convert("color", color_msg)
        if thermal is None or color is None:
            return
        t_ns, c_ns = stamp_to_ns(thermal_msg.header.stamp), stamp_to_ns(color_msg.header.stamp)
        pair = Pair(
            Frame(c_ns, color, color_msg.header.frame_id, arrival),
            Frame(t_ns, thermal, thermal_msg.header.frame_id, arrival),
            c_ns - t_ns,
        )
        self.worker.submit((pair, arrival))

    # ------------------------------------------------------------------ fusion
    def _strengths(self, s: Settings) -> dict[str, float]:
        """Strength per output task for this frame (controller or parameter)."""
        out = {}
        with self._lock:
            for task in s.output_tasks:
                out[task] = self._loop(task, s).controller.strength if s.adaptive else s.strength
        return out

    def _loop(self, task: str, s: Settings) -> _Loop:
        loop = self._loops.get(task)
        if loop is None:
            start = min(max(s.strength, s.adaptive_min), s.adaptive_max)
            loop = _Loop(
                StrengthController(
                    strength=start, min_strength=s.adaptive_min, max_strength=s.adaptive_max,
                    step=s.adaptive_step, min_step=min(0.01, s.adaptive_step),
                    max_step=max(0.3, s.adaptive_step),
                ),
                ScoreAverager(window=s.adaptive_window),
            )
            self._loops[task] = loop
        return loop

    def _requests(self, s: Settings, strengths: dict[str, float]) -> list:
        engine = self.engine
        if s.tasks:
            return [engine.request(t, strengths.get(t, s.strength), label=t) for t in s.tasks]
        if s.weights:
            return [engine.request(dict(s.weights), s.strength, label="fused")]
        return [engine.request(s.task, strengths.get(s.task, s.strength), label="fused")]

    def _process(self, item: tuple[Pair, int]) -> None:
        """Worker thread: fuse one pair and publish images, metrics and health."""
        pair, decided = item
        if self._closed:
            return
        started = time.monotonic_ns()
        s = self._settings
        if s is not self._engine_settings:  # only this thread touches the engine
            self._apply_engine_settings(s, self._engine_settings)
            self._engine_settings = s
        color: _Image = pair.color.data
        thermal: _Image = pair.thermal.data
        strengths = self._strengths(s)
        warnings = []
        for name, image in (("thermal", thermal), ("colour", color)):
            if _constant(image.array):
                warnings.append(
                    f"{name} frame is constant (every pixel {image.array.flat[0]}): "
                    "no usable image information (sensor covered, failed or not started?)"
                )
        try:
            result = self.engine.fuse(
                thermal.array, color.array, self._requests(s, strengths),
                color_order="bgr" if color.encoding == "bgr8" else "rgb",
            )
        except InputError as e:
            self._input_error(f"frame pair rejected: {e}")
            return
        except TaskError as e:
            self._error("fusion", f"task request failed: {e}")
            return
        except RuntimeError as e:  # CUDA out of memory, device errors, ...
            if self.engine.device.type == "cuda":
                torch.cuda.empty_cache()
            self._error("fusion", f"fusion failed: {_first_line(e)}")
            return
        for text in warnings:
            self._input_error(text)  # fused anyway (finite output), but reported
        want = "bgr" if s.output_encoding == "bgr8" else "rgb"
        header = color.header
        with self._publish_lock:
            if self._closed:
                return
            for label, img in result.images.items():
                if want != result.color_order:
                    img = img[..., ::-1]
                msg = numpy_to_image(img, s.output_encoding, Image(), header=header)
                publisher = self._fused_pub if not s.tasks else self._task_publisher(label)
                self._safe_publish(publisher, msg)
        done = time.monotonic_ns()
        now_ns = self.get_clock().now().nanoseconds
        with self._lock:
            self._frames += 1
            frame_index = self._frames
            self._frame_strengths[pair.color.stamp_ns] = strengths
            while len(self._frame_strengths) > 256:
                self._frame_strengths.popitem(last=False)
        latency_arrival = (done - pair.color.arrival_ns) / 1e6
        with self._health_lock:
            h = self._health
            h.fused += 1
            h.worst_ms = max(h.worst_ms, latency_arrival)
            if latency_arrival > s.slow_frame_ms:
                h.slow += 1
        metrics = None
        if s.metrics_every_n and frame_index % s.metrics_every_n == 0:
            with torch.inference_mode():
                fused = result.fused_y.float().clamp(0.0, 1.0)
                n = fused.shape[0]
                values = fusion_metrics(
                    fused, result.ir.expand(n, -1, -1, -1), result.vis_y.expand(n, -1, -1, -1),
                    FAST_METRICS,
                )
                metrics = {
                    label: {k: float(v[i]) for k, v in values.items()}
                    for i, label in enumerate(result.images)
                }
        self._publish_metrics(
            s, pair, header, frame_index, strengths, result.timings, metrics,
            latency_stamp=(now_ns - pair.color.stamp_ns) / 1e6,
            latency_arrival=latency_arrival,
            pairing_wait=(decided - pair.color.arrival_ns) / 1e6,
            queue_wait=(started - decided) / 1e6,
            processing=(done - started) / 1e6,
        )

    def _task_publisher(self, task: str):
        with self._lock:
            pub = self._task_pubs.get(task)
            if pub is None:
                qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
                pub = self.create_publisher(Image, TASK_TOPIC.format(task=task), qos)
                self._task_pubs[task] = pub
            return pub

    def pairing_stats(self) -> dict[str, int]:
        """Cumulative pairing counters (over pairers replaced by parameter changes)."""
        with self._lock:
            return _add_stats(self._pairing_base, self._pairer.stats).as_dict()

    def _drop_counts(self) -> dict[str, int]:
        stats = self.pairing_stats()
        return {
            "color_unmatched": stats["color_unmatched"],
            "out_of_order": stats["out_of_order"],
            "stale": stats["stale"],
            "overflow": stats["overflow"],
            "worker_dropped": self.worker.dropped,
        }

    def _publish_metrics(self, s: Settings, pair: Pair, header: Header, frame_index: int,
                         strengths: dict[str, float], timings: dict[str, float],
                         metrics: dict[str, dict[str, float]] | None, **latency: float) -> None:
        stats = self.pairing_stats()
        frame = DiagnosticStatus(
            level=DiagnosticStatus.OK, name=f"{self.get_name()}: frame",
            message=f"fused {s.active_label}", hardware_id=str(self.engine.device),
        )
        frame.values = [
            _kv("frame", frame_index),
            _kv("frame_id", header.frame_id),
            _kv("active_task", s.active_label),
            _kv("compensation_strength", s.strength),
            _kv("adaptive_strength", s.adaptive),
            _kv("thermal_low_percentile", s.thermal_low),
            _kv("thermal_high_percentile", s.thermal_high),
            *(_kv(f"{k}_ms", v) for k, v in latency.items()),
            *(_kv(f"{k}_ms", v) for k, v in timings.items()),
            _kv("pairing_gap_ms", pair.gap_ns / 1e6),
            *(_kv(f"pairing_{k}", v) for k, v in stats.items()),
            _kv("worker_dropped", self.worker.dropped),
            _kv("worker_processed", self.worker.processed),
            _kv("input_errors", self._input_errors),
            _kv("fusion_errors", self._fusion_errors),
            *(_kv(f"feedback_{k}", v) for k, v in self._feedback.items()),
            _kv("metrics_computed", metrics is not None),
        ]
        statuses = [frame]
        if s.tasks:  # (output label, task, topic)
            outputs = [(t, t, TASK_TOPIC.format(task=t)) for t in s.tasks]
        else:
            outputs = [("fused", None if s.weights else s.task, FUSED_TOPIC)]
        for label, task, topic in outputs:
            if task is None:  # a blend
                strength = s.strength
            elif task == NO_TASK:
                strength = 0.0
            else:
                strength = strengths[task]
            st = DiagnosticStatus(
                level=DiagnosticStatus.OK, name=f"task: {task or s.active_label}",
                message=f"strength {strength:.3f}", hardware_id=str(self.engine.device),
            )
            st.values = [_kv("topic", topic), _kv("strength", strength)]
            if metrics is not None:
                st.values += [_kv(k, v) for k, v in metrics[label].items()]
            with self._lock:
                loop = self._loops.get(task) if s.adaptive and task else None
                if loop is not None:
                    state = loop.controller.state()
                    st.values += [_kv(f"controller_{k}", v) for k, v in state.items()]
                    st.values += [_kv("controller_scores_fed", loop.fed),
                                  _kv("controller_scores_stale", loop.stale)]
            statuses.append(st)
        msg = DiagnosticArray(header=Header(stamp=header.stamp, frame_id=header.frame_id),
                              status=statuses)
        self._safe_publish(self._metrics_pub, msg)

    # ---------------------------------------------------------------- feedback
    def _on_feedback(self, msg: DiagnosticArray) -> None:
        stamp = stamp_to_ns(msg.header.stamp)
        with self._lock:
            s = self._settings
            used = self._frame_strengths.get(stamp)
            for status in msg.status:
                self._feedback["received"] += 1
                task = status.name
                if task not in self.engine.task_vectors:
                    self._feedback["unknown_task"] += 1
                    continue
                score = None
                for kv in status.values:
                    if kv.key == "score":
                        try:
                            score = float(kv.value)
                        except ValueError:
                            score = None
                if score is None or not math.isfinite(score):
                    self._feedback["invalid"] += 1
                    continue
                if used is None or task not in used:
                    self._feedback["unknown_frame"] += 1
                    continue
                if not s.adaptive:
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
    def _input_error(self, reason: str) -> None:
        self._error("input", reason)

    def _error(self, kind: str, reason: str) -> None:
        with self._health_lock:
            if kind == "input":
                self._input_errors += 1
            else:
                self._fusion_errors += 1
            self._health.errors += 1
            self._health.last_error = reason
            self._health.last_error_kind = kind
            now = time.monotonic()
            report = now - self._last_error_report >= 0.2
            if report:
                self._last_error_report = now
        self.get_logger().error(reason, throttle_duration_sec=5.0)
        if report:  # at once, rate-limited; the periodic report repeats it
            status = self._status(DiagnosticStatus.ERROR, reason, {})
            self._publish_diagnostics(status)

    def _on_worker_error(self, item: Any, exc: BaseException) -> None:
        self._error("fusion", f"fusion failed: {type(exc).__name__}: {_first_line(exc)}")

    def _status(self, level: bytes, message: str, values: dict[str, Any]) -> DiagnosticStatus:
        s = self._settings
        st = DiagnosticStatus(level=level, name=f"{self.get_name()}: fusion",
                              message=message, hardware_id=str(self.engine.device))
        st.values = [
            _kv("model", self.engine.loaded.path),
            _kv("active_task", s.active_label),
            _kv("compensation_strength", s.strength),
            _kv("adaptive_strength", s.adaptive),
            _kv("frames", self._frames),
            _kv("input_errors", self._input_errors),
            _kv("fusion_errors", self._fusion_errors),
            *(_kv(k, v) for k, v in values.items()),
        ]
        return st

    def _on_timer(self) -> None:
        if self._closed:
            return
        period = float(self.get_parameter("diagnostics_period").value)
        drops = self._drop_counts()
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
        if h.errors:
            level, message = DiagnosticStatus.ERROR, (
                f"{h.errors} {h.last_error_kind} error(s) in the last {period:g} s; "
                f"last: {h.last_error}"
            )
        elif dropped or h.slow or self._warnings:
            parts = []
            if dropped:
                parts.append("dropped " + ", ".join(f"{v} {k}" for k, v in dropped.items()))
            if h.slow:
                parts.append(
                    f"{h.slow} slow frame(s) over {self._settings.slow_frame_ms:g} ms "
                    f"(worst {h.worst_ms:.0f} ms)"
                )
            parts += self._warnings
            level, message = DiagnosticStatus.WARN, "; ".join(parts)
        elif h.received and not h.fused:
            level, message = DiagnosticStatus.WARN, (
                "receiving images but no pair was fused: check stamps, slop and that both "
                "streams run"
            )
        elif not ever:
            level, message = DiagnosticStatus.OK, "waiting for thermal and colour images"
        else:
            level, message = DiagnosticStatus.OK, f"fusing {self._settings.active_label}"
        self._publish_diagnostics(self._status(level, message, values))

    def _publish_diagnostics(self, status: DiagnosticStatus) -> None:
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._safe_publish(self._diag_pub, msg)

    def _safe_publish(self, publisher: Any, msg: Any) -> None:
        if self._closed:
            return
        try:
            publisher.publish(msg)
        except Exception:  # context shut down under us (Ctrl-C): nothing left to tell
            if not self._closed and self.context.ok():
                raise

    # --------------------------------------------------------------- shutdown
    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker (finishing the frame in progress) and the timer. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.worker is not None:
            self.worker.stop(timeout)
        with contextlib.suppress(Exception):
            self._timer.cancel()

    def destroy_node(self) -> None:
        self.close()
        super().destroy_node()


def _add_stats(a: PairingStats, b: PairingStats) -> PairingStats:
    da, db = a.as_dict(), b.as_dict()
    return PairingStats(**{k: da[k] + db[k] for k in da})


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def make_executor(context: Any = None) -> SingleThreadedExecutor:
    """The executor that spins the node: single-threaded.

    The callbacks only take, view and pair messages (microseconds); fusion runs in the
    worker thread. rclpy's MultiThreadedExecutor is worse here, not better: while a
    dispatched callback still waits in its thread pool, the spin thread yields it again and
    rebuilds the wait set at once instead of waiting, so under a 200 Hz flood it spins
    thousands of times a second in Python holding the interpreter lock, and the fusion
    worker (which needs that lock between torch operations) and the pool threads starve.
    """
    return SingleThreadedExecutor(context=context)


def main(args: Sequence[str] | None = None) -> int:
    """Entry point of ``fusion_node``: spin until Ctrl-C; 0 on a clean exit, 1 when the node
    cannot start (the reason is logged)."""
    node = executor = None
    # Ctrl-C: rclpy's signal handler shuts the context down, which ends spin(). It then
    # calls the Python handler it replaced; the default one would also raise
    # KeyboardInterrupt at an arbitrary point of this thread (inside rclpy's executor too,
    # leaving half-built objects that fail in __del__), so a no-op takes its place.
    signal.signal(signal.SIGINT, lambda signum, frame: None)
    try:
        rclpy.init(args=args)
        try:
            node = FusionNode()
        except StartupError as e:
            rclpy.logging.get_logger(NODE_NAME).fatal(f"cannot start: {e}")
            return 1
        executor = make_executor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        # The signal handler shuts the context down while spin() may be building its next
        # wait set, which then fails with an RCLError ("context is not valid"): that is the
        # shutdown, not a fault. Anything raised while the context is still up is.
        if rclpy.ok():
            raise
    finally:
        if node is not None:
            node.close()
        if executor is not None:
            executor.shutdown()
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
