"""Live replay of a bag through a running ``fusion_node`` over real DDS.

The bag's two image topics (``sensor_msgs/Image`` or, for ``.../compressed`` topics,
``sensor_msgs/CompressedImage``, published as they are on the same topic, as
image_transport's compressed publisher would) and the cameras' ``camera_info`` topics where
the bag has them are published with their original timing (scaled by a rate
factor; optionally with ``/clock`` for nodes on ``use_sim_time``), the node's fused outputs
and its ``~/metrics`` are recorded to a bag, and the same report as the offline evaluation
(:mod:`cldyn_ros.offline.bag_eval`) is written, with a ``live`` section: how many pairs the node's
pairing code makes from the bag (offline, the same code), how many fused frames came back,
and so how many pairs were dropped on the way (DDS, pairing in the node, or the node's
latest-pair worker skipping frames under load), next to the node's own drop counters.

Needs rclpy (a sourced ROS 2 distro or the ROS wheels); the rest of the package does not.
The node's pairing and output settings are read through its parameter services, so the
offline expectation uses the node's slop, queue size and staleness.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..imaging.thermal import ThermalNormalizer, thermal_to_unit
from ..metrics import METRIC_NAMES
from ..offline.bag_eval import (
    ReportBuilder,
    decode_input,
    image_luminance,
    pair_bag,
    pairing_warnings,
    sample_stamps,
    summary_stats,
    write_report,
)
from ..offline.bags import (
    CAMERA_INFO_TYPE,
    COMPRESSED_TYPE,
    BagError,
    BagInfo,
    ImageBagWriter,
    bag_info,
    check_image_topics,
    decode_image,
    decode_stamp,
    iter_messages,
    typestore_for,
)
from ..streams.camera_info import camera_info_topic
from ..streams.image_convert import ColorFrame
from ..streams.settings import FusionSettings

__all__ = ["ReplayError", "ReplaySettings", "create_input_publishers", "replay_bag"]

_NS = 1_000_000_000
DIAG_TYPE = "diagnostic_msgs/msg/DiagnosticArray"
#: Stage timings of the node's ~/metrics that go into the report (milliseconds).
NODE_STAGES = ("preprocess_ms", "fuse_ms", "postprocess_ms", "pairing_wait_ms",
               "queue_wait_ms", "processing_ms", "latency_arrival_ms")


class ReplayError(RuntimeError):
    """Replay cannot run (no node, no ROS); the message says why."""


@dataclass
class ReplaySettings:
    """How to replay. ``outputs`` maps a label to a fused topic; None reads the node's
    ``tasks``/``task`` parameters (``fused/<task>/image`` or ``fused/image``)."""

    thermal_topic: str = "/thermal/image"
    rgb_topic: str = "/rgb/image"
    node: str = "/cldyn_fusion"
    rate: float = 1.0
    clock: bool = False
    outputs: Mapping[str, str] | None = None
    connect_timeout: float = 30.0
    settle_s: float = 2.0
    metrics: tuple[str, ...] = METRIC_NAMES
    batch_size: int = 16
    record: bool = True
    storage: str = "mcap"
    progress: bool = True
    # Used when the node's parameters cannot be read: the node's defaults.
    slop: float = FusionSettings.slop
    queue_size: int = FusionSettings.queue_size
    max_delay: float = FusionSettings.max_delay


@dataclass
class _Received:
    recv: float
    raw: bytes


@dataclass
class _State:
    lock: threading.Lock = field(default_factory=threading.Lock)
    fused: dict[str, dict[int, _Received]] = field(default_factory=dict)  # topic -> stamp
    metrics: dict[int, dict[str, str]] = field(default_factory=dict)  # stamp -> frame values
    metrics_raw: list[tuple[int, bytes]] = field(default_factory=list)
    last_metrics: dict[str, str] = field(default_factory=dict)
    published: dict[int, float] = field(default_factory=dict)  # colour stamp -> wall time
    camera_info: dict[str, list[_Received]] = field(default_factory=dict)  # fused */camera_info
    last_output: float = 0.0
    warnings: list[str] = field(default_factory=list)


def _stamp_of(raw: bytes, store: Any) -> int:
    msg = store.deserialize_cdr(raw, "sensor_msgs/msg/Image")
    return int(msg.header.stamp.sec) * _NS + int(msg.header.stamp.nanosec)


def _node_parameters(node: Any, target: str, timeout: float) -> dict[str, Any]:
    """Values of the fusion node's parameters we need, or {} if its service is absent."""
    from rcl_interfaces.srv import GetParameters
    from rclpy.parameter import parameter_value_to_python

    names = ["slop", "queue_size", "max_delay", "tasks", "task", "thermal_mode",
             "thermal_low_percentile", "thermal_high_percentile", "thermal_smoothing",
             "use_sim_time", "model_path", "device", "precision"]
    client = node.create_client(GetParameters, f"{target}/get_parameters")
    try:
        if not client.wait_for_service(timeout_sec=timeout):
            return {}
        future = client.call_async(GetParameters.Request(names=names))
        done = threading.Event()
        future.add_done_callback(lambda _: done.set())
        if not done.wait(timeout) or future.result() is None:
            return {}
        values = [parameter_value_to_python(v) for v in future.result().values]
        return {k: v for k, v in zip(names, values, strict=False) if v is not None}
    finally:
        node.destroy_client(client)


def replay_bag(bag: str | Path, settings: ReplaySettings,
               out_dir: str | Path | None = None) -> dict[str, Any]:
    """Replay ``bag`` through a running fusion node; return (and write) the report.

    Raises:
        BagError: a bad bag (as for the offline evaluation).
        ReplayError: rclpy is missing or no fusion node is listening.
    """
    bag = Path(bag)
    if not (settings.rate > 0 and np.isfinite(settings.rate)):
        raise ValueError(f"rate factor must be positive, got {settings.rate}")
    info = bag_info(bag)
    check_image_topics(info, [settings.thermal_topic, settings.rgb_topic])
    try:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from rclpy.signals import SignalHandlerOptions
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import CameraInfo, Image
    except ImportError as e:
        raise ReplayError(f"live replay needs ROS 2 (rclpy): {e}; 'cldyn eval bag' evaluates "
                          "offline without it") from None

    context = Context()
    rclpy.init(context=context, signal_handler_options=SignalHandlerOptions.NO)
    executor = SingleThreadedExecutor(context=context)
    node = rclpy.create_node("cldyn_replay", context=context)
    executor.add_node(node)
    spin = threading.Thread(target=lambda: _spin(executor), name="cldyn-replay-spin",
                            daemon=True)
    spin.start()
    state = _State()
    store = typestore_for("kilted")
    try:
        params = _node_parameters(node, settings.node, min(settings.connect_timeout, 10.0))
        if not params:
            raise ReplayError(f"no fusion node '{settings.node}' answers (is fusion_node "
                              "running, with the same ROS_DOMAIN_ID and discovery range?)")
        outputs = dict(settings.outputs or _default_outputs(params, settings.node))
        qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        pubs, info_pubs = create_input_publishers(node, info, settings.thermal_topic,
                                                  settings.rgb_topic, qos)
        clock_pub = node.create_publisher(Clock, "/clock", 10) if settings.clock else None
        for topic in outputs.values():
            state.fused[topic] = {}
            node.create_subscription(Image, topic, _recorder(state, topic, store), qos,
                                     raw=True)
            info_topic = camera_info_topic(topic)
            state.camera_info[info_topic] = []
            node.create_subscription(CameraInfo, info_topic,
                                     _info_recorder(state, info_topic), qos, raw=True)
        metrics_topic = f"{settings.node.rstrip('/')}/metrics"
        node.create_subscription(DiagnosticArray, metrics_topic, _metrics_recorder(state), 100)
        _wait_connected(node, pubs, list(outputs.values()), settings)
        published = _play(bag, settings, pubs, clock_pub, state, store, Clock, info,
                          info_pubs)
        _settle(state, settings)
    finally:
        executor.shutdown(timeout_sec=5)
        spin.join(5)
        node.destroy_node()
        rclpy.try_shutdown(context=context)

    slop = float(params.get("slop", settings.slop))
    queue = int(params.get("queue_size", settings.queue_size))
    max_delay = float(params.get("max_delay", settings.max_delay))
    expected, stats, warnings = pair_bag(bag, settings.thermal_topic, settings.rgb_topic, slop,
                                         queue, max_delay)
    report = _build_report(bag, info, settings, params, outputs, expected, stats, warnings,
                           state, published, out_dir, metrics_topic)
    return report


def create_input_publishers(node: Any, info: BagInfo, thermal_topic: str, rgb_topic: str,
                            qos: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Publishers of what the replay sends: ``(image publishers, camera_info publishers)``.

    Each image topic gets a publisher of the bag's type on the bag's topic name
    (``sensor_msgs/Image``, or ``sensor_msgs/CompressedImage`` for a compressed topic such
    as ``/rgb/image_raw/compressed``, where a node with the ``compressed`` transport
    listens). The camera_info sibling of each image topic (``/rgb/camera_info``) gets a
    ``sensor_msgs/CameraInfo`` publisher where the bag has that topic.
    """
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image

    types = {COMPRESSED_TYPE: CompressedImage}
    images = {t: node.create_publisher(types.get(info.topics[t][0], Image), t, qos)
              for t in (thermal_topic, rgb_topic)}
    infos = {}
    for topic in (thermal_topic, rgb_topic):
        sibling = camera_info_topic(topic)
        found = info.topics.get(sibling)
        if found is not None and found[0] == CAMERA_INFO_TYPE and sibling not in infos:
            infos[sibling] = node.create_publisher(CameraInfo, sibling, qos)
    return images, infos


def _info_recorder(state: _State, topic: str):
    def record(raw: bytes) -> None:
        with state.lock:
            state.camera_info[topic].append(_Received(time.monotonic(), bytes(raw)))

    return record


def _spin(executor: Any) -> None:
    with contextlib.suppress(Exception):
        executor.spin()


def _default_outputs(params: Mapping[str, Any], node: str) -> dict[str, str]:
    ns = node.rsplit("/", 1)[0]  # the node's namespace: its relative topics live there
    tasks = list(params.get("tasks") or [])
    if tasks:
        return {t: f"{ns}/fused/{t}/image" for t in tasks}
    return {str(params.get("task", "none")): f"{ns}/fused/image"}


def _recorder(state: _State, topic: str, store: Any):
    def record(raw: bytes) -> None:
        now = time.monotonic()
        try:
            stamp = _stamp_of(raw, store)
        except Exception:  # a malformed output is counted as missing
            return
        with state.lock:
            state.fused[topic][stamp] = _Received(now, bytes(raw))
            state.last_output = now

    return record


def _metrics_recorder(state: _State):
    from rclpy.serialization import serialize_message

    def record(msg: Any) -> None:
        stamp = int(msg.header.stamp.sec) * _NS + int(msg.header.stamp.nanosec)
        frame = next((s for s in msg.status if s.name.endswith(": frame")), None)
        if frame is None:
            return
        values = {kv.key: kv.value for kv in frame.values}
        with state.lock:
            state.metrics[stamp] = values
            state.last_metrics = values
            state.metrics_raw.append((stamp, serialize_message(msg)))

    return record


def _wait_connected(node: Any, pubs: Mapping[str, Any], outputs: Sequence[str],
                    settings: ReplaySettings) -> None:
    deadline = time.monotonic() + settings.connect_timeout
    while time.monotonic() < deadline:
        if all(p.get_subscription_count() for p in pubs.values()) and all(
                node.count_publishers(t) for t in outputs):
            time.sleep(0.3)  # let the matching finish on both sides
            return
        time.sleep(0.05)
    missing = [t for t, p in pubs.items() if not p.get_subscription_count()]
    missing += [t for t in outputs if not node.count_publishers(t)]
    raise ReplayError(f"the fusion node did not connect within {settings.connect_timeout:g} s: "
                      f"nobody on {', '.join(missing)} (topic remapped? use --thermal-topic/"
                      "--rgb-topic/--output)")


def _play(bag: Path, settings: ReplaySettings, pubs: Mapping[str, Any], clock_pub: Any,
          state: _State, store: Any, clock_type: Any, info: Any,
          info_pubs: Mapping[str, Any] | None = None) -> dict[str, int]:
    from builtin_interfaces.msg import Time
    from tqdm import tqdm

    info_pubs = info_pubs or {}
    counts = {"thermal": 0, "rgb": 0, "camera_info": 0}
    total = sum(info.topics[t][1] for t in [*pubs, *info_pubs])
    start_wall: float | None = None
    first_log = 0

    def publish_clock(bag_ns: int) -> None:
        sec, nanosec = divmod(int(bag_ns), _NS)
        clock_pub.publish(clock_type(clock=Time(sec=sec, nanosec=nanosec)))

    with tqdm(total=total, desc="replay", unit="msg", disable=not settings.progress) as bar:
        for topic, msgtype, log_ns, raw in _messages_until_damage(
                bag, [*pubs, *info_pubs], state):
            if start_wall is None:
                start_wall, first_log = time.monotonic() + 0.1, log_ns
            target = start_wall + (log_ns - first_log) / _NS / settings.rate
            while True:
                now = time.monotonic()
                if clock_pub is not None:
                    publish_clock(first_log + int(max(0.0, now - start_wall) * settings.rate
                                                  * _NS))
                if now >= target:
                    break
                time.sleep(min(target - now, 0.01))
            if topic in info_pubs:
                info_pubs[topic].publish(raw)
                counts["camera_info"] += 1
                bar.update(1)
                continue
            if topic == settings.rgb_topic:
                with state.lock:
                    state.published[decode_stamp(raw, store, msgtype)[0]] = time.monotonic()
                counts["rgb"] += 1
            else:
                counts["thermal"] += 1
            pubs[topic].publish(raw)
            bar.update(1)
    return counts


def _messages_until_damage(bag: Path, topics: list[str], state: _State):
    """The bag's messages; a damaged end is recorded as a warning instead of raised."""
    try:
        yield from iter_messages(bag, topics)
    except BagError as e:
        state.warnings.append(f"{e}; replayed every intact message")


def _settle(state: _State, settings: ReplaySettings) -> None:
    """Wait until the node has published nothing new for ``settle_s``."""
    end = time.monotonic()
    while True:
        with state.lock:
            last = max(state.last_output, end)
        if time.monotonic() - last >= settings.settle_s:
            return
        time.sleep(0.05)


def _build_report(bag: Path, info: Any, settings: ReplaySettings, params: Mapping[str, Any],
                  outputs: Mapping[str, str], expected: list, stats: dict,
                  warnings: list[str], state: _State, published: dict[str, int],
                  out_dir: str | Path | None, metrics_topic: str) -> dict[str, Any]:
    from ..offline.bag_eval import BagEvalSettings

    store = typestore_for("kilted")
    labels = list(outputs)
    by_stamp = {p.color.stamp_ns: p for p in expected}
    received_stamps = sorted({s for d in state.fused.values() for s in d})
    all_received = [s for s in received_stamps
                    if all(s in state.fused[t] for t in outputs.values())]
    dropped = [s for s in sorted(by_stamp) if s not in set(received_stamps)]
    unexpected = [s for s in received_stamps if s not in by_stamp]

    # Inputs of the received pairs. Thermal frame: the one the node used (its reported gap,
    # printed with 6 significant digits, snapped to the nearest thermal stamp in the bag),
    # else the one the offline pairing chose. Only the received pairs' frames are kept.
    colors: dict[int, tuple[np.ndarray, str]] = {}
    thermals: dict[int, np.ndarray] = {}
    received = set(received_stamps)
    try:
        for topic, msgtype, log_ns, raw in iter_messages(bag, [settings.thermal_topic,
                                                                 settings.rgb_topic]):
            role = "thermal" if topic == settings.thermal_topic else "color"
            try:
                if role == "color" and decode_stamp(raw, store, msgtype)[0] not in received:
                    continue
                rec, pixels = decode_input(raw, store, topic, log_ns, msgtype, role)
            except BagError:
                continue
            if isinstance(pixels, ColorFrame):
                colors[rec.stamp_ns] = (pixels.image, pixels.order)
            else:
                thermals[rec.stamp_ns] = pixels
    except BagError as e:
        warnings.append(str(e))
    thermal_stamps = np.array(sorted(thermals), dtype=np.int64)
    thermal_for: dict[int, int] = {}
    for s in received_stamps:
        values = state.metrics.get(s, {})
        if "pairing_gap_ms" in values and thermal_stamps.size:
            guess = s - round(float(values["pairing_gap_ms"]) * 1e6)
            i = int(np.argmin(np.abs(thermal_stamps - guess)))
            if abs(int(thermal_stamps[i]) - guess) <= 1000:  # within 1 us
                thermal_for[s] = int(thermal_stamps[i])
        if s not in thermal_for and s in by_stamp:
            thermal_for[s] = by_stamp[s].thermal.stamp_ns
    used = set(thermal_for.values())
    for k in [k for k in thermals if k not in used]:
        del thermals[k]

    defaults = FusionSettings()
    mode = str(params.get("thermal_mode", defaults.thermal_mode))
    normalizer = ThermalNormalizer(
        float(params.get("thermal_low_percentile", defaults.thermal_low_percentile)),
        float(params.get("thermal_high_percentile", defaults.thermal_high_percentile)),
        float(params.get("thermal_smoothing", defaults.thermal_smoothing)))
    builder = ReportBuilder(labels, settings.metrics, settings.batch_size,
                            sample_stamps(received_stamps))
    start_ns = min(by_stamp) if by_stamp else (received_stamps[0] if received_stamps else 0)
    for s in received_stamps:
        if s not in colors or thermal_for.get(s) not in thermals:
            continue
        color, in_order = colors.pop(s)
        thermal = thermals[thermal_for[s]]
        images = {}
        for label, t in outputs.items():
            got = state.fused[t].get(s)
            if got is not None:
                out = decode_image(got.raw, store, t)
                out_order = "bgr" if out.encoding == "bgr8" else "rgb"
                images[label] = out.image if out_order == in_order else out.image[..., ::-1]
        h, w = color.shape[:2]
        unit = thermal_to_unit(thermal, normalizer, mode)
        if unit.shape != (h, w):
            import cv2

            unit = cv2.resize(unit, (w, h), interpolation=cv2.INTER_LINEAR)
        ir = torch.from_numpy(np.ascontiguousarray(unit, np.float32))[None, None]
        vis = image_luminance(color, in_order)
        values = state.metrics.get(s, {})
        timings = {k[:-3]: float(values[k]) for k in NODE_STAGES if k in values}
        first = min((state.fused[t][s].recv for t in outputs.values()
                     if s in state.fused[t]), default=None)
        if first is not None and s in state.published:
            timings["end_to_end"] = (first - state.published[s]) * 1000.0
        builder.add(s, (s - start_ns) / _NS, s - thermal_for[s], thermal_for[s], images, ir,
                    vis, timings, in_order, thermal, color)
    records = builder.finish()

    node_counters = {k: _number(v) for k, v in state.last_metrics.items()
                     if (k.startswith(("pairing_", "worker_")) or k.endswith("_errors"))
                     and not k.endswith("_ms")}
    live = {
        "node": settings.node, "rate": settings.rate, "clock": settings.clock,
        "outputs": {label: {"topic": t, "received": len(state.fused[t])}
                    for label, t in outputs.items()},
        "published_thermal": published["thermal"], "published_rgb": published["rgb"],
        "published_camera_info": published.get("camera_info", 0),
        "fused_camera_info": {t: len(v) for t, v in state.camera_info.items()},
        "pairs_offline": len(expected), "pairs_received": len(received_stamps),
        "pairs_received_all_outputs": len(all_received),
        "pairs_dropped": len(dropped), "received_not_paired_offline": len(unexpected),
        "dropped_stamps": dropped[:100], "node_counters": node_counters,
    }
    live_warnings = []
    if not received_stamps:
        live_warnings.append("the node published no fused image during the replay")
    elif dropped:
        live_warnings.append(f"{len(dropped)} of {len(expected)} pairs were dropped on the way "
                             f"(node counters: worker_dropped "
                             f"{node_counters.get('worker_dropped', '?')}, colour unmatched "
                             f"{node_counters.get('pairing_color_unmatched', '?')})")
    bag_settings = BagEvalSettings(settings.thermal_topic, settings.rgb_topic, tuple(labels),
                                   float(params.get("slop", settings.slop)),
                                   int(params.get("queue_size", settings.queue_size)),
                                   float(params.get("max_delay", settings.max_delay)),
                                   settings.metrics)
    report: dict[str, Any] = {
        "tool": "cldyn replay",
        "version": __import__("cldyn_ros").__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "mode": f"live (rate x{settings.rate:g})",
        "bag": info.as_dict(),
        "settings": bag_settings.as_dict(),
        "model": {"label": f"fusion_node {settings.node}: {params.get('model_path') or 'default'}",
                  "device": params.get("device", "?"), "precision": params.get("precision", "?"),
                  "parameters": dict(params)},
        "pairing": {**stats, "gap_ms": summary_stats([r["gap_ms"] for r in records])},
        "live": live,
        "frames": {"fused": len(records)},
        "summary": builder.summary(),
        "latency_ms": builder.latency(),
        "warnings": live_warnings + state.warnings + pairing_warnings(stats, bag_settings.slop)
        + warnings
        + builder.warnings,
        "per_pair": records,
    }
    if out_dir is not None and settings.record:
        out_bag = Path(out_dir) / "replay_bag"
        with ImageBagWriter(out_bag, settings.storage, "kilted", overwrite=True) as writer:
            items = [(r.recv, t, r.raw) for t, d in state.fused.items() for r in d.values()]
            first_pub = min(state.published.values(), default=0.0)
            base = info.start_ns
            for recv, topic, raw in sorted(items):
                log = base + int((recv - first_pub) * settings.rate * _NS)
                writer.write_raw(topic, max(log, base), raw)
            for stamp, raw in sorted(state.metrics_raw):
                writer.write_raw(metrics_topic, stamp, raw, DIAG_TYPE)
            for topic, infos in state.camera_info.items():
                for r in infos:
                    log = base + int((r.recv - first_pub) * settings.rate * _NS)
                    writer.write_raw(topic, max(log, base), r.raw, CAMERA_INFO_TYPE)
        report["output_bag"] = {"path": str(out_bag), "topics": dict(writer.counts)}
    if out_dir is not None:
        write_report(out_dir, report, builder.samples, labels)
    return report


def _number(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text
