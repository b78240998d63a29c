"""Node under sustained load (``cldyn bench node --load flood|soak``).

Both modes run the real ``fusion_node`` in its own process and publish from a third process
(``python -m cldyn_ros.ros.node_load publish ...``), so neither the publisher's Python work nor
this process's receiving competes with the node for its interpreter lock, as with real
cameras. This process only receives ``fused/image`` and the node's per-frame ``~/metrics``.

- ``flood``: both inputs at the same high rate (default 200 Hz) for ``seconds``: frames fused
  per second against the engine alone on the same threads, drops by cause, the longest gap between
  published frames after warm-up against the median processing time, latency p50/p99 per
  window, node RSS at start and end.
- ``soak``: camera rates (30 Hz colour, 60 Hz thermal) for ``seconds``: latency and RSS per
  window, and the node's counters checked for consistency at the end (every colour frame the
  node received is published or counted as dropped).

Both measure the engine alone (no ROS, this process, same model, size and threads) right
before and after the node run, so the node's figures have a reference taken on the same
machine load.

Latency = receive time here - header stamp (the publisher's wall clock, same machine).
Timings are wall-clock on whatever else the machine runs: never read them as limits.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..tools.bench import SCHEMA_VERSION, machine_info, percentiles, synthetic_frames, write_report
from .bench_receiver import NAMESPACE, FusedReceiver, NodeBenchError
from .demo import NodeProcess, ros_environment
from .node_bench import process_cpu_s, process_rss_mb
from .node_io import input_qos_overrides, ros_args

_NS = 1_000_000_000
#: Node counters (cumulative) read from the last ``~/metrics`` frame status.
COUNTERS = ("pairing_color_received", "pairing_thermal_received", "pairing_pairs",
            "pairing_color_unmatched", "pairing_thermal_unused", "pairing_out_of_order",
            "pairing_stale", "pairing_overflow", "worker_dropped", "worker_processed",
            "input_errors", "fusion_errors")


@dataclasses.dataclass
class LoadSettings:
    model: str
    mode: str = "flood"  # flood or soak
    seconds: float = 60.0
    height: int = 256
    width: int = 320
    rgb_rate: float = 200.0
    thermal_rate: float = 200.0
    thermal_encoding: str = "mono16"
    device: str = "cpu"
    precision: str = "fp32"
    threads: int = 1
    internal_scale: float = 0.0  # 0: the model's own (full resolution unless it says)
    qos: str = "best_effort"  # input reliability, node and publisher: best_effort, reliable
    window_s: float = 10.0
    warmup_s: float = 2.0  # flood start excluded from the gap and throughput figures
    engine_frames: int = 20  # engine-alone frames before and after the node run
    startup_timeout: float = 120.0
    out: str = "bench_node_load"


# ------------------------------------------------------------------ publisher process
def publish_main(argv: list[str] | None = None) -> int:
    """The publisher process: both streams at their rates with stamps = now."""
    p = argparse.ArgumentParser(prog="node_load publish")
    p.add_argument("--rgb-rate", type=float, required=True)
    p.add_argument("--thermal-rate", type=float, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--height", type=int, required=True)
    p.add_argument("--width", type=int, required=True)
    p.add_argument("--thermal-encoding", default="mono16", choices=("mono16", "mono8"))
    p.add_argument("--qos", default="best_effort", choices=("best_effort", "reliable"))
    p.add_argument("--wait", type=float, default=30.0, help="most seconds to wait for the node")
    args = p.parse_args(argv)

    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import Image

    from ..streams.image_msgs import numpy_to_image

    rclpy.init()
    node = rclpy.create_node("cldyn_load_publisher", namespace=NAMESPACE)
    qos = (qos_profile_sensor_data if args.qos == "best_effort"
           else QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
    pubs = {s: node.create_publisher(Image, f"{NAMESPACE}/{s}/image", qos)
            for s in ("thermal", "rgb")}
    thermal, colour = synthetic_frames(args.height, args.width)
    if args.thermal_encoding == "mono8":
        thermal = (thermal >> 8).astype(np.uint8)
    msgs = {"thermal": numpy_to_image(thermal, args.thermal_encoding, factory=Image),
            "rgb": numpy_to_image(colour, "rgb8", factory=Image)}
    msgs["thermal"].header.frame_id, msgs["rgb"].header.frame_id = "thermal", "rgb"
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline and not all(x.get_subscription_count() for x in
                                                   pubs.values()):
        time.sleep(0.05)
    connected = all(x.get_subscription_count() for x in pubs.values())
    time.sleep(0.5)  # discovery of the reverse direction settles
    # One schedule for both streams; a thermal frame first, so colour has a partner.
    period = {"thermal": 1.0 / args.thermal_rate, "rgb": 1.0 / args.rgb_rate}
    due = {"thermal": 0.0, "rgb": 0.5 * min(period.values())}
    sent = {"thermal": 0, "rgb": 0}
    start_wall = time.time_ns()
    start = time.monotonic()
    late = 0.0
    while True:
        stream = min(due, key=lambda k: due[k])
        if due[stream] >= args.seconds:
            break
        delay = start + due[stream] - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            late = max(late, -delay)
        msg = msgs[stream]
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(time.time_ns(), _NS)
        pubs[stream].publish(msg)
        sent[stream] += 1
        due[stream] += period[stream]
    elapsed = time.monotonic() - start
    print(json.dumps({"sent": sent, "seconds": elapsed, "start_wall_ns": start_wall,
                      "connected": connected, "max_late_s": late}), flush=True)
    node.destroy_node()
    rclpy.shutdown()
    return 0


# ------------------------------------------------------------------ receiving side
class _Receiver(FusedReceiver):
    """A :class:`FusedReceiver` keeping every fused image's receive time and stamp, the
    node's processing time per stamp and its latest counters."""

    def __init__(self) -> None:
        super().__init__("cldyn_load_receiver", metrics_depth=200)
        self.fused: list[tuple[int, int]] = []  # (receive wall ns, stamp ns)
        self.processing: dict[int, float] = {}  # stamp -> processing_ms
        self.counters: dict[str, float] = {}
        self.start()

    def on_fused(self, stamp: int, received_ns: int) -> None:
        self.fused.append((received_ns, stamp))

    def on_frame_metrics(self, stamp: int, values: dict[str, str]) -> None:
        try:
            self.processing[stamp] = float(values["processing_ms"])
        except (KeyError, ValueError):
            pass
        for k in COUNTERS:
            try:
                self.counters[k] = float(values[k])
            except (KeyError, ValueError):
                pass

    def snapshot(self) -> tuple[list[tuple[int, int]], dict[int, float], dict[str, float]]:
        with self.lock:
            return list(self.fused), dict(self.processing), dict(self.counters)


# ------------------------------------------------------------------ engine alone
def engine_alone_ms(settings: LoadSettings, frames: int) -> list[float]:
    """Milliseconds per frame of the engine alone (no ROS), same model, size and threads."""
    from ..inference.engine import FusionEngine

    engine = FusionEngine(settings.model, device=settings.device,
                          precision=settings.precision, threads=settings.threads or None,
                          internal_scale=settings.internal_scale or None)
    thermal, colour = synthetic_frames(settings.height, settings.width)
    if settings.thermal_encoding == "mono8":
        thermal = (thermal >> 8).astype(np.uint8)
    engine.warm_up(settings.height, settings.width, None)
    out = []
    for _ in range(frames):
        t = time.perf_counter()
        engine.fuse(thermal, colour)
        out.append((time.perf_counter() - t) * 1e3)
    return out


# ------------------------------------------------------------------ the run
def run_load_bench(settings: LoadSettings, log=None) -> dict[str, Any]:
    """Run one flood or soak; return (and write to ``settings.out``) the JSON report."""
    if settings.mode not in ("flood", "soak"):
        raise ValueError(f"mode must be flood or soak, got {settings.mode!r}")
    if not Path(settings.model).is_file():
        raise FileNotFoundError(f"no model file {settings.model}")
    say = log or (lambda msg: None)
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    engine_before: list[float] = []
    engine_after: list[float] = []
    if settings.engine_frames:
        say(f"engine alone: {settings.engine_frames} frames")
        engine_before = engine_alone_ms(settings, settings.engine_frames)
    env = ros_environment()
    args = ["-r", f"__ns:={NAMESPACE}", "-p", f"model_path:={Path(settings.model).resolve()}",
            "-p", f"device:={settings.device}", "-p", f"precision:={settings.precision}",
            "-p", f"threads:={settings.threads}", "-p", f"warmup_width:={settings.width}",
            "-p", f"warmup_height:={settings.height}", "-p", "metrics_every_n:=0",
            "-p", f"internal_scale:={float(settings.internal_scale)}",
            *ros_args(input_qos_overrides(settings.qos, 5, NAMESPACE))]
    say("starting the node")
    node = NodeProcess(args, out / "node.log", env, NAMESPACE)
    receiver = None
    publisher = None
    rss: list[tuple[float, float | None]] = []
    try:
        node.wait_ready(settings.startup_timeout)
        pid = node.process.pid
        receiver = _Receiver()
        receiver.wait_connected(30.0)
        # Warm-up: a few seconds at camera rates, so DDS matching and the first frames are
        # behind us; then the measured run.
        for seconds, rgb, thermal, label in (
            (3.0, 30.0, 60.0, "warm-up"),
            (settings.seconds, settings.rgb_rate, settings.thermal_rate, settings.mode),
        ):
            cmd = [sys.executable, "-m", "cldyn_ros.ros.node_load", "publish",
                   "--rgb-rate", str(rgb), "--thermal-rate", str(thermal),
                   "--seconds", str(seconds), "--height", str(settings.height),
                   "--width", str(settings.width),
                   "--thermal-encoding", settings.thermal_encoding, "--qos", settings.qos]
            if label != "warm-up":
                _, _, counters_start = receiver.snapshot()
                rss_start = process_rss_mb(pid)
                cpu_start = process_cpu_s(pid)
            say(f"{label}: colour {rgb:g} Hz, thermal {thermal:g} Hz for {seconds:g} s")
            publisher = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True)
            t0 = time.monotonic()
            while publisher.poll() is None:
                if label != "warm-up":
                    rss.append((time.monotonic() - t0, process_rss_mb(pid)))
                time.sleep(min(settings.window_s, 1.0) if label != "warm-up" else 0.2)
            stdout, stderr = publisher.communicate()
            if publisher.returncode != 0:
                raise NodeBenchError(f"the publisher failed:\n{stderr[-2000:]}")
            sent = json.loads(stdout.strip().splitlines()[-1])
            if not sent["connected"]:
                raise NodeBenchError("the publisher never saw the node's subscriptions")
        cpu_end = process_cpu_s(pid)
        time.sleep(3.0)  # the last frame in flight and its metrics
        rss_end = process_rss_mb(pid)
        fused, processing, counters_end = receiver.snapshot()
    except NodeBenchError as e:
        raise NodeBenchError(f"{e}\nnode log:\n{node.tail()}") from None
    finally:
        if publisher is not None and publisher.poll() is None:
            publisher.kill()
            publisher.wait()
        if receiver is not None:
            receiver.close()
        code = node.stop()
    if settings.engine_frames:
        say(f"engine alone again: {settings.engine_frames} frames")
        engine_after = engine_alone_ms(settings, settings.engine_frames)

    start = sent["start_wall_ns"]
    end = start + int(sent["seconds"] * _NS)
    run = [(t, s) for t, s in fused if start <= s <= end]
    settled = [(t, s) for t, s in run if s >= start + int(settings.warmup_s * _NS)]
    recv_times = [t for t, _ in settled]
    gaps = np.diff(recv_times) / 1e6 if len(recv_times) > 1 else np.array([])
    proc = [processing[s] for _, s in run if s in processing]
    settled_s = (recv_times[-1] - recv_times[0]) / _NS if len(recv_times) > 1 else 0.0
    node_fps = (len(recv_times) - 1) / settled_s if settled_s > 0 else float("nan")
    windows = []
    # windows of the nominal duration; the last one takes the publisher's overrun too
    n_windows = max(1, math.ceil(settings.seconds / settings.window_s - 1e-6))
    for w in range(n_windows):
        lo = start + int(w * settings.window_s * _NS)
        hi = end + 1 if w == n_windows - 1 else lo + int(settings.window_s * _NS)
        lat = [(t - s) / 1e6 for t, s in run if lo <= s < hi]
        top = math.inf if w == n_windows - 1 else (w + 1) * settings.window_s
        rss_w = [m for t, m in rss if w * settings.window_s <= t < top and m is not None]
        p = percentiles(lat)
        windows.append({"t0_s": w * settings.window_s, "fused": len(lat), "p50_ms": p["p50"],
                        "p99_ms": p["p99"], "rss_mb": max(rss_w) if rss_w else None})
    delta = {k: counters_end.get(k, 0.0) - counters_start.get(k, 0.0) for k in COUNTERS}
    engine = engine_before + engine_after
    engine_ms = float(np.median(engine)) if engine else float("nan")
    median_proc = float(np.median(proc)) if proc else float("nan")
    received = delta["pairing_color_received"]
    published = delta["worker_processed"] - delta["fusion_errors"]
    other = received - published - delta["worker_dropped"] - delta["pairing_color_unmatched"]
    report = {
        "schema": SCHEMA_VERSION,
        "kind": f"node-{settings.mode}",
        "machine": machine_info(),
        "settings": dataclasses.asdict(settings),
        "node": {"exit_code": code, "log": str(out / "node.log")},
        "sent": sent,
        "fused": len(run),
        "fused_fps": node_fps,
        "engine_alone_ms": {"before": engine_before, "after": engine_after,
                            "median": engine_ms},
        "engine_alone_fps": 1e3 / engine_ms if engine else float("nan"),
        "fps_ratio": node_fps * engine_ms / 1e3 if engine else float("nan"),
        "processing_ms": percentiles(proc),
        # the node's time per fused frame (worker: fuse + publish) against the engine alone
        "processing_ratio": median_proc / engine_ms if engine and proc else float("nan"),
        "max_gap_ms": float(gaps.max()) if gaps.size else float("nan"),
        "median_gap_ms": float(np.median(gaps)) if gaps.size else float("nan"),
        "gap_over_processing": (float(gaps.max()) / median_proc
                                if gaps.size and proc else float("nan")),
        "latency_ms": percentiles([(t - s) / 1e6 for t, s in run]),
        "windows": windows,
        "rss_mb": {"start": rss_start, "end": rss_end},
        "node_cpu_percent": (100.0 * (cpu_end - cpu_start) / sent["seconds"]
                             if cpu_start is not None and cpu_end is not None else None),
        "counters": {"start": counters_start, "end": counters_end, "delta": delta},
        # Colour frames the node received = published + dropped (by cause); "other" are
        # colour frames dropped as out of order, stale or overflow (those counters count
        # both streams) or still pending.
        "accounting": {
            "colour_sent": sent["sent"]["rgb"],
            "colour_received_by_node": received,
            "lost_before_the_node": sent["sent"]["rgb"] - received,
            "published": published,
            "received_here": len(run),
            "dropped_worker": delta["worker_dropped"],
            "dropped_unmatched": delta["pairing_color_unmatched"],
            "dropped_other": other,
            "other_bound": (delta["pairing_out_of_order"] + delta["pairing_stale"]
                            + delta["pairing_overflow"]),
            "pairs_equal_processed_plus_dropped": (
                delta["pairing_pairs"] == delta["worker_processed"] + delta["worker_dropped"]),
        },
    }
    write_report(report, out / f"bench_node_{settings.mode}.json")
    (out / f"bench_node_{settings.mode}.md").write_text(format_load_report(report) + "\n")
    return report


def _f(v: Any, fmt: str = "{:.0f}") -> str:
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else fmt.format(v)


def format_load_report(r: dict[str, Any]) -> str:
    """A short markdown summary of one flood or soak report."""
    s, a = r["settings"], r["accounting"]
    lines = [
        f"{s['mode']}: {s['width']}x{s['height']}, colour {s['rgb_rate']:g} Hz / thermal "
        f"{s['thermal_rate']:g} Hz ({s['thermal_encoding']}) for {s['seconds']:g} s, "
        f"{s['device']} {s['precision']} threads {s['threads']}"
        + (f" internal_scale {s['internal_scale']:g}" if s.get("internal_scale") else "")
        + (f" {s['qos']}" if s.get("qos", "best_effort") != "best_effort" else ""),
        "",
        f"- colour sent {a['colour_sent']}, received by the node {a['colour_received_by_node']:.0f}"
        f", published {a['published']:.0f} (received here {a['received_here']}); dropped: "
        f"worker {a['dropped_worker']:.0f}, unmatched {a['dropped_unmatched']:.0f}, other "
        f"{a['dropped_other']:.0f} (out-of-order + stale + overflow, both streams: "
        f"{a['other_bound']:.0f}); before the node (DDS) {a['lost_before_the_node']:.0f}; "
        f"pairs == processed + dropped: {a['pairs_equal_processed_plus_dropped']}",
        f"- fused {_f(r['fused_fps'], '{:.2f}')} frames/s after the first {s['warmup_s']:g} s;"
        f" engine alone {_f(r['engine_alone_fps'], '{:.2f}')} frames/s "
        f"(median {_f(r['engine_alone_ms']['median'])} ms, before and after); ratio "
        f"{_f(r['fps_ratio'], '{:.2f}')}",
        f"- processing in the node p50 {_f(r['processing_ms']['p50'])} ms = "
        f"{_f(r['processing_ratio'], '{:.2f}')} x the engine alone; gap between published frames:"
        f" median {_f(r['median_gap_ms'])} ms, max {_f(r['max_gap_ms'])} ms = "
        f"{_f(r['gap_over_processing'], '{:.1f}')} x median processing",
        f"- node RSS {_f(r['rss_mb']['start'])} -> {_f(r['rss_mb']['end'])} MB; node CPU "
        f"{_f(r['node_cpu_percent'])} %",
        "",
        "| window from s | fused | latency p50 ms | p99 ms | RSS MB |",
        "|---|---|---|---|---|",
    ]
    for w in r["windows"]:
        lines.append(f"| {w['t0_s']:g} | {w['fused']} | {_f(w['p50_ms'])} | {_f(w['p99_ms'])} "
                     f"| {_f(w['rss_mb'])} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "publish":
        sys.exit(publish_main(sys.argv[2:]))
    sys.exit("usage: python -m cldyn_ros.ros.node_load publish --rgb-rate R --thermal-rate R "
             "--seconds S --height H --width W")
