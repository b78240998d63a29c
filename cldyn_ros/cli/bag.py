"""``cldyn bag``: write test bags (``from-images``) and show what a bag holds (``info``)."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ..offline.bags import (
    DISTROS,
    STORAGES,
    StreamSpec,
    bag_info,
    folder_stream,
    synthetic_stream,
    write_stream,
)


def _gap(spec: str) -> tuple[str, float, float]:
    stream, _, rest = spec.partition(":")
    start, _, end = rest.partition(":")
    try:
        t0, t1 = float(start), float(end)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{spec}': want STREAM:T0:T1 (seconds)") from None
    if stream not in ("rgb", "thermal") or not (0 <= t0 < t1):
        raise argparse.ArgumentTypeError(f"'{spec}': want rgb|thermal:T0:T1 with 0 <= T0 < T1")
    return stream, t0, t1


def _positive(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bag", help="write and inspect rosbag2 bags of camera images")
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    f = kinds.add_parser(
        "from-images",
        help="write a bag of thermal + colour images from pairs or a synthetic scene",
        description="Write a rosbag2 bag (sqlite3 or MCAP, no ROS needed) with two "
        "sensor_msgs/Image (or, with --compressed, CompressedImage) topics, as two "
        "free-running cameras would record them: colour frame k shows pair k (name order), "
        "thermal frames show the pair on screen at their time. Stamps get Gaussian jitter "
        "and a transport delay. With --synthetic SECONDS a moving synthetic street scene "
        "replaces the folders.",
    )
    src = f.add_argument_group("source (folders of pairs, or --synthetic)")
    src.add_argument("--ir", type=Path, help="folder of infrared images")
    src.add_argument("--vi", type=Path, help="folder of visible images (same file names)")
    src.add_argument("--synthetic", type=_positive, metavar="SECONDS",
                     help="render SECONDS of a moving synthetic scene instead of folders")
    src.add_argument("--size", type=int, nargs=2, default=(240, 320), metavar=("H", "W"),
                     help="synthetic frame size (default 240 320)")
    src.add_argument("--condition", default="night", help="synthetic lighting: night, day, "
                     "glare, fog")
    src.add_argument("--scene-seed", type=int, default=0, help="synthetic scene layout seed")
    f.add_argument("--out", type=Path, required=True, help="bag folder to create")
    f.add_argument("--storage", choices=STORAGES, default="mcap")
    f.add_argument("--distro", choices=sorted(DISTROS), default="kilted",
                   help="message definitions / metadata of this ROS 2 distro")
    f.add_argument("--rgb-rate", type=_positive, default=30.0, help="colour rate, Hz")
    f.add_argument("--thermal-rate", type=_positive, default=60.0, help="thermal rate, Hz")
    f.add_argument("--jitter-ms", type=float, default=0.0, help="stamp jitter (std), ms")
    f.add_argument("--latency-ms", type=float, default=3.0,
                   help="delay from header stamp to log time, ms")
    f.add_argument("--thermal-offset-ms", type=float, default=0.0,
                   help="exposure offset of the thermal camera, ms")
    f.add_argument("--thermal-bits", type=int, choices=(8, 16), default=8,
                   help="8: mono8, 16: mono16 raw counts")
    f.add_argument("--rgb-encoding", choices=("rgb8", "bgr8"), default="rgb8")
    f.add_argument("--thermal-topic", default="/thermal/image")
    f.add_argument("--rgb-topic", default="/rgb/image")
    f.add_argument("--compressed", action="store_true",
                   help="write sensor_msgs/CompressedImage on <topic>/compressed instead, as "
                   "image_transport records them: colour JPEG, thermal PNG (16 bits kept)")
    f.add_argument("--camera-info", action="store_true",
                   help="also write sensor_msgs/CameraInfo on <camera>/camera_info (sibling "
                   "of each image topic) with every image: a 60-degree pinhole of the frame "
                   "size unless --rgb-calibration/--thermal-calibration give one")
    f.add_argument("--rgb-calibration", type=Path, metavar="YAML",
                   help="colour camera calibration (camera_calibration_parsers YAML); "
                   "implies --camera-info")
    f.add_argument("--thermal-calibration", type=Path, metavar="YAML",
                   help="thermal camera calibration YAML; implies --camera-info")
    f.add_argument("--gap", type=_gap, action="append", default=[], metavar="STREAM:T0:T1",
                   help="drop the frames of rgb|thermal between T0 and T1 seconds (repeatable)")
    f.add_argument("--seed", type=int, default=0, help="seed of the jitter")
    f.add_argument("--overwrite", action="store_true", help="replace an existing bag folder")
    f.add_argument("--no-progress", action="store_true")
    f.set_defaults(func=run_from_images)

    i = kinds.add_parser("info", help="topics, types, counts and duration of a bag")
    i.add_argument("bag", type=Path)
    i.set_defaults(func=run_info)


def run_from_images(args: argparse.Namespace) -> int:
    spec = StreamSpec(
        rgb_rate=args.rgb_rate, thermal_rate=args.thermal_rate, jitter_ms=args.jitter_ms,
        thermal_bits=args.thermal_bits, thermal_offset_ms=args.thermal_offset_ms,
        latency_ms=args.latency_ms, rgb_encoding=args.rgb_encoding, seed=args.seed,
        rgb_gaps=[(a, b) for s, a, b in args.gap if s == "rgb"],
        thermal_gaps=[(a, b) for s, a, b in args.gap if s == "thermal"],
    )
    if args.jitter_ms < 0 or args.latency_ms < 0:
        raise ValueError("--jitter-ms and --latency-ms must not be negative")
    if args.synthetic is not None:
        if args.ir or args.vi:
            raise ValueError("give either --synthetic or --ir/--vi folders, not both")
        h, w = args.size
        duration = args.synthetic
        frames = synthetic_stream(duration, spec, h, w, args.condition, args.scene_seed)
    else:
        if not (args.ir and args.vi):
            raise ValueError("give --ir and --vi folders of pairs, or --synthetic SECONDS")
        duration, frames = folder_stream(args.ir, args.vi, spec)
    camera_info = None
    if args.camera_info or args.rgb_calibration or args.thermal_calibration:
        from ..streams.camera_info import camera_info_from_yaml

        camera_info = {
            "rgb": camera_info_from_yaml(args.rgb_calibration) if args.rgb_calibration
            else None,
            "thermal": camera_info_from_yaml(args.thermal_calibration)
            if args.thermal_calibration else None,
        }
    total = len(spec.frames(duration))
    counts = write_stream(args.out, frames, args.thermal_topic, args.rgb_topic, args.storage,
                          args.distro, args.rgb_encoding, args.overwrite,
                          progress=not args.no_progress, total=total,
                          compressed=args.compressed, camera_info=camera_info)
    print(f"wrote {args.out} ({args.storage}, {args.distro}, {duration:.2f} s): "
          + ", ".join(f"{t}: {n} messages" for t, n in counts.items()))
    return 0


def run_info(args: argparse.Namespace) -> int:
    info = bag_info(args.bag)
    print(f"{info.path}: {info.storage}, {info.message_count} messages, "
          f"{info.duration_s:.3f} s")
    for topic, (msgtype, count) in sorted(info.topics.items()):
        print(f"  {topic}  {msgtype}  {count}")
    if info.damaged:
        print(f"damaged: {info.damaged}", file=sys.stderr)
    return 0
