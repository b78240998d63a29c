"""``cldyn replay``: replay a bag through a running fusion_node and report."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..metrics import METRIC_NAMES


def _output(spec: str) -> tuple[str, str]:
    label, sep, topic = spec.partition("=")
    if not sep or not label or not topic:
        raise argparse.ArgumentTypeError(f"'{spec}': want LABEL=TOPIC")
    return label, topic


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "replay",
        help="replay a bag through a running fusion_node (live, over DDS) and report",
        description="Publish a bag's thermal and colour images with their original timing "
        "(times --rate) to a running fusion_node, record its fused outputs and ~/metrics to "
        "<out>/replay_bag and write the report of 'cldyn eval bag' (report.json, report.md, "
        "plots, contact sheet) with the pairs the node dropped. A CompressedImage topic "
        "(<camera>/image_raw/compressed) is published as CompressedImage on its own name, "
        "for a node subscribed with the compressed transport; the cameras' camera_info "
        "topics in the bag are published too, and the node's <output>/../camera_info "
        "recorded. Needs ROS 2 (rclpy).",
    )
    p.add_argument("bag", type=Path, help="bag folder (with metadata.yaml)")
    p.add_argument("--thermal-topic", default="/thermal/image",
                   help="the bag's thermal Image or CompressedImage topic")
    p.add_argument("--rgb-topic", default="/rgb/image",
                   help="the bag's colour Image or CompressedImage topic")
    p.add_argument("--node", default="/cldyn_fusion", help="full name of the fusion node")
    p.add_argument("--rate", type=float, default=1.0, help="playback rate factor")
    p.add_argument("--clock", action="store_true",
                   help="publish /clock with the bag's time (for use_sim_time nodes)")
    p.add_argument("--output", type=_output, action="append", default=[],
                   metavar="LABEL=TOPIC", help="fused topic to record (default: from the "
                   "node's tasks/task parameters)")
    p.add_argument("--out", type=Path, help="report folder (default: <bag>_replay)")
    p.add_argument("--no-record", action="store_true", help="do not write replay_bag")
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    p.add_argument("--metrics", default=",".join(METRIC_NAMES),
                   help="comma-separated subset of metrics ('' for none)")
    p.add_argument("--connect-timeout", type=float, default=30.0,
                   help="seconds to wait for the node")
    p.add_argument("--settle", type=float, default=2.0,
                   help="seconds without new output before the replay ends")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .common import CLIError
    from .evaluate import parse_metrics

    metrics = tuple(parse_metrics(args.metrics))
    try:
        from ..ros.replay import ReplayError, ReplaySettings, replay_bag
    except ImportError as e:  # pragma: no cover - depends on the installation
        raise CLIError(f"live replay needs ROS 2 (rclpy): {e}") from None
    settings = ReplaySettings(
        thermal_topic=args.thermal_topic, rgb_topic=args.rgb_topic, node=args.node,
        rate=args.rate, clock=args.clock, outputs=dict(args.output) or None,
        connect_timeout=args.connect_timeout, settle_s=args.settle, metrics=metrics,
        record=not args.no_record, storage=args.storage, progress=not args.no_progress,
    )
    out = args.out or args.bag.with_name(args.bag.name.rstrip("/") + "_replay")
    try:
        report = replay_bag(args.bag, settings, out)
    except ReplayError as e:
        raise CLIError(str(e)) from None
    live = report["live"]
    print(f"{live['pairs_received']} of {live['pairs_offline']} pairs came back fused "
          f"({live['pairs_dropped']} dropped); report in {out}/report.md")
    for warning in report["warnings"]:
        print(f"warning: {warning}")
    if live["pairs_received"] == 0:
        raise CLIError(f"the node published no fused image (report in {out}/report.md)")
    return 0
