"""Node-level speed benchmark: the real ``fusion_node`` over real DDS (``cldyn bench node``).

The node runs in its own process (``python -m cldyn_ros.ros.node``, started and stopped with the
helpers of :mod:`cldyn_ros.ros.demo`); this process publishes synthetic thermal and colour frames
at camera rates (e.g. 60 Hz thermal, 30 Hz colour) with header stamps = now, for a fixed
number of colour frames, and receives ``fused/image``. Per fused frame, latency = receive
time - header stamp (the colour frame's stamp; both clocks are this machine's wall clock).

Reported: latency p50/p90/p99, frames sent / received / dropped (and the node's own drop
counters from ``~/metrics``), the node's per-frame times from ``~/metrics`` (waiting for a
partner, waiting for the worker, processing and the engine's stages), node CPU use, node
resident memory (``/proc/<pid>/status`` VmRSS) at start and end, and the node's GPU memory
(``nvidia-smi`` per process) on CUDA.
Timings are wall-clock on whatever else the machine is doing: never read them as limits.

Needs rclpy. Keeps :mod:`cldyn_ros.tools.bench` (model level) free of ROS imports.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from ..tools.bench import SCHEMA_VERSION, machine_info, percentiles, synthetic_frames, write_report
from .bench_receiver import NAMESPACE, FusedReceiver, NodeBenchError
from .demo import NodeProcess, ros_environment

#: Node drop counters (cumulative) taken from the last ``~/metrics`` message.
NODE_COUNTERS = ("pairing_color_unmatched", "pairing_out_of_order", "pairing_stale",
                 "pairing_overflow", "worker_dropped", "worker_processed", "input_errors",
                 "fusion_errors")
#: Per-frame times (ms) the node reports in ``~/metrics``: where a frame's latency goes.
NODE_TIMES = ("pairing_wait_ms", "queue_wait_ms", "processing_ms", "preprocess_ms", "fuse_ms",
              "postprocess_ms")


@dataclasses.dataclass
class NodeBenchSettings:
    model: str
    frames: int = 300  # measured colour frames
    height: int = 512
    width: int = 640
    rgb_rate: float = 30.0
    thermal_rate: float = 60.0
    warmup: int = 5  # colour frames sent (and waited for) before the measured run
    device: str = "auto"
    precision: str = "fp32"
    task: str = ""
    threads: int = 0
    internal_scale: float = 0.0  # 0: the model's own (full resolution unless it says)
    qos: str = "best_effort"  # input reliability, node and publishers: best_effort, reliable
    settle_s: float = 3.0  # wait for the last frames in flight
    startup_timeout: float = 120.0
    out: str = "bench_node"


# ------------------------------------------------------------------ process readings


def process_rss_mb(pid: int) -> float | None:
    """VmRSS of ``pid`` in MiB from ``/proc/<pid>/status`` (None when unreadable)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return None


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` from ``/proc/<pid>/stat``."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        fields = text[text.rindex(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def process_gpu_mb(pid: int) -> float | None:
    """GPU memory of ``pid`` in MiB from ``nvidia-smi`` (None without a GPU or the tool)."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory",
             "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    total = None
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(pid):
            try:
                total = (total or 0.0) + float(parts[1])
            except ValueError:
                pass
    return total


def _process_reading(pid: int) -> dict[str, Any]:
    return {"rss_mb": process_rss_mb(pid), "gpu_mb": process_gpu_mb(pid),
            "cpu_s": process_cpu_s(pid)}


# ------------------------------------------------------------------ ROS side


class _Client(FusedReceiver):
    """A :class:`FusedReceiver` that also publishes the two image streams: receive times
    per stamp and the node's counters from the last ``~/metrics``."""

    def __init__(self, height: int, width: int, qos: str = "best_effort") -> None:
        from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from sensor_msgs.msg import Image

        from ..streams.image_msgs import numpy_to_image

        super().__init__("cldyn_bench_client", metrics_depth=50)
        in_qos = (qos_profile_sensor_data if qos == "best_effort"
                  else QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
        self.pubs = {
            "thermal": self.node.create_publisher(Image, f"{NAMESPACE}/thermal/image", in_qos),
            "rgb": self.node.create_publisher(Image, f"{NAMESPACE}/rgb/image", in_qos),
        }
        thermal, color = synthetic_frames(height, width)
        self.msgs = {"thermal": numpy_to_image(thermal, "mono16", factory=Image),
                     "rgb": numpy_to_image(color, "rgb8", factory=Image)}
        self.msgs["thermal"].header.frame_id = "thermal"
        self.msgs["rgb"].header.frame_id = "rgb"
        self.received: dict[int, int] = {}  # stamp ns -> receive time ns
        self.duplicates = 0
        self.thermal_sent = 0
        self.last_metrics: dict[str, str] = {}
        self.frame_times: dict[int, dict[str, float]] = {}  # stamp ns -> NODE_TIMES
        self.start()

    def on_fused(self, stamp: int, received_ns: int) -> None:
        if stamp in self.received:
            self.duplicates += 1
        else:
            self.received[stamp] = received_ns

    def on_frame_metrics(self, stamp: int, values: dict[str, str]) -> None:
        self.last_metrics = values
        times = {}
        for k in NODE_TIMES:
            try:
                times[k] = float(values[k])
            except (KeyError, ValueError):
                continue
        self.frame_times[stamp] = times

    def connected(self) -> bool:
        return all(p.get_subscription_count() for p in self.pubs.values()) and \
            super().connected()

    def topics(self) -> str:
        return f"{NAMESPACE}/thermal|rgb/image and {self.fused_topic}"

    def publish(self, stream: str) -> int:
        """Publish the stream's frame stamped now; return the stamp (ns)."""
        stamp = time.time_ns()
        msg = self.msgs[stream]
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        self.pubs[stream].publish(msg)
        return stamp

    def play(self, rgb_frames: int, rgb_rate: float, thermal_rate: float) -> list[int]:
        """Both streams at their rates, on one schedule, until ``rgb_frames`` colour frames
        are out; returns the colour stamps. The thermal stream starts first (a colour frame
        then has a thermal partner within one thermal period)."""
        events = []
        t_rgb, t_th = 0.5 / thermal_rate, 0.0
        n_rgb = 0
        while n_rgb < rgb_frames:
            if t_th <= t_rgb:
                events.append((t_th, "thermal"))
                t_th += 1.0 / thermal_rate
            else:
                events.append((t_rgb, "rgb"))
                t_rgb += 1.0 / rgb_rate
                n_rgb += 1
        events.append((t_th, "thermal"))  # a partner after the last colour frame
        stamps = []
        self.thermal_sent = sum(1 for _, stream in events if stream == "thermal")
        start = time.monotonic()
        for t, stream in events:
            delay = start + t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            stamp = self.publish(stream)
            if stream == "rgb":
                stamps.append(stamp)
        return stamps

    def wait_received(self, stamps: list[int], timeout: float, settle: float) -> None:
        """Until all ``stamps`` came back, or nothing new for ``settle`` s, or ``timeout``."""
        deadline = time.monotonic() + timeout
        last_count, last_change = -1, time.monotonic()
        want = set(stamps)
        while time.monotonic() < deadline:
            with self.lock:
                count = len(want & self.received.keys())
            if count == len(want):
                return
            if count != last_count:
                last_count, last_change = count, time.monotonic()
            elif time.monotonic() - last_change > settle:
                return
            time.sleep(0.05)

    def counters(self) -> dict[str, float]:
        with self.lock:
            values = dict(self.last_metrics)
        out = {}
        for k in NODE_COUNTERS:
            try:
                out[k] = float(values[k])
            except (KeyError, ValueError):
                continue
        return out


# ------------------------------------------------------------------ the benchmark


def run_node_bench(settings: NodeBenchSettings, log=None) -> dict[str, Any]:
    """Start the node, warm it up, feed ``settings.frames`` colour frames (and thermal at its
    rate), collect and stop it; return (and write to ``settings.out``) the JSON report."""
    try:
        import rclpy  # noqa: F401
    except ImportError as e:
        raise NodeBenchError(f"the node-level bench needs ROS 2 (rclpy): {e}") from None
    if settings.frames < 1 or settings.warmup < 0:
        raise ValueError("frames must be >= 1 and warmup >= 0")
    if not Path(settings.model).is_file():
        raise FileNotFoundError(f"no model file {settings.model}")
    say = log or (lambda msg: None)
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    from .node_io import input_qos_overrides, ros_args

    env = ros_environment()
    args = ["-r", f"__ns:={NAMESPACE}", "-p", f"model_path:={Path(settings.model).resolve()}",
            "-p", f"device:={settings.device}", "-p", f"precision:={settings.precision}",
            "-p", f"threads:={settings.threads}",
            *ros_args(input_qos_overrides(settings.qos, 5, NAMESPACE)),
            "-p", f"internal_scale:={float(settings.internal_scale)}",
            "-p", f"warmup_width:={settings.width}", "-p", f"warmup_height:={settings.height}"]
    if settings.task:
        args += ["-p", f"task:={settings.task}"]
    t0 = time.monotonic()
    say(f"starting the node ({settings.model}, {settings.device}, {settings.precision})")
    node = NodeProcess(args, out / "node.log", env, NAMESPACE)  # before any rclpy.init: no fork
    client = None
    readings: dict[str, dict[str, Any]] = {}
    warm_stamps: list[int] = []
    try:
        node.wait_ready(settings.startup_timeout)
        ready_s = time.monotonic() - t0
        pid = node.process.pid
        readings["ready"] = _process_reading(pid)
        client = _Client(settings.height, settings.width, settings.qos)
        client.wait_connected(30.0)
        if settings.warmup:
            say(f"warm-up: {settings.warmup} colour frames")
            warm_stamps = client.play(settings.warmup, settings.rgb_rate, settings.thermal_rate)
            time.sleep(0.2)
            # the first frames are slow (and may be lost while the node warms up): keep
            # feeding both streams until a fused frame comes back
            deadline = time.monotonic() + settings.startup_timeout
            while not client.received and time.monotonic() < deadline:
                warm_stamps += client.play(1, settings.rgb_rate, settings.thermal_rate)
            if not client.received:
                raise NodeBenchError("no fused frame came back during the warm-up")
            client.wait_received(warm_stamps, timeout=settings.startup_timeout,
                                 settle=settings.settle_s)
        counters_start = client.counters()
        readings["start"] = _process_reading(pid)
        say(f"measuring: {settings.frames} colour frames at {settings.rgb_rate:g} Hz, "
            f"thermal at {settings.thermal_rate:g} Hz, {settings.width}x{settings.height}")
        wall0 = time.monotonic()
        stamps = client.play(settings.frames, settings.rgb_rate, settings.thermal_rate)
        send_s = time.monotonic() - wall0
        cpu_sent = process_cpu_s(pid)
        thermal_sent = client.thermal_sent
        client.wait_received(stamps, timeout=60.0 + settings.settle_s, settle=settings.settle_s)
        wall_s = time.monotonic() - wall0
        readings["end"] = _process_reading(pid)
        time.sleep(0.3)  # the last frame's metrics
        counters_end = client.counters()
        with client.lock:
            received = {s: client.received[s] for s in stamps if s in client.received}
            duplicates = client.duplicates
            stray = len(client.received.keys() - set(stamps) - set(warm_stamps))
            frame_times = [client.frame_times[s] for s in stamps if s in client.frame_times]
    except NodeBenchError as e:
        raise NodeBenchError(f"{e}\nnode log:\n{node.tail()}") from None
    finally:
        if client is not None:
            client.close()
        code = node.stop()
    node_drops = {k: counters_end.get(k, 0.0) - counters_start.get(k, 0.0)
                  for k in NODE_COUNTERS if k in counters_end}
    latencies = [(received[s] - s) / 1e6 for s in stamps if s in received]
    cpu0 = readings["start"]["cpu_s"]
    # fused frames per second over the stream: first colour stamp to last fused frame
    active_s = (max(received.values()) - stamps[0]) / 1e9 if received else 0.0
    report: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "kind": "node",
        "machine": machine_info(),
        "settings": dataclasses.asdict(settings),
        "node": {"exit_code": code, "ready_s": ready_s, "log": str(out / "node.log")},
        "frames": {
            "sent": len(stamps),
            "received": len(received),
            "dropped": len(stamps) - len(received),
            "duplicates": duplicates,
            "unexpected": stray,
            "thermal_sent": thermal_sent,
            # of the dropped: skipped by the node (its counters over the measured run), and
            # the rest: lost on the way (DDS), or still waiting in the node at the end
            "dropped_in_node": int(sum(v for k, v in node_drops.items()
                                       if k not in ("worker_processed",))),
        },
        "latency_ms": percentiles(latencies),
        "max_latency_ms": max(latencies) if latencies else float("nan"),
        # the node's own per-frame times of the measured frames (from ~/metrics): waiting for
        # a partner, waiting for the worker, and the worker's fuse + publish (its engine stages)
        "node_ms": {k: percentiles([t[k] for t in frame_times if k in t]) for k in NODE_TIMES},
        "fused_fps": len(received) / active_s if active_s > 0 else float("nan"),
        "send_s": send_s,
        "wall_s": wall_s,
        "node_counters": {"start": counters_start, "end": counters_end, "delta": node_drops},
        "memory": {
            k: {"rss_mb": readings[k]["rss_mb"], "gpu_mb": readings[k]["gpu_mb"]}
            for k in ("ready", "start", "end")
        },
        # node CPU (100 = one core) while the frames were being sent
        "cpu_percent": (100.0 * (cpu_sent - cpu0) / send_s
                        if cpu0 is not None and cpu_sent is not None and send_s > 0 else None),
    }
    f = report["frames"]
    f["dropped_elsewhere"] = max(0, f["dropped"] - f["dropped_in_node"])
    write_report(report, out / "bench_node.json")
    (out / "bench_node.md").write_text(format_node_table([report]) + "\n")
    return report


def _num(v: Any, fmt: str = "{:.0f}") -> str:
    return "-" if v is None else fmt.format(v)


def format_node_table(reports: list[dict[str, Any]]) -> str:
    """Markdown table of node-level reports, one row each."""
    lines = [
        "| case | frames sent | received | dropped | of which in the node | latency p50 ms "
        "| p90 | p99 | max | fused fps | node processing p50 ms | node CPU % | RSS start MB "
        "| RSS end MB | GPU start MB | GPU end MB |",
        "|" + "---|" * 16,
    ]
    for r in reports:
        s, f, lat, mem = r["settings"], r["frames"], r["latency_ms"], r["memory"]
        name = (f"{s['width']}x{s['height']} {s['device']} {s['precision']} "
                f"rgb {s['rgb_rate']:g} Hz / thermal {s['thermal_rate']:g} Hz"
                + (f" threads {s['threads']}" if s["threads"] else "")
                + (f" internal_scale {s['internal_scale']:g}" if s.get("internal_scale") else "")
                + (f" {s['qos']}" if s.get("qos", "best_effort") != "best_effort" else "")
                + (f" task {s['task']}" if s["task"] else ""))
        drops = f.get("dropped_in_node")
        processing = r.get("node_ms", {}).get("processing_ms", {}).get("p50")
        lines.append(
            f"| {name} | {f['sent']} | {f['received']} | {f['dropped']} | {_num(drops)} "
            f"| {lat['p50']:.1f} | {lat['p90']:.1f} | {lat['p99']:.1f} "
            f"| {r['max_latency_ms']:.1f} | {r['fused_fps']:.1f} | {_num(processing, '{:.1f}')} "
            f"| {_num(r['cpu_percent'])} | {_num(mem['start']['rss_mb'])} "
            f"| {_num(mem['end']['rss_mb'])} | {_num(mem['start']['gpu_mb'])} "
            f"| {_num(mem['end']['gpu_mb'])} |")
    return "\n".join(lines)
