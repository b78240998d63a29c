"""The fusion settings: one schema for the node, the launch file, the config and the tools.

:class:`FusionSettings` is the single source of every setting's name (= the ROS parameter
name), type, default, range or choices, read-only flag and description. Everything else
derives from it: the node's parameter declarations, descriptors and validation
(:mod:`cldyn_ros.ros.parameters`), the launch file's argument types and descriptions, the
check of ``config/fusion.yaml``, the command-line options (:func:`add_option`) and the
README's parameter table (:func:`markdown_table`, compared with the README by a test).

A new setting is one field here plus the code that uses it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from ..imaging.registration import Registration
from ..imaging.thermal import THERMAL_MODES, ThermalNormalizer
from ..inference.checkpoint import NO_TASK
from ..inference.engine import PRECISIONS

__all__ = [
    "BUILTIN_PARAMETERS", "OUTPUT_ENCODINGS", "PARAMETERS", "PARAMETER_SPECS", "PER_IMAGE",
    "RELIABILITIES", "TRANSPORTS", "FusionSettings", "ParamSpec", "add_option", "check_value",
    "markdown_table", "parse_task_weights", "settings_from_values",
]

OUTPUT_ENCODINGS = ("rgb8", "bgr8")
RELIABILITIES = ("best_effort", "reliable")
TRANSPORTS = ("raw", "compressed")
#: Parameters every rclpy node declares itself.
BUILTIN_PARAMETERS = ("use_sim_time",)
# Task names become topic and service name tokens.
TASK_TOKEN = re.compile(r"[A-Za-z][A-Za-z0-9_]*")

_THERMAL_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ThermalNormalizer)}
#: Python annotation of a field -> the ROS parameter kind.
_KINDS = {"str": "string", "int": "int", "float": "double", "bool": "bool",
          "tuple[str, ...]": "string_array", "tuple[float, ...]": "double_array"}


@dataclass(frozen=True)
class ParamSpec:
    """One setting as the schema describes it.

    ``kind`` is one of ``bool``, ``int``, ``double``, ``string``, ``string_array``,
    ``double_array``; ``low``/``high`` give an inclusive range; ``choices`` a closed set of
    strings; ``read_only`` settings are fixed after start; ``constraints`` says in words
    what the type and range do not (checked by :meth:`FusionSettings.from_values`);
    ``launch`` settings are arguments of launch/fusion.launch.py.
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
    launch: bool = False

    @property
    def default_value(self) -> Any:
        """The default as a parameter value (arrays as lists)."""
        return list(self.default) if self.kind.endswith("_array") else self.default


def setting(default: Any, description: str, *, low: float | None = None,
            high: float | None = None, choices: Sequence[str] = (), read_only: bool = False,
            constraints: str = "", table: str = "", launch: bool = False) -> Any:
    """A :class:`FusionSettings` field; ``table`` is its README description when that
    differs from the (longer) parameter description."""
    return field(default=default, metadata={
        "description": description, "low": low, "high": high, "choices": tuple(choices),
        "read_only": read_only, "constraints": constraints, "table": table,
        "launch": launch,
    })


@dataclass(frozen=True)
class FusionSettings:
    """Every setting of the fusion node, validated (an immutable snapshot: each frame reads
    one). Build it with :meth:`from_values`."""

    # --- node life cycle (read-only)
    autostart: bool = setting(
        True, "configure and activate the (lifecycle) node at start; false: it waits "
        "unconfigured for a lifecycle manager's transitions", read_only=True,
        table="configure + activate at start; `false`: wait for lifecycle transitions", launch=True)
    # --- model (read-only)
    model_path: str = setting(
        "", "CLDyN checkpoint (.pt); empty: the shipped models/cldyn_default.pt found "
        "through the package's share directory", read_only=True,
        table="checkpoint; empty = the shipped `models/cldyn_default.pt`", launch=True)
    device: str = setting(
        "auto", "torch device: auto (CUDA when present, else CPU), cpu, cuda, cuda:N",
        read_only=True, constraints="auto, cpu, cuda or cuda:N", table="torch device", launch=True)
    precision: str = setting("fp32", "inference precision (autocast); on a CPU bf16 / fp16 only "
                             "where it has native instructions",
                             choices=tuple(PRECISIONS), read_only=True, launch=True)
    threads: int = setting(0, "CPU threads for torch; 0 keeps torch's default", low=0,
                           high=256, read_only=True,
                           table="torch CPU threads, 0 = torch default")
    internal_scale: float = setting(
        0.0, "run the network at this fraction of the frame size, with the model's detail "
        "prior and the composition at full size (CPU mode: about internal_scale^2 of the "
        "network's cost; needs a model with a prior, such as the shipped default); 0 = the "
        "checkpoint's internal_scale, else 1 (full resolution)",
        low=0.0, high=1.0, read_only=True, constraints="0, or in (0, 1]",
        table="network resolution as a fraction of the frame (prior and composition at full "
        "size); 0 = the checkpoint's, else 1; 0.25 for a 2-core CPU robot")
    compile: bool = setting(
        False, "torch.compile the network, once per frame size (CUDA graphs on CUDA); the "
        "first frame of a size compiles (minutes on a CPU): use with the warm-up",
        read_only=True,
        table="`torch.compile` the network once per frame size (CUDA graphs on CUDA); with "
        "the warm-up the compilation happens at start")
    warmup_width: int = setting(
        0, "fuse one blank frame of warmup_width x warmup_height at start (kernels, "
        "buffers, compilation) so the first real frame is not slow; 0 = no warm-up",
        low=0, high=16384, read_only=True, constraints="0 or > 0 with warmup_height",
        table="fuse one blank frame of this size at start so the first camera frame is not "
        "slow (`640` x `512` in `config/fusion.yaml`)")
    warmup_height: int = setting(
        0, "height of the start-up warm-up frame (see warmup_width)", low=0, high=16384,
        read_only=True, constraints="0 or > 0 with warmup_width")
    # --- task selection
    task: str = setting(NO_TASK, "task the compensation serves on fused/image; 'none' is "
                        "plain fusion", constraints="a task of the loaded model, or none",
                        table="task served on `fused/image`", launch=True)
    tasks: tuple[str, ...] = setting(
        (), "when non-empty: one batched inference serves all these tasks and each goes to "
        "fused/<task>/image (fused/image is then not published)",
        constraints="distinct tasks of the loaded model, or none",
        table="one output per task, `fused/<task>/image`", launch=True)
    task_weights: tuple[str, ...] = setting(
        (), "a blend of task vectors for fused/image, as 'task:weight' entries (weights are "
        "normalised); when non-empty it replaces 'task'",
        constraints="'task:weight', weight finite and >= 0, at least one > 0",
        table="blend on `fused/image`; replaces `task` when set")
    compensation_strength: float = setting(
        1.0, "strength of the task compensation (0 = plain fusion); the start value of the "
        "adaptive controller", low=0.0, high=1.0,
        table="0 = plain fusion; start value of the controller", launch=True)
    # --- closed loop
    adaptive_strength: bool = setting(
        False, "adapt the strength per task from scores on ~/task_feedback", launch=True)
    adaptive_min_strength: float = setting(0.0, "lower bound of the adaptive strength",
                                           low=0.0, high=1.0)
    adaptive_max_strength: float = setting(1.0, "upper bound of the adaptive strength",
                                           low=0.0, high=1.0,
                                           constraints=">= adaptive_min_strength")
    adaptive_step: float = setting(0.1, "initial step of the reward-penalty controller",
                                   low=0.01, high=0.5)
    adaptive_window: int = setting(1, "feedback scores averaged per controller update",
                                   low=1, high=1000)
    # --- pairing
    slop: float = setting(
        0.02, "largest stamp difference between the colour and thermal frame of a pair, "
        "seconds", low=0.0, high=10.0)
    queue_size: int = setting(10, "most frames kept waiting per stream for pairing", low=1,
                              high=1000)
    max_delay: float = setting(
        0.5, "frames older than the newest stamp minus this are stale, seconds", low=0.001,
        high=60.0)
    # --- inputs (read-only)
    thermal_transport: str = setting(
        "raw", "how thermal images arrive, as image_transport names it: raw (sensor_msgs/Image "
        "on thermal/image) or compressed (sensor_msgs/CompressedImage on the resolved "
        "thermal/image topic + /compressed)", choices=TRANSPORTS, read_only=True,
        table="`raw`: `sensor_msgs/Image` on `thermal/image`; `compressed`: "
        "`CompressedImage` on `<thermal/image>/compressed`", launch=True)
    rgb_transport: str = setting(
        "raw", "how colour images arrive: raw (sensor_msgs/Image on rgb/image) or compressed "
        "(sensor_msgs/CompressedImage on the resolved rgb/image topic + /compressed)",
        choices=TRANSPORTS, read_only=True,
        table="as `thermal_transport`, for `rgb/image`", launch=True)
    # --- output
    output_encoding: str = setting("rgb8", "encoding of the fused images",
                                   choices=OUTPUT_ENCODINGS, launch=True)
    metrics_every_n: int = setting(
        10, "compute fusion metrics (EN, SD, SF, AG, MI, Qabf) on every n-th fused frame; 0 "
        "disables", low=0, high=100000)
    slow_frame_ms: float = setting(
        100.0, "a frame whose arrival-to-publish latency exceeds this is slow (diagnostics "
        "WARN)", low=1.0, high=60000.0)
    diagnostics_period: float = setting(1.0, "period of /diagnostics reports, seconds",
                                        low=0.05, high=60.0, read_only=True)
    # --- thermal pre-processing and registration
    thermal_mode: str = setting(
        "auto", "thermal normalisation: fixed (divide by the dtype's full scale), percentile "
        "(robust stretch), auto (fixed for 8-bit, percentile for 16-bit)",
        choices=THERMAL_MODES)
    thermal_low_percentile: float = setting(
        _THERMAL_DEFAULTS["low_percentile"], "percentile mapped to 0 (percentile mode)",
        low=0.0, high=100.0)
    thermal_high_percentile: float = setting(
        _THERMAL_DEFAULTS["high_percentile"], "percentile mapped to 1 (percentile mode)",
        low=0.0, high=100.0, constraints="> thermal_low_percentile")
    thermal_smoothing: float = setting(
        0.9, "weight of the previous frame's limits in their moving average; 0 = none",
        low=0.0, high=0.999)
    homography: tuple[float, ...] = setting(
        (), "3x3 row-major homography from thermal to colour pixels; empty = resize only",
        constraints="empty or 9 finite numbers, invertible")

    # ------------------------------------------------------------------ derived
    @cached_property
    def weights(self) -> tuple[tuple[str, float], ...]:
        """The blend of ``task_weights`` (positive weights only), in the given order."""
        return tuple((k, w) for k, w in parse_task_weights(self.task_weights).items() if w > 0)

    @property
    def output_tasks(self) -> tuple[str, ...]:
        """Tasks whose strength the frame uses (and that may have a controller)."""
        if self.tasks:
            return tuple(t for t in self.tasks if t != NO_TASK)
        if self.task_weights:
            return ()
        return () if self.task == NO_TASK else (self.task,)

    @property
    def active_label(self) -> str:
        """What fused/image currently shows (or the task list in multi-task mode)."""
        if self.tasks:
            return ",".join(self.tasks)
        if self.task_weights:
            return "+".join(f"{k}:{w:g}" for k, w in self.weights)
        return self.task

    def thermal_normalizer(self) -> ThermalNormalizer:
        """A fresh normaliser with these percentile limits and smoothing."""
        return ThermalNormalizer(self.thermal_low_percentile, self.thermal_high_percentile,
                                 self.thermal_smoothing)

    def values(self) -> dict[str, Any]:
        """Parameter values by name (arrays as lists)."""
        return {p.name: (list(getattr(self, p.name)) if p.kind.endswith("_array")
                         else getattr(self, p.name)) for p in PARAMETERS}

    # --------------------------------------------------------------- validation
    @classmethod
    def from_values(cls, values: Mapping[str, Any],
                    task_names: Sequence[str] | None = None) -> FusionSettings:
        """Validate a full set of parameter values; ``task_names`` (which include
        ``none``) are the loaded model's tasks (``None``: task names are not checked).
        Raises ValueError with the reason of the first problem."""
        for spec in PARAMETERS:
            if spec.name not in values:
                raise ValueError(f"parameter '{spec.name}' has no value")
            reason = check_value(spec, values[spec.name])
            if reason:
                raise ValueError(reason)
        tasks = tuple(values["tasks"])
        if task_names is not None:
            known = list(task_names)
            if values["task"] not in known:
                raise ValueError(f"unknown task '{values['task']}'; this model has {known}")
            for t in tasks:
                if t not in known:
                    raise ValueError(f"unknown task '{t}' in tasks; this model has {known}")
        for t in tasks:
            if not TASK_TOKEN.fullmatch(t):
                raise ValueError(f"task '{t}' cannot name a topic (fused/{t}/image)")
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"tasks lists a task twice: {list(tasks)}")
        weights = parse_task_weights(values["task_weights"])
        if task_names is not None:
            for name in weights:
                if name == NO_TASK or name not in task_names:
                    raise ValueError(
                        f"unknown task '{name}' in task_weights; blendable tasks: "
                        f"{[k for k in task_names if k != NO_TASK]}"
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
        if (values["warmup_width"] == 0) != (values["warmup_height"] == 0):
            raise ValueError(
                "warmup_width and warmup_height must both be 0 (no warm-up) or both > 0, got "
                f"{values['warmup_width']} x {values['warmup_height']}"
            )
        kwargs: dict[str, Any] = {p.name: (tuple(values[p.name]) if p.kind.endswith("_array")
                           else values[p.name]) for p in PARAMETERS}
        kwargs["homography"] = homography
        return cls(**kwargs)


def _spec(f: dataclasses.Field) -> ParamSpec:
    m = f.metadata
    return ParamSpec(f.name, _KINDS[str(f.type)], f.default, m["description"], m["low"],
                     m["high"], m["choices"], m["read_only"], m["constraints"], m["launch"])


#: Every setting, in declaration order.
PARAMETERS: tuple[ParamSpec, ...] = tuple(_spec(f) for f in dataclasses.fields(FusionSettings))
PARAMETER_SPECS: dict[str, ParamSpec] = {p.name: p for p in PARAMETERS}

#: The one place where the per-image commands (``cldyn fuse``, ``cldyn eval images``)
#: depart from the live defaults: their images are independent, so the stretch limits of
#: one image must not carry into the next.
PER_IMAGE: dict[str, Any] = {"thermal_smoothing": 0.0}


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


def settings_from_values(values: Mapping[str, Any],
                         task_names: Sequence[str] | None = None) -> FusionSettings:
    """:meth:`FusionSettings.from_values`."""
    return FusionSettings.from_values(values, task_names)


# -------------------------------------------------------------- command-line options
def add_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup, name: str,
               flag: str | None = None, default: Any = None, help_note: str = "",
               **argparse_kwargs: Any) -> None:
    """Add the option ``--<name with dashes>`` (or ``flag``) for the setting ``name``:
    its type, choices, default (the schema's unless ``default`` overrides it) and help,
    all from the schema; ``argparse_kwargs`` (``nargs``, ``metavar``) go to argparse."""
    spec = PARAMETER_SPECS[name]
    value = spec.default if default is None else default
    kwargs: dict[str, Any] = {"default": value, "dest": name}
    text = spec.description
    if spec.kind == "double":
        kwargs["type"] = float
    elif spec.kind == "int":
        kwargs["type"] = int
    elif spec.kind == "double_array":
        kwargs.update(type=float, nargs="*", default=list(value))
    elif spec.kind == "string_array":
        kwargs.update(nargs="*", default=list(value))
    elif spec.kind == "bool":
        raise ValueError(f"setting '{name}' is a switch: add it with store_true")
    if spec.choices:
        kwargs["choices"] = list(spec.choices)
    if spec.low is not None and spec.high is not None:
        text += f"; [{spec.low:g}, {spec.high:g}]"
    text += f" (default {value!r}{'; ' + help_note if help_note else ''})"
    kwargs["help"] = text.replace("%", "%%")
    kwargs.update(argparse_kwargs)
    parser.add_argument(flag or "--" + name.replace("_", "-"), **kwargs)


def values_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Schema defaults updated with the settings given as options in ``args``."""
    values = {p.name: p.default_value for p in PARAMETERS}
    for name in values:
        if hasattr(args, name):
            value = getattr(args, name)
            values[name] = list(value) if isinstance(value, tuple) else value
    return values


# ---------------------------------------------------------------- documentation
def _format_default(spec: ParamSpec) -> str:
    d = spec.default
    if spec.kind == "bool":
        return f"`{'true' if d else 'false'}`"
    if spec.kind.endswith("_array"):
        return "`[]`" if not d else f"`{list(d)}`"
    if spec.kind == "string":
        return f'`"{d}"`' if d == "" else f"`{d}`"
    return f"`{d!r}`"


def _format_range(spec: ParamSpec) -> str:
    parts = []
    if spec.choices:
        parts.append(", ".join(spec.choices))
    elif spec.low is not None and spec.high is not None:
        parts.append(f"[{spec.low:g}, {spec.high:g}]")
    if spec.constraints:
        parts.append(spec.constraints)
    if spec.read_only:
        parts.append("read-only")
    return "; ".join(parts)


_TYPE_NAMES = {"string": "string", "int": "int", "double": "double", "bool": "bool",
               "string_array": "string[]", "double_array": "double[]"}


def markdown_table() -> str:
    """The README's parameter table, generated from the schema."""
    fields = {f.name: f for f in dataclasses.fields(FusionSettings)}
    rows = ["| parameter | type | default | range / values | description |",
            "|---|---|---|---|---|"]
    for spec in PARAMETERS:
        description = fields[spec.name].metadata["table"] or spec.description
        rows.append(f"| `{spec.name}` | {_TYPE_NAMES[spec.kind]} | {_format_default(spec)} | "
                    f"{_format_range(spec)} | {description} |")
    return "\n".join(rows)


if __name__ == "__main__":  # python -m cldyn_ros.streams.settings: print the README table
    print(markdown_table())
