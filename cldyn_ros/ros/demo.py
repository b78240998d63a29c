"""The live demo (``cldyn demo``): the real fusion node over real DDS, a switch half-way.

Steps, each done by the module that owns it:

1. a synthetic street scene is written to a bag as two free-running cameras would record
   it (colour 30 Hz, 16-bit thermal 60 Hz, stamp jitter):
   :func:`cldyn_ros.offline.bags.write_stream`;
2. ``fusion_node`` starts as its own process (``python -m cldyn_ros.ros.node``) in the namespace
   :data:`NAMESPACE`, with ``threads:=1``; it loads while the bag is written;
3. the bag is played live through the node and its outputs and ``~/metrics`` are recorded:
   :func:`cldyn_ros.ros.replay.replay_bag` (which also writes its full report into ``replay/``);
4. a director node watches the colour stream and, when the first colour frame of the second
   half is published, calls a service of the node: ``~/select_task/<task>`` when the model
   has tasks; a model without tasks (VFN only) has no task to switch to, so the thermal
   contrast stretch is switched instead through ``~/set_parameters`` (stated in the report);
5. the demo report: ``contact_sheet.png`` (frames before and after the switch: inputs, the
   node's output and, for comparison, the same frame fused offline with the other setting),
   ``metrics.json`` (settings, switch, per-phase quality and latency, drops, runtime) and
   ``latency.md`` (latency summary, readable).

The node drops frames when the machine cannot keep up (its latest-pair worker skips pairs);
the drops are counted and reported, not hidden.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..inference.checkpoint import NO_TASK
from ..offline.bag_eval import summary_stats

__all__ = ["DemoError", "LiveDemoSettings", "run_live_demo"]

NAMESPACE = "/cldyn_demo"
NODE_NAME = "cldyn_fusion"
_NS = 1_000_000_000
#: Metrics of the report (the fast ones: the demo must finish in well under two minutes).
DEMO_METRICS = ("EN", "SD", "SF", "AG", "MI", "Qabf")
#: Thermal stretch used as the switch when the model has no tasks (percentiles low, high).
STRETCH_BEFORE = (1.0, 99.0)
STRETCH_AFTER = (60.0, 99.5)
#: Latency keys of the node's ~/metrics summarised in the report. (Not latency_stamp_ms:
#: the bag's stamps are from its recording day; end_to_end_ms, replay publish to fused frame
#: received, is the stamp latency of a live camera, as frames are published at stamp time.)
LATENCY_KEYS = ("latency_arrival_ms", "processing_ms", "fuse_ms", "pairing_wait_ms",
                "queue_wait_ms")


class DemoError(RuntimeError):
    """The demo cannot run (no ROS, the node does not start); the message says why."""


@dataclass
class LiveDemoSettings:
    out: Path = Path("demo_output")
    model: Path | None = None  # None: the shipped default model
    seconds: float = 6.0
    height: int = 256
    width: int = 320
    rgb_rate: float = 30.0
    thermal_rate: float = 60.0
    jitter_ms: float = 2.0
    condition: str = "night"
    seed: int = 0
    switch_to: str | None = None  # a task of the model; None: its first task
    threads: int = 1
    device: str = "auto"
    startup_timeout: float = 90.0
    sheet_rows: int = 6
    progress: bool = True

    def check(self) -> None:
        if not (self.seconds > 0 and np.isfinite(self.seconds)):
            raise ValueError(f"--seconds must be positive, got {self.seconds}")
        if self.height < 32 or self.width < 32:
            raise ValueError(f"frames must be at least 32x32, got {self.height}x{self.width}")
        if self.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {self.threads}")


@dataclass
class Switch:
    """What the demo switches half-way and how."""

    kind: str  # "task" or "thermal_stretch"
    service: str
    before: str
    after: str
    note: str = ""
    parameters_before: dict[str, Any] = field(default_factory=dict)
    parameters_after: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- set-up
def _model_and_switch(settings: LiveDemoSettings, node: str) -> tuple[Path, list[str], Switch]:
    from ..inference.checkpoint import load_checkpoint
    from ..paths import default_model_path

    path = Path(settings.model) if settings.model else default_model_path()
    tasks = load_checkpoint(path).task_names  # CheckpointError: the CLI prints it
    if settings.switch_to is not None and settings.switch_to not in tasks:
        raise ValueError(f"--switch-to '{settings.switch_to}' is not a task of {path.name}; "
                         f"its tasks: {tasks or 'none (VFN only)'}")
    if tasks:
        task = settings.switch_to or tasks[0]
        return path.resolve(), tasks, Switch(
            "task", f"{node}/select_task/{task}", NO_TASK, task,
            note=f"task switched from '{NO_TASK}' to '{task}' by a call of "
                 f"{node}/select_task/{task} (std_srvs/Trigger)",
            parameters_before={"task": NO_TASK}, parameters_after={"task": task})
    lo0, hi0 = STRETCH_BEFORE
    lo1, hi1 = STRETCH_AFTER
    return path.resolve(), tasks, Switch(
        "thermal_stretch", f"{node}/set_parameters",
        f"thermal percentiles {lo0:g}-{hi0:g}", f"thermal percentiles {lo1:g}-{hi1:g}",
        note=f"the model has no tasks (VFN only: task 'none'), so no task can be selected; "
             f"instead the thermal contrast stretch was switched from the {lo0:g}-{hi0:g} to "
             f"the {lo1:g}-{hi1:g} percentile (warm targets stand out, the cold background "
             f"goes dark) by a call of {node}/set_parameters",
        parameters_before={"thermal_low_percentile": lo0, "thermal_high_percentile": hi0},
        parameters_after={"thermal_low_percentile": lo1, "thermal_high_percentile": hi1})


def ros_environment() -> dict[str, str]:
    """This process's environment for ROS: loopback discovery and a domain of its own
    (unless the user chose them), also passed to the node's process."""
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 101))
    return dict(os.environ)


class NodeProcess:
    """``python -m cldyn_ros.ros.node`` with its log in a file; ready when its ready service
    (:func:`~cldyn_ros.ros.node.ready_service` in ``namespace``) is in the ROS graph."""

    def __init__(self, args: Sequence[str], log: Path, env: Mapping[str, str],
                 namespace: str = "") -> None:
        self.log_path = log
        self.lines: list[str] = []
        self.namespace = namespace
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cldyn_ros.ros.node", "--ros-args", *args],
            env=dict(env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )
        self._reader = threading.Thread(target=self._read, name="cldyn-demo-node-log",
                                        daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None  # stdout=PIPE
        with open(self.log_path, "w") as log:
            for line in self.process.stdout:
                self.lines.append(line)
                log.write(line)
                log.flush()

    def wait_ready(self, timeout: float) -> None:
        from .node import ready_service, wait_for_service

        if wait_for_service(ready_service(self.namespace), timeout,
                            alive=lambda: self.process.poll() is None):
            return
        if self.process.poll() is not None:
            self._reader.join(2)
            raise DemoError(f"fusion_node exited with code {self.process.returncode} "
                            f"before it was ready:\n{self.tail()}")
        raise DemoError(f"fusion_node was not ready within {timeout:g} s:\n{self.tail()}")

    def tail(self, n: int = 15) -> str:
        return "".join(self.lines[-n:]).rstrip()

    def stop(self, timeout: float = 30.0) -> int:
        """Ctrl-C, as a user would; kill only if it does not stop."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(5)
        return int(self.process.returncode)


# ---------------------------------------------------------------------------- director
class _Director:
    """Its own rclpy context and node: calls the switch service when the first colour frame
    at or after ``switch_stamp`` is published, and records the node's ``~/metrics``."""

    def __init__(self, node_name: str, rgb_topic: str, switch: Switch, switch_stamp: int) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.context import Context
        from rclpy.executors import MultiThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from rclpy.signals import SignalHandlerOptions
        from sensor_msgs.msg import Image

        self.switch = switch
        self.switch_stamp = switch_stamp
        self.lock = threading.Lock()
        self.metrics: dict[int, dict[str, Any]] = {}  # colour stamp -> values + recv time
        self.last_rgb_stamp: int | None = None
        self.first_stamp_after_response: int | None = None
        self.trigger: dict[str, Any] = {}
        self.result: dict[str, Any] = {}
        self.done = threading.Event()
        self._context = Context()
        rclpy.init(context=self._context, signal_handler_options=SignalHandlerOptions.NO)
        self._executor = MultiThreadedExecutor(num_threads=2, context=self._context)
        self.node = rclpy.create_node("cldyn_demo_director", context=self._context)
        self._executor.add_node(self.node)
        if switch.kind == "task":
            from std_srvs.srv import Trigger

            self._client: Any = self.node.create_client(Trigger, switch.service)
            self._request = Trigger.Request()
        else:
            from rcl_interfaces.srv import SetParameters
            from rclpy.parameter import Parameter

            self._client = self.node.create_client(SetParameters, switch.service)
            self._request = SetParameters.Request(parameters=[
                Parameter(k, value=v).to_parameter_msg()
                for k, v in switch.parameters_after.items()])
        # Only the stamp of the colour frames is needed: a raw subscription, no decoding.
        self.node.create_subscription(
            Image, rgb_topic, self._on_rgb,
            QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE), raw=True)
        self.node.create_subscription(DiagnosticArray, f"{node_name}/metrics",
                                      self._on_metrics, 100)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, name="cldyn-demo-director",
                                        daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set() and self._context.ok():
            self._executor.spin_once(timeout_sec=0.05)

    def wait_for_service(self, timeout: float) -> bool:
        return self._client.wait_for_service(timeout_sec=timeout)

    def _on_rgb(self, raw: bytes) -> None:
        # CDR: 4-byte encapsulation header, then header.stamp (int32 sec, uint32 nanosec).
        sec, nanosec = struct.unpack_from("<iI", raw, 4)
        stamp = sec * _NS + nanosec
        now = time.monotonic()
        with self.lock:
            self.last_rgb_stamp = stamp
            if self.result and self.first_stamp_after_response is None:
                self.first_stamp_after_response = stamp
            if self.trigger or stamp < self.switch_stamp:
                return
            self.trigger = {"stamp_ns": stamp, "time": now}
        future = self._client.call_async(self._request)
        future.add_done_callback(self._on_response)

    def _on_response(self, future: Any) -> None:
        now = time.monotonic()
        response = future.result()
        if self.switch.kind == "task":
            ok, message = bool(response.success), str(response.message)
        else:
            ok = all(r.successful for r in response.results)
            message = "; ".join(r.reason for r in response.results if r.reason) or (
                "parameters set" if ok else "rejected")
        with self.lock:
            self.result = {"success": ok, "message": message,
                           "response_ms": (now - self.trigger["time"]) * 1000.0,
                           "time": now}
        self.done.set()

    def _on_metrics(self, msg: Any) -> None:
        stamp = int(msg.header.stamp.sec) * _NS + int(msg.header.stamp.nanosec)
        frame = next((s for s in msg.status if s.name.endswith(": frame")), None)
        if frame is None:
            return
        values: dict[str, Any] = {kv.key: kv.value for kv in frame.values}
        values["_recv"] = time.monotonic()
        with self.lock:
            self.metrics[stamp] = values

    def close(self) -> None:
        import rclpy

        self._stop.set()
        self._thread.join(5)
        self._executor.shutdown(timeout_sec=5)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self._context)


# ------------------------------------------------------------------------------ report
def _phase_of(stamp: int, values: Mapping[str, Any] | None, switch: Switch,
              trigger_stamp: int | None, after_stamp: int | None) -> str:
    """'before', 'after' or 'switching' (fused while the call was on its way).

    The node's ~/metrics for the frame say which setting it was fused with; only without
    them does the stamp decide (the worker may fuse a frame stamped before the call after
    the new setting is in force).
    """
    if switch.kind == "task" and values and "active_task" in values:
        return "after" if values["active_task"] == switch.after else "before"
    if switch.kind == "thermal_stretch" and values and "thermal_low_percentile" in values:
        after = switch.parameters_after.get("thermal_low_percentile")
        low = _num(values["thermal_low_percentile"])
        if after is not None and low is not None:
            return "after" if abs(low - float(after)) < 1e-6 else "before"
    if trigger_stamp is None or stamp < trigger_stamp:
        return "before"
    if after_stamp is not None and stamp >= after_stamp:
        return "after"
    return "switching"


def _num(text: Any) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


def _round(value: Any, digits: int = 3) -> Any:
    if isinstance(value, float):
        return round(value, digits) if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _round(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [_round(v, digits) for v in value]
    return value


def _sample(stamps: Sequence[int], n: int) -> list[int]:
    if not stamps or n <= 0:
        return []
    idx = np.unique(np.linspace(0, len(stamps) - 1, min(n, len(stamps))).round().astype(int))
    return [stamps[i] for i in idx]


def _contact_sheet(out: Path, bag: Path, replay_bag: Path, topics: Mapping[str, str],
                   rows: Sequence[tuple[int, str, int | None, float]], switch: Switch,
                   engine: Any) -> list[dict[str, Any]]:
    """Sheet of the sampled frames: thermal, colour, the node's output, the same frame fused
    offline with the other setting, and the difference. Returns per-row numbers."""
    from ..imaging.contact_sheet import save_contact_sheet
    from ..imaging.thermal import ThermalNormalizer, thermal_to_unit
    from ..offline.bags import read_images

    wanted_color = {s for s, *_ in rows}
    wanted_thermal = {t for _, _, t, _ in rows if t is not None}
    colors: dict[int, np.ndarray] = {}
    thermals: dict[int, np.ndarray] = {}
    for rec in read_images(bag, [topics["thermal"], topics["rgb"]]):
        if rec.topic == topics["rgb"] and rec.stamp_ns in wanted_color:
            colors[rec.stamp_ns] = np.array(rec.image if rec.encoding == "rgb8"
                                            else rec.image[..., ::-1])  # writable copies
        elif rec.topic == topics["thermal"] and rec.stamp_ns in wanted_thermal:
            thermals[rec.stamp_ns] = np.array(rec.image)
    fused: dict[int, np.ndarray] = {}
    for rec in read_images(replay_bag, [topics["fused"]]):
        if rec.stamp_ns in wanted_color:
            fused[rec.stamp_ns] = np.array(rec.image if rec.encoding == "rgb8"
                                           else rec.image[..., ::-1])

    def offline(thermal: np.ndarray, color: np.ndarray) -> dict[str, np.ndarray]:
        """The frame fused offline with the setting before and after the switch."""
        if switch.kind == "task":
            a, b = switch.parameters_before["task"], switch.parameters_after["task"]
            images = engine.fuse(thermal, color, [a, b]).images  # one batched pass
            return {"before": images[a], "after": images[b]}
        images = {}
        for which in ("before", "after"):
            params = switch.parameters_before if which == "before" else switch.parameters_after
            engine.normalizer = ThermalNormalizer(params["thermal_low_percentile"],
                                                  params["thermal_high_percentile"], 0.0)
            images[which] = engine.fuse(thermal, color, [NO_TASK]).images[NO_TASK]
        return images

    sheet_rows, titles, numbers = [], [], []
    for stamp, phase, thermal_stamp, t_s in rows:
        if stamp not in colors or stamp not in fused or thermal_stamp not in thermals:
            continue
        thermal, color, live = thermals[thermal_stamp], colors[stamp], fused[stamp]
        other = "after" if phase == "before" else "before"
        params = switch.parameters_before if phase == "before" else switch.parameters_after
        stretch = ThermalNormalizer(params.get("thermal_low_percentile", STRETCH_BEFORE[0]),
                                    params.get("thermal_high_percentile", STRETCH_BEFORE[1]))
        ref = offline(thermal, color)
        same_img, other_img = ref[phase], ref[other]
        diff = np.abs(live.astype(np.float32) - other_img).max(axis=-1)
        numbers.append({
            "stamp_ns": stamp, "t_s": round(t_s, 3), "phase": phase,
            "mean_abs_diff_live_vs_offline_same_setting": round(
                float(np.abs(live.astype(np.float32) - same_img).mean()), 3),
            "mean_abs_diff_live_vs_offline_other_setting": round(
                float(np.abs(live.astype(np.float32) - other_img).mean()), 3),
        })
        label = switch.before if phase == "before" else switch.after
        sheet_rows.append([thermal_to_unit(thermal, stretch, "auto"), color, live, other_img,
                           diff / max(float(diff.max()), 1.0)])
        titles.append(f"t={t_s:.2f}s {phase}: {label}")
    if sheet_rows:
        what = "task" if switch.kind == "task" else "stretch"
        save_contact_sheet(out, sheet_rows,
                           ["thermal (node's stretch)", "colour", "node output (live)",
                            f"offline, other {what}", "|live - other| (stretched)"],
                           titles, tile_height=min(200, sheet_rows[0][1].shape[0]))
    return numbers


def _latency_markdown(report: Mapping[str, Any]) -> str:
    sw = report["switch"]
    live = report["live"]
    called = "n/a" if sw.get("called_at_s") is None else f"{sw['called_at_s']:.2f}"
    answered = "n/a" if sw.get("response_ms") is None else f"{sw['response_ms']:.0f}"
    lines = ["# cldyn demo: live run through fusion_node", "",
             f"- model: `{report['model']['path']}` (tasks: "
             f"{', '.join(report['model']['tasks']) or 'none (VFN only)'})",
             f"- stream: {report['stream']['seconds']:g} s of {report['stream']['height']}x"
             f"{report['stream']['width']}, colour {report['stream']['rgb_rate_hz']:g} Hz, "
             f"16-bit thermal {report['stream']['thermal_rate_hz']:g} Hz, stamp jitter "
             f"{report['stream']['jitter_ms']:g} ms",
             f"- switch: {sw['note']}; called at t={called} s, answer after {answered} ms: "
             f"{'OK' if sw.get('success') else 'FAILED'} ({sw.get('message', '')})",
             f"- frames: {live['published_rgb']} colour / {live['published_thermal']} thermal "
             f"published, {live['pairs_offline']} pairs expected, {live['pairs_received']} "
             f"fused frames came back, {live['pairs_dropped']} dropped "
             f"(node: worker_dropped {live['node_counters'].get('worker_dropped', '?')})",
             f"- runtime: {report['runtime_s']['total']:.1f} s", ""]
    lines += ["## Latency (ms)", "", "| phase | measure | n | mean | p50 | p95 | max |",
              "|---|---|---|---|---|---|---|"]
    for phase, data in report["phases"].items():
        for key, st in data["latency_ms"].items():
            if st.get("n"):
                lines.append(f"| {phase} | {key} | {st['n']} | {st['mean']:.1f} | "
                             f"{st['p50']:.1f} | {st['p95']:.1f} | {st['max']:.1f} |")
    lines += ["", "end_to_end: the replay publishes each frame at its stamp time (plus the "
              "bag's 3 ms transport delay) until the fused frame is received back (DDS both "
              "ways): the stamp-to-output latency a live camera would see. latency_arrival: "
              "arrival of the colour frame in the node to publish of the fused frame; "
              "processing: the fusion worker's time for the frame (fuse: the network).", ""]
    lines += ["## Quality (mean over frames)", "",
              "| phase | frames | " + " | ".join(DEMO_METRICS) + " |",
              "|---|---|" + "---|" * len(DEMO_METRICS)]
    for phase, data in report["phases"].items():
        q = data["quality"]
        lines.append(f"| {phase} | {data['frames']} | "
                     + " | ".join(f"{q[m]['mean']:.4g}" if q.get(m, {}).get("n") else "n/a"
                                  for m in DEMO_METRICS) + " |")
    if report["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in report["warnings"]]
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------- run
def run_live_demo(settings: LiveDemoSettings) -> dict[str, Any]:
    """Run the live demo; write and return its report (see the module docstring).

    Raises:
        DemoError: ROS 2 is missing, or the node does not start or answer.
        CheckpointError, FileNotFoundError, ValueError: a bad model or setting.
    """
    settings.check()
    t0 = time.monotonic()
    runtime: dict[str, float] = {}
    try:
        import rclpy  # noqa: F401
    except ImportError as e:
        raise DemoError(f"the live demo needs ROS 2 (rclpy): {e}; 'cldyn demo --offline' "
                        "runs without it") from None
    from ..inference.engine import FusionEngine
    from ..offline.bags import StreamSpec, synthetic_stream, write_stream
    from .replay import ReplayError, ReplaySettings, replay_bag

    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    node_name = f"{NAMESPACE}/{NODE_NAME}"
    topics = {"thermal": f"{NAMESPACE}/thermal/image", "rgb": f"{NAMESPACE}/rgb/image",
              "fused": f"{NAMESPACE}/fused/image"}
    model_path, tasks, switch = _model_and_switch(settings, node_name)
    env = ros_environment()

    # 1. The node first (before any rclpy.init here: no fork after it); it loads meanwhile.
    node_args = ["-r", f"__ns:={NAMESPACE}", "-p", f"model_path:={model_path}",
                 "-p", f"threads:={settings.threads}", "-p", f"device:={settings.device}",
                 "-p", f"warmup_width:={settings.width}", "-p", f"warmup_height:={settings.height}"]
    node = NodeProcess(node_args, out / "node.log", env, NAMESPACE)
    director = None
    try:
        # 2. The scene, as two cameras would record it.
        spec = StreamSpec(rgb_rate=settings.rgb_rate, thermal_rate=settings.thermal_rate,
                          jitter_ms=settings.jitter_ms, thermal_bits=16, seed=settings.seed)
        bag = out / "input_bag"
        frames = synthetic_stream(settings.seconds, spec, settings.height, settings.width,
                                  settings.condition, settings.seed)
        counts = write_stream(bag, frames, topics["thermal"], topics["rgb"], overwrite=True,
                              progress=settings.progress, total=len(spec.frames(settings.seconds)))
        runtime["write_bag"] = time.monotonic() - t0
        # An offline engine for the comparison column (one thread; the node has its own).
        engine = FusionEngine(model_path, device="cpu", threads=1)
        node.wait_ready(max(1.0, settings.startup_timeout - (time.monotonic() - t0)))
        runtime["node_ready"] = time.monotonic() - t0

        # 3. The director, then the live replay.
        rgb_stamps = sorted(f.stamp_ns for f in spec.frames(settings.seconds)
                            if f.stream == "rgb")
        switch_stamp = rgb_stamps[len(rgb_stamps) // 2]
        director = _Director(node_name, topics["rgb"], switch, switch_stamp)
        if not director.wait_for_service(30.0):
            raise DemoError(f"the node's service {switch.service} did not appear")
        replay_settings = ReplaySettings(
            thermal_topic=topics["thermal"], rgb_topic=topics["rgb"], node=node_name,
            outputs={"fused": topics["fused"]}, metrics=DEMO_METRICS,
            settle_s=2.5,  # longer than one slow frame: the last frame in flight comes back
            progress=settings.progress)
        replay_start = time.monotonic()
        try:
            replay = replay_bag(bag, replay_settings, out / "replay")
        except ReplayError as e:
            raise DemoError(f"{e}\nnode log:\n{node.tail()}") from None
        director.done.wait(5.0)
        runtime["replay"] = time.monotonic() - replay_start
    finally:
        if director is not None:
            director.close()
        code = node.stop()
    node_log = "".join(node.lines)

    # 4. The report.
    report_start = time.monotonic()
    first_rgb = rgb_stamps[0]
    trigger_stamp = director.trigger.get("stamp_ns")
    after_stamp = director.first_stamp_after_response
    per_pair = replay["per_pair"]
    phases: dict[str, list[dict[str, Any]]] = {"before": [], "switching": [], "after": []}
    for record in per_pair:
        values = director.metrics.get(record["stamp_ns"])
        phase = _phase_of(record["stamp_ns"], values, switch, trigger_stamp, after_stamp)
        record = dict(record, phase=phase, node=values or {})
        phases[phase].append(record)
    phase_report = {}
    for phase, records in phases.items():
        if not records and phase == "switching":
            continue
        latency = {k: summary_stats([_num(r["node"].get(k)) for r in records])
                   for k in LATENCY_KEYS}
        latency["end_to_end_ms"] = summary_stats([r["timings_ms"].get("end_to_end")
                                                  for r in records])
        quality = {m: summary_stats([r["metrics"].get("fused", {}).get(m) for r in records])
                   for m in DEMO_METRICS}
        phase_report[phase] = {
            "setting": switch.before if phase == "before" else
            switch.after if phase == "after" else "during the call",
            "frames": len(records),
            "first_t_s": records[0]["t_s"] if records else None,
            "latency_ms": latency, "quality": quality,
        }
    rows = []
    for phase in ("before", "after"):
        recs = phases[phase]
        chosen = set(_sample([r["stamp_ns"] for r in recs],
                             settings.sheet_rows // 2 + (settings.sheet_rows % 2) * (
                                 phase == "after")))
        rows += [(r["stamp_ns"], phase, r.get("thermal_stamp_ns"), r["t_s"]) for r in recs
                 if r["stamp_ns"] in chosen]
    warnings = list(replay["warnings"])
    if not switch.kind == "task":
        warnings.insert(0, switch.note)
    if not director.result:
        warnings.append("the switch service was not called or did not answer")
    elif not director.result["success"]:
        warnings.append(f"the switch was refused: {director.result['message']}")
    if not phases["after"]:
        warnings.append("no fused frame came back after the switch")
    if code != 0 or "Traceback" in node_log:
        warnings.append(f"fusion_node exited with code {code}"
                        + (" and a traceback (see node.log)" if "Traceback" in node_log else ""))
    sheet = out / "contact_sheet.png"
    sheet.unlink(missing_ok=True)
    comparison = _contact_sheet(sheet, bag, Path(replay["output_bag"]["path"]), topics, rows,
                                switch, engine) if rows else []
    if not comparison:
        warnings.append("no frame for the contact sheet (nothing came back fused)")
    live = replay["live"]
    runtime["report"] = time.monotonic() - report_start
    runtime["total"] = time.monotonic() - t0
    report = {
        "tool": "cldyn demo (live)",
        "version": __import__("cldyn_ros").__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": {"path": str(model_path), "tasks": tasks},
        "node": {"name": node_name, "process": f"{sys.executable} -m cldyn_ros.ros.node",
                 "arguments": node_args, "exit_code": code, "log": "node.log",
                 "ros_domain_id": env.get("ROS_DOMAIN_ID"),
                 "discovery_range": env.get("ROS_AUTOMATIC_DISCOVERY_RANGE"),
                 "cpu_count": os.cpu_count(),
                 "load_average": [round(v, 2) for v in os.getloadavg()]},
        "stream": {"seconds": settings.seconds, "height": settings.height,
                   "width": settings.width, "rgb_rate_hz": settings.rgb_rate,
                   "thermal_rate_hz": settings.thermal_rate, "thermal_encoding": "mono16",
                   "jitter_ms": settings.jitter_ms, "condition": settings.condition,
                   "seed": settings.seed, "bag": str(bag), "messages": counts},
        "switch": {**asdict(switch), "switch_stamp_ns": switch_stamp,
                   "triggered_by_stamp_ns": trigger_stamp,
                   "called_at_s": None if trigger_stamp is None else
                   (trigger_stamp - first_rgb) / _NS,
                   **{k: v for k, v in director.result.items() if k != "time"}},
        "live": {k: v for k, v in live.items() if k != "dropped_stamps"},
        "phases": phase_report,
        "comparison": comparison,
        "runtime_s": {k: round(v, 2) for k, v in runtime.items()},
        "warnings": warnings,
        "files": ["metrics.json", "latency.md", "contact_sheet.png", "node.log", "input_bag/",
                  "replay/ (report of cldyn replay: report.md, plots, replay_bag)"],
    }
    report = _round(report)
    (out / "metrics.json").write_text(json.dumps(report, indent=2, allow_nan=False))
    (out / "latency.md").write_text(_latency_markdown(report))
    return report
