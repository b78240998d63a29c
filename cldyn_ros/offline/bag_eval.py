"""Offline evaluation of a recorded drive: read a bag, pair, fuse, score, report.

No ROS runtime is needed. Frames are fed in log-time order (the order the node would have
received them) to the node's own pairing code
(:class:`~cldyn_ros.streams.pairing.ApproximateTimePairer`), every pair is fused for every
requested task in one batched engine pass
(:meth:`~cldyn_ros.inference.engine.FusionEngine.fuse`, the node's code path) and the fused
images are scored with the project's metric code in batches of pairs.

The report (:func:`write_report`, shared with live replay in :mod:`cldyn_ros.ros.replay`):

- ``report.json``: bag, settings, pairing statistics, per-task metric summary, latency per
  stage, every pair's metrics and timings, warnings;
- ``report.md``: the same, readable;
- ``metrics_over_time.png``, ``latency_histogram.png``, ``contact_sheet.png``.

Metrics are computed on what a consumer of the fused topic sees: the luminance (BT.601 Y) of
the 8-bit fused image, against the infrared input as the engine prepared it and the visible
luminance.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import __version__
from ..inference.checkpoint import first_line
from ..inference.engine import FusionEngine
from ..metrics import METRIC_NAMES, fusion_metrics
from ..model import rgb_to_ycbcr
from ..streams.camera_info import CameraInfoData, camera_info_topic, fused_camera_info
from ..streams.image_convert import ColorFrame, color_from_array, thermal_from_array
from ..streams.image_msgs import ImageMessageError
from ..streams.pairing import ApproximateTimePairer, Frame, Pair
from ..streams.pipeline import FramePipeline, InputImage
from ..streams.settings import FusionSettings
from .bags import (
    CAMERA_INFO_TYPE,
    BagError,
    BagInfo,
    ImageBagWriter,
    bag_info,
    check_image_topics,
    decode_camera_info,
    decode_image,
    decode_stamp,
    iter_messages,
    typestore_for,
)

__all__ = [
    "BagEvalSettings",
    "ReportBuilder",
    "decode_input",
    "evaluate_bag",
    "image_luminance",
    "pair_bag",
    "write_report",
]

_NS = 1_000_000_000
#: Fused topic of a task in an output bag (as the node publishes in multi-task mode).
FUSED_TOPIC = "/fused/{task}/image"
#: Its camera_info topic (written when the bag has the colour camera's camera_info).
FUSED_INFO_TOPIC = "/fused/{task}/camera_info"
#: Most pairs in the contact sheet.
SHEET_ROWS = 6


@dataclass
class BagEvalSettings:
    """What to evaluate and how (the pairing settings are the node's parameters)."""

    thermal_topic: str = "/thermal/image"
    rgb_topic: str = "/rgb/image"
    tasks: tuple[str, ...] = ("none",)
    slop: float = FusionSettings.slop
    queue_size: int = FusionSettings.queue_size
    max_delay: float = FusionSettings.max_delay
    metrics: tuple[str, ...] = METRIC_NAMES
    batch_size: int = 16
    write_bag: bool = False
    storage: str | None = None  # of the output bag; None: as the input
    progress: bool = True
    #: The colour camera's camera_info topic: "" = the image topic's sibling
    #: (``/rgb/image`` -> ``/rgb/camera_info``) if the bag has it, None = not used.
    rgb_camera_info: str | None = ""

    def as_dict(self) -> dict[str, Any]:
        return {"thermal_topic": self.thermal_topic, "rgb_topic": self.rgb_topic,
                "tasks": list(self.tasks), "slop_s": self.slop, "queue_size": self.queue_size,
                "max_delay_s": self.max_delay, "metrics": list(self.metrics)}

    def camera_info_topic(self, info: BagInfo) -> str | None:
        """The colour camera_info topic to use in this bag, or None (checked: an explicit
        topic must exist and be ``sensor_msgs/msg/CameraInfo``)."""
        if self.rgb_camera_info is None:
            return None
        topic = self.rgb_camera_info or camera_info_topic(self.rgb_topic)
        found = info.topics.get(topic)
        if found is not None and found[0] == CAMERA_INFO_TYPE:
            return topic
        if self.rgb_camera_info:
            what = "not in the bag" if found is None else f"of type '{found[0]}'"
            raise BagError(f"camera_info topic '{topic}' is {what}, not {CAMERA_INFO_TYPE}")
        return None


def decode_input(raw: bytes, store: Any, topic: str, log_ns: int, msgtype: str,
                 role: str) -> tuple[Any, np.ndarray | ColorFrame]:
    """Decode one bag image message into a fusion input: ``(record, input)``, the input
    an ``H x W`` thermal array (``role`` ``thermal``) or a :class:`ColorFrame` (writable
    copies: the bag's buffers are read-only, which torch warns about)."""
    rec = decode_image(raw, store, topic, log_ns, msgtype)
    try:
        if role == "thermal":
            return rec, np.array(thermal_from_array(rec.image, rec.encoding), copy=True)
        frame = color_from_array(rec.image, rec.encoding)
        return rec, ColorFrame(np.array(frame.image, copy=True), frame.order)
    except ImageMessageError as e:
        raise BagError(f"image on '{topic}' at {log_ns} ns cannot be used: {e}") from None


def image_luminance(image: np.ndarray, order: str = "rgb") -> Tensor:
    """``H x W x 3`` uint8 -> BT.601 luminance ``(1, 1, H, W)`` float32 in ``[0, 1]``."""
    rgb = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)[None].float() / 255.0
    if order == "bgr":
        rgb = rgb.flip(1)
    return rgb_to_ycbcr(rgb)[:, :1]


def summary_stats(values: Sequence[float | None]) -> dict[str, float]:
    """Count, mean, std, min, median, 95th percentile and max of the finite values."""
    vals = np.asarray([v for v in values if v is not None and math.isfinite(v)], np.float64)
    if vals.size == 0:
        return {"n": 0, "mean": float("nan"), "std": float("nan"), "min": float("nan"),
                "p50": float("nan"), "p95": float("nan"), "max": float("nan")}
    return {"n": int(vals.size), "mean": float(vals.mean()), "std": float(vals.std()),
            "min": float(vals.min()), "p50": float(np.percentile(vals, 50)),
            "p95": float(np.percentile(vals, 95)), "max": float(vals.max())}


@dataclass
class _Pending:
    record: dict[str, Any]
    fused: Tensor  # (T, 1, H, W)
    ir: Tensor  # (1, 1, H, W)
    vis: Tensor  # (1, 1, H, W)


class ReportBuilder:
    """Collects per-pair results and scores them in batches of pairs.

    :meth:`add` takes one pair's fused images (one per task); metrics are computed when
    ``batch_size`` pairs of the same size are waiting (and at :meth:`finish`), so a slow
    metric (VIF, SSIM) runs once per batch. Also keeps a few pairs for the contact sheet.
    """

    def __init__(self, tasks: Sequence[str], metrics: Sequence[str] = METRIC_NAMES,
                 batch_size: int = 16, sample_stamps: Sequence[int] = ()) -> None:
        self.tasks = list(tasks)
        self.metrics = list(metrics)
        self.batch_size = max(1, int(batch_size))
        self.records: list[dict[str, Any]] = []
        self.samples: list[tuple[str, list[np.ndarray]]] = []
        self.warnings: list[str] = []
        self.sample_stamps = set(sample_stamps)
        self._pending: list[_Pending] = []
        self._failed_metrics: set[str] = set()

    def add(self, stamp_ns: int, t_s: float, gap_ns: int | None, thermal_stamp_ns: int | None,
            images: Mapping[str, np.ndarray], ir: Tensor, vis: Tensor,
            timings: Mapping[str, float], order: str = "rgb",
            thermal_image: np.ndarray | None = None, color_image: np.ndarray | None = None,
            extra: Mapping[str, Any] | None = None) -> None:
        """One pair: ``images`` maps task -> fused ``H x W x 3`` uint8 (``order``); ``ir``
        and ``vis`` are the infrared input and visible luminance ``(1, 1, H, W)``."""
        record: dict[str, Any] = {
            "stamp_ns": int(stamp_ns), "t_s": round(float(t_s), 6),
            "thermal_stamp_ns": None if thermal_stamp_ns is None else int(thermal_stamp_ns),
            "gap_ms": None if gap_ns is None else gap_ns / 1e6,
            "tasks": sorted(images), "timings_ms": {k: float(v) for k, v in timings.items()},
            "metrics": {},
        }
        if extra:
            record.update(extra)
        self.records.append(record)
        if not self.metrics or not images:
            return
        fused = torch.cat([image_luminance(images[t], order) for t in sorted(images)])
        if self._pending and self._pending[0].ir.shape != ir.shape:
            self._flush()
        self._pending.append(_Pending(record, fused, ir.float().cpu(), vis.float().cpu()))
        if len(self._pending) >= self.batch_size:
            self._flush()
        if stamp_ns in self.sample_stamps and thermal_image is not None \
                and color_image is not None:
            tiles = [thermal_image, color_image if order == "rgb" else color_image[..., ::-1]]
            tiles += [images[t] if order == "rgb" else images[t][..., ::-1] for t in self.tasks
                      if t in images]
            self.samples.append((f"t={t_s:.2f}s", tiles))

    def _flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        counts = [p.fused.shape[0] for p in batch]
        fused = torch.cat([p.fused for p in batch])
        ir = torch.cat([p.ir.expand(n, -1, -1, -1) for p, n in zip(batch, counts, strict=True)])
        vis = torch.cat([p.vis.expand(n, -1, -1, -1) for p, n in zip(batch, counts, strict=True)])
        values: dict[str, Tensor] = {}
        for name in self.metrics:
            if name in self._failed_metrics:
                continue
            try:
                values[name] = fusion_metrics(fused, ir, vis, [name])[name].cpu()
            except (ValueError, RuntimeError) as e:  # e.g. frames too small for VIF
                self._failed_metrics.add(name)
                self.warnings.append(f"metric {name} cannot be computed on these frames "
                                     f"({first_line(e)}); left out")
        i = 0
        for p, n in zip(batch, counts, strict=True):
            for j, task in enumerate(p.record["tasks"][:n]):
                p.record["metrics"][task] = {k: float(v[i + j]) for k, v in values.items()}
            i += n

    def finish(self) -> list[dict[str, Any]]:
        self._flush()
        return self.records

    def summary(self) -> dict[str, dict[str, dict[str, float]]]:
        """``{task: {metric: stats}}`` over all scored pairs."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for task in self.tasks:
            out[task] = {}
            for m in self.metrics:
                vals = [r["metrics"][task][m] for r in self.records
                        if task in r["metrics"] and m in r["metrics"][task]]
                if vals:
                    out[task][m] = summary_stats(vals)
        return out

    def latency(self) -> dict[str, dict[str, float]]:
        stages: dict[str, list[float]] = {}
        for r in self.records:
            for k, v in r["timings_ms"].items():
                stages.setdefault(k, []).append(v)
        return {k: summary_stats(v) for k, v in stages.items()}


# --------------------------------------------------------------------------- pairing
def sample_stamps(color_stamps: Sequence[int], n: int = SHEET_ROWS) -> list[int]:
    """Up to ``n`` stamps spread evenly over ``color_stamps`` (the contact-sheet rows)."""
    if not color_stamps:
        return []
    idx = np.unique(np.linspace(0, len(color_stamps) - 1, min(n, len(color_stamps))).round())
    return [color_stamps[int(i)] for i in idx]


def pair_bag(path: str | Path, thermal_topic: str, rgb_topic: str,
             slop: float = FusionSettings.slop, queue_size: int = FusionSettings.queue_size,
             max_delay: float = FusionSettings.max_delay
             ) -> tuple[list[Pair], dict, list[str]]:
    """Pair a bag's frames without decoding pixels (payload: the colour/thermal stamps).

    Returns the pairs, the pairing statistics and warnings (a truncated bag is read up to
    the damage and reported as a warning).
    """
    store = typestore_for("kilted")
    pairer = ApproximateTimePairer(slop, queue_size, max_delay)
    pairs: list[Pair] = []
    warnings: list[str] = []
    try:
        for topic, msgtype, log_ns, raw in iter_messages(path, [thermal_topic, rgb_topic]):
            stamp_ns, frame_id = decode_stamp(raw, store, msgtype, topic, log_ns)
            frame = Frame(stamp_ns, None, frame_id, log_ns)
            pairs += pairer.add_thermal(frame) if topic == thermal_topic else \
                pairer.add_color(frame)
    except BagError as e:
        warnings.append(str(e))
    pairs += pairer.flush()
    return pairs, pairer.stats.as_dict(), warnings


def pairing_warnings(stats: Mapping[str, int], slop: float) -> list[str]:
    """Readable warnings about a pairing outcome (unpaired streams, many drops)."""
    out = []
    if stats["color_received"] == 0 or stats["thermal_received"] == 0:
        out.append("one stream has no frames at all: nothing can be paired")
    elif stats["pairs"] == 0:
        out.append(f"unpaired streams: no colour frame had a thermal frame within the slop of "
                   f"{slop * 1000:.1f} ms (are the cameras' clocks offset? try a larger "
                   "--slop, or check the stamps)")
    elif stats["color_unmatched"] > 0.1 * stats["color_received"]:
        out.append(f"{stats['color_unmatched']} of {stats['color_received']} colour frames had "
                   f"no thermal frame within {slop * 1000:.1f} ms")
    for key in ("out_of_order", "stale", "overflow"):
        if stats.get(key):
            out.append(f"{stats[key]} frame(s) dropped as {key.replace('_', ' ')}")
    return out


# ------------------------------------------------------------------------- evaluation
def evaluate_bag(
    bag: str | Path,
    engine: FusionEngine,
    settings: BagEvalSettings,
    out_dir: str | Path | None = None,
    model_label: str = "",
) -> dict[str, Any]:
    """Evaluate a bag offline; write the report to ``out_dir`` (if given) and return it.

    Raises:
        BagError: the bag cannot be opened, or a topic is missing, has the wrong type or no
            messages. A bag that turns out truncated or has undecodable messages is
            evaluated up to there, with a warning in the report.
    """
    from tqdm import tqdm

    bag = Path(bag)
    info = bag_info(bag)
    check_image_topics(info, [settings.thermal_topic, settings.rgb_topic])
    # The node's pipeline, one output per task; metrics by the report builder (all pairs).
    values = dict(FusionSettings().values(), tasks=list(settings.tasks), slop=settings.slop,
                  queue_size=settings.queue_size, max_delay=settings.max_delay,
                  metrics_every_n=0)
    pipeline = FramePipeline(engine, FusionSettings.from_values(values, engine.task_names),
                             configure_engine=False)
    info_topic = settings.camera_info_topic(info)
    store = typestore_for("kilted")
    n_color = info.topics[settings.rgb_topic][1]
    n_msgs = n_color + info.topics[settings.thermal_topic][1]
    # Contact-sheet rows: colour frames spread over the bag, by their index in the stream.
    sheet_rows = {int(i) for i in np.unique(
        np.linspace(0, max(n_color - 1, 0), min(SHEET_ROWS, n_color)).round())}
    builder = ReportBuilder(settings.tasks, settings.metrics, settings.batch_size)
    warnings: list[str] = []
    fusion_errors = 0
    writer = None
    out_bag = None
    if settings.write_bag:
        if out_dir is None:
            raise ValueError("writing an output bag needs an output folder")
        out_bag = Path(out_dir) / "fused_bag"
        writer = ImageBagWriter(out_bag, settings.storage or (
            info.storage if info.storage in ("mcap", "sqlite3") else "mcap"), "kilted",
            overwrite=True)
        writer.__enter__()
    start_ns = None
    color_info: CameraInfoData | None = None
    info_counts = {"received": 0, "errors": 0, "written": 0}

    def handle(pairs: list[Pair], log_ns: int) -> None:
        nonlocal fusion_errors
        for pair in pairs:
            color, thermal = pair.color.data, pair.thermal.data
            t0 = time.perf_counter()
            out = pipeline.fuse(pair)
            if out is None:
                fusion_errors += 1
                if fusion_errors <= 5:
                    warnings.append(f"pair at {pair.color.stamp_ns} ns not fused: "
                                    f"{pipeline.last_error}")
                continue
            result = out.result
            timings = dict(result.timings)
            timings["decode"] = color.decode_ms + thermal.decode_ms
            timings["total"] = (time.perf_counter() - t0) * 1000.0 + timings["decode"]
            t_s = (pair.color.stamp_ns - (start_ns or pair.color.stamp_ns)) / _NS
            if color.header in sheet_rows:  # the header slot holds the colour frame's index
                builder.sample_stamps.add(pair.color.stamp_ns)
            # The report and the output bag keep the input's channel order.
            builder.add(pair.color.stamp_ns, t_s, pair.gap_ns, pair.thermal.stamp_ns,
                        result.images, result.ir, result.vis_y, timings, result.color_order,
                        thermal.array, color.array)
            if writer is not None:
                for label, img in result.images.items():
                    writer.write_image(FUSED_TOPIC.format(task=label), img,
                                       f"{result.color_order}8", pair.color.stamp_ns,
                                       pair.color.frame_id, log_ns)
                    if color_info is not None:
                        writer.write_camera_info(
                            FUSED_INFO_TOPIC.format(task=label),
                            fused_camera_info(color_info, *img.shape[:2]),
                            pair.color.stamp_ns, pair.color.frame_id, log_ns)
                        info_counts["written"] += 1

    try:
        not_copied: set[str] = set()
        progress = tqdm(total=n_msgs, desc="eval bag", unit="msg", disable=not settings.progress)
        decode_errors = 0
        last_log = 0
        color_index = 0
        try:
            topics = None if writer is not None else [
                t for t in (settings.thermal_topic, settings.rgb_topic, info_topic) if t]
            for topic, msgtype, log_ns, raw in iter_messages(bag, topics):
                last_log = log_ns
                if writer is not None and topic not in not_copied:
                    try:
                        writer.write_raw(topic, log_ns, raw, msgtype)
                    except BagError as e:  # e.g. a custom message type unknown to rosbags
                        not_copied.add(topic)
                        warnings.append(f"topic '{topic}' not copied to the output bag: {e}")
                if topic == info_topic:
                    try:
                        color_info = decode_camera_info(raw, store, topic, log_ns)[2]
                        info_counts["received"] += 1
                    except BagError as e:
                        info_counts["errors"] += 1
                        if info_counts["errors"] <= 5:
                            warnings.append(str(e))
                    continue
                if topic not in (settings.thermal_topic, settings.rgb_topic):
                    continue
                progress.update(1)
                t0 = time.perf_counter()
                role = "thermal" if topic == settings.thermal_topic else "color"
                try:
                    rec, pixels = decode_input(raw, store, topic, log_ns, msgtype, role)
                except BagError as e:
                    decode_errors += 1
                    if decode_errors <= 5:
                        warnings.append(str(e))
                    continue
                decode_ms = (time.perf_counter() - t0) * 1000.0
                if isinstance(pixels, ColorFrame):
                    index, color_index = color_index, color_index + 1
                    payload = InputImage(pixels.image, f"{pixels.order}8", index, decode_ms)
                else:
                    payload = InputImage(pixels, rec.encoding, None, decode_ms)
                frame = Frame(rec.stamp_ns, payload, rec.frame_id, log_ns)
                if start_ns is None:
                    start_ns = rec.stamp_ns
                handle(pipeline.add(role, frame), log_ns)
        except BagError as e:
            warnings.append(f"{e}; the report covers every intact message")
        finally:
            progress.close()
        handle(pipeline.flush(), last_log)
    except BaseException:  # a crash or Ctrl-C: never leave a half-written output bag
        if writer is not None:
            writer.abort()
        raise
    if writer is not None:
        writer.close()
    records = builder.finish()
    stats = pipeline.pairing_stats()
    if decode_errors > 5:
        warnings.append(f"{decode_errors} undecodable image messages in all")
    if fusion_errors > 5:
        warnings.append(f"{fusion_errors} pairs could not be fused in all")
    warnings = pairing_warnings(stats, settings.slop) + warnings + builder.warnings

    report = {
        "tool": "cldyn eval bag",
        "version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "mode": "offline",
        "bag": info.as_dict(),
        "settings": settings.as_dict(),
        "model": {"label": model_label, "device": str(engine.device),
                  "precision": engine.precision, "tasks": engine.task_names},
        "pairing": {**stats, "gap_ms": summary_stats([r["gap_ms"] for r in records])},
        "frames": {"fused": len(records), "fusion_errors": fusion_errors,
                   "decode_errors": decode_errors},
        "camera_info": {"topic": info_topic, **info_counts},
        "summary": builder.summary(),
        "latency_ms": builder.latency(),
        "warnings": warnings,
        "per_pair": records,
    }
    if out_bag is not None and writer is not None:
        report["output_bag"] = {"path": str(out_bag), "topics": dict(writer.counts)}
    if out_dir is not None:
        write_report(out_dir, report, builder.samples, settings.tasks)
    return report


# ----------------------------------------------------------------------------- output
def _fmt(v: Any, digits: int = 4) -> str:
    if isinstance(v, float):
        return "n/a" if not math.isfinite(v) else f"{v:.{digits}g}"
    return str(v)


def report_markdown(report: Mapping[str, Any]) -> str:
    """A readable rendering of a report dict."""
    bag, s = report["bag"], report["settings"]
    lines = [f"# Fusion evaluation of `{Path(bag['path']).name}` ({report['mode']})", ""]
    lines += [f"- bag: `{bag['path']}` ({bag['storage']}, {bag['message_count']} messages, "
              f"{bag['duration_s']:.2f} s)",
              f"- topics: thermal `{s['thermal_topic']}`, colour `{s['rgb_topic']}`",
              f"- tasks: {', '.join(s['tasks'])}",
              f"- pairing: slop {s['slop_s'] * 1000:g} ms, queue {s['queue_size']}, "
              f"max delay {s['max_delay_s']:g} s"]
    info = report.get("camera_info") or {}
    if info.get("topic"):
        lines.append(f"- colour camera_info: `{info['topic']}` ({info['received']} messages, "
                     f"{info['written']} fused camera_info written)")
    model = report.get("model", {})
    if model:
        lines.append(f"- model: {model.get('label') or '?'} on {model.get('device', '?')} "
                     f"({model.get('precision', '?')})")
    lines.append(f"- created {report['created']} by {report['tool']} {report['version']}")
    lines += ["", "## Warnings", ""]
    lines += [f"- {w}" for w in report["warnings"]] or ["none"]
    p = report["pairing"]
    lines += ["", "## Pairing", "", "| counter | value |", "|---|---|"]
    for k, v in p.items():
        if k != "gap_ms":
            lines.append(f"| {k} | {v} |")
    g = p["gap_ms"]
    lines.append(f"| gap (ms) mean / max | {_fmt(g['mean'], 3)} / {_fmt(g['max'], 3)} |")
    if "live" in report:
        lines += ["", "## Live replay", "", "| counter | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in report["live"].items()
                  if not isinstance(v, (list, dict))]
        node = report["live"].get("node_counters", {})
        lines += [f"| node: {k} | {v} |" for k, v in node.items()]
    summary = report["summary"]
    metrics = report["settings"]["metrics"]
    if summary and any(summary.values()):
        lines += ["", "## Quality (mean ± std over pairs)", "",
                  "| task | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
        for task, row in summary.items():
            cells = [f"{_fmt(row[m]['mean'])} ± {_fmt(row[m]['std'], 2)}" if m in row else "n/a"
                     for m in metrics]
            lines.append(f"| {task} | " + " | ".join(cells) + " |")
    lat = report["latency_ms"]
    if lat:
        lines += ["", "## Latency per stage (ms)", "", "| stage | mean | p50 | p95 | max |",
                  "|---|---|---|---|---|"]
        for stage, st in lat.items():
            lines.append(f"| {stage} | {_fmt(st['mean'], 3)} | {_fmt(st['p50'], 3)} | "
                         f"{_fmt(st['p95'], 3)} | {_fmt(st['max'], 3)} |")
    lines += ["", "## Files", ""]
    for name in report.get("files", []):
        lines.append(f"- [{name}]({name})")
    if "output_bag" in report:
        lines.append(f"- output bag: `{report['output_bag']['path']}`")
    return "\n".join(lines) + "\n"


def write_report(out_dir: str | Path, report: dict[str, Any],
                 samples: Sequence[tuple[str, list[np.ndarray]]], tasks: Sequence[str]) -> None:
    """Write report.json, report.md, the plots and the contact sheet into ``out_dir``."""
    from .plots import latency_histogram, metrics_over_time

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    records = report["per_pair"]
    if records and report["settings"]["metrics"]:
        if metrics_over_time(out / "metrics_over_time.png", records, list(tasks),
                             report["settings"]["metrics"]):
            files.append("metrics_over_time.png")
    if report["latency_ms"]:
        latency_histogram(out / "latency_histogram.png", records)
        files.append("latency_histogram.png")
    if samples:
        from ..imaging.contact_sheet import save_contact_sheet

        titles = ["thermal", "colour", *tasks]
        rows = [tiles + [None] * (len(titles) - len(tiles)) for _, tiles in samples]
        height = int(min(200, max(64, samples[0][1][1].shape[0])))
        save_contact_sheet(out / "contact_sheet.png", rows, titles, [n for n, _ in samples],
                           tile_height=height)
        files.append("contact_sheet.png")
    report["files"] = ["report.json", "report.md", *files]
    (out / "report.json").write_text(json.dumps(_finite(report), indent=1, default=_json_default,
                                                 allow_nan=False))
    (out / "report.md").write_text(report_markdown(report))


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    return str(value)


def _finite(value: Any) -> Any:
    """NaN/inf -> None everywhere, so report.json is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
