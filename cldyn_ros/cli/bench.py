"""``cldyn bench``: speed of the fusion engine (model level) or of the running node over
DDS (``cldyn bench node``), JSON and a readable table."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ..streams.settings import RELIABILITIES, add_option
from ..tools.bench import PATHS


def _sizes(text: str) -> list[tuple[int, int]]:
    """``640x512,1280x1024`` (width x height) -> ``[(512, 640), (1024, 1280)]``."""
    out = []
    for part in text.split(","):
        w, _, h = part.strip().lower().partition("x")
        try:
            out.append((int(h), int(w)))
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad size '{part}' (want WIDTHxHEIGHT)") from None
    return out


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"bad list '{text}' (want integers, comma-separated)") from None


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"bad list '{text}' (want numbers, comma-separated)") from None


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="measure fusion speed (per stage, with the plain fp32 baseline)",
        description="Model-level benchmark of the fusion engine on synthetic frames and a "
        "random-weight model of the default architecture (speed does not depend on the "
        "weights). For every resolution, device and task count the plain fp32 eager "
        "implementation (full-resolution embedding) is measured first in the same run, and "
        "every other case reports its speed-up against it. Per-stage p50/p90/p99 (convert, "
        "upload, normalise, preprocess, fuse, render, download, metrics, total), throughput "
        "and peak memory; JSON with --json, a markdown table on stdout. "
        "'cldyn bench node' instead runs the real node in its own process over real DDS, "
        "fed at --rgb-rate/--thermal-rate for --frames colour frames (stamps = now): "
        "end-to-end latency stamp -> fused frame received (p50/p90/p99), frames sent/"
        "received/dropped and the node's drop counters, node CPU and memory at start and "
        "end; bench_node.json and bench_node.md in --out.",
    )
    p.add_argument("mode", nargs="?", choices=("model", "node"), default="model",
                   help="model (default): the engine in this process; node: the ROS node")
    p.add_argument("--sizes", type=_sizes, default=_sizes("640x512,1280x1024"),
                   help="WIDTHxHEIGHT list (default 640x512,1280x1024)")
    p.add_argument("--devices", type=_names, default=None,
                   help="devices, e.g. cpu,cuda (default: cuda if present, else cpu)")
    p.add_argument("--precisions", type=_names, default=["fp32"],
                   help="fp32,fp16,bf16 (default fp32; fp16 is skipped on CPU)")
    p.add_argument("--tasks", type=_ints, default=[1],
                   help="task counts, e.g. 0,1,3 (0: plain fusion; default 1)")
    p.add_argument("--paths", type=_names, default=["eager", "fast"],
                   help=f"paths out of {','.join(PATHS)} (default eager,fast); compiled uses "
                   "torch.compile (minutes of compilation on CPU, CUDA graphs on CUDA)")
    p.add_argument("--embed-max-sides", type=_ints, default=[0, 160],
                   help="A2SI embedding sizes to measure, 0 = full (default 0,160)")
    p.add_argument("--iterations", type=int, default=5, help="measured frames per case")
    p.add_argument("--warmup", type=int, default=None,
                   help="unmeasured frames per case (default 1; node: colour frames, 5)")
    p.add_argument("--internal-scales", type=_floats, default=None,
                   help="engine internal_scale values (network at this fraction of the frame "
                   "size, prior at full size; needs a model with a prior, e.g. --model "
                   "models/cldyn_default.pt), e.g. 1,0.5,0.25 (default 1; node mode: the first, "
                   "default the model's own)")
    p.add_argument("--threads", type=_ints, default=None,
                   help="torch CPU threads (default: torch's); several, e.g. 1,2, make "
                   "threads a case axis (node mode: the first)")
    p.add_argument("--metrics", action="store_true", help="also time the fast fusion metrics")
    p.add_argument("--compile-backend", help="torch.compile backend of the compiled path "
                   "(default inductor; 'eager' only checks the plumbing, fast)")
    p.add_argument("--interleave", action="store_true",
                   help="measure the cases of each resolution/device/task count round-robin "
                   "(one frame each per round): fairer ratios on a machine whose load "
                   "changes; all engines are held at once")
    p.add_argument("--json", type=Path, help="write the full report here")
    p.add_argument("--markdown", type=Path, help="write the table here")
    p.add_argument("--plot", type=Path, help="model mode: PNG of ms per frame against the "
                   "internal scale, one line per frame size")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    node = p.add_argument_group("node mode (cldyn bench node)")
    node.add_argument("--frames", type=int, default=300, help="measured colour frames")
    node.add_argument("--size", type=lambda t: _sizes(t)[0], default=None,
                      help="WIDTHxHEIGHT of the frames (default 640x512; flood/soak 320x256)")
    node.add_argument("--rgb-rate", type=float, default=None,
                      help="colour rate, Hz (default 30; flood 200)")
    node.add_argument("--thermal-rate", type=float, default=None,
                      help="thermal rate, Hz (default 60; flood 200)")
    p.add_argument("--model", help="checkpoint (model mode default: a random-weight model of "
                   "the default architecture with RSC; node mode: the bundled default model)")
    add_option(node, "device")
    add_option(node, "precision")
    node.add_argument("--task", default="", help="node task (default: the node's)")
    node.add_argument("--qos", dest="qos_reliability", choices=RELIABILITIES,
                      default="best_effort", help="reliability of the node's image inputs "
                      "(its qos_overrides parameters) and of the benchmark's publishers "
                      "(default best_effort: sensor-data QoS)")
    node.add_argument("--out", type=Path, default=None,
                      help="folder for bench_node.json, bench_node.md and node.log (default "
                      "./bench_node; flood/soak: ./bench_node_flood, ./bench_node_soak; git "
                      "ignores bench_node*/)")
    node.add_argument("--load", choices=("stream", "flood", "soak"), default="stream",
                      help="stream (default): --frames colour frames from this process; "
                      "flood: both inputs at --rgb-rate/--thermal-rate (default 200 Hz) for "
                      "--seconds from a separate publisher process, with the engine alone "
                      "measured before and after (frames/s ratio, drops by cause, longest gap "
                      "between published frames, latency and RSS per --window); soak: the "
                      "same at camera rates (default 30/60 Hz) with the node's counters "
                      "checked (published + dropped = received)")
    node.add_argument("--seconds", type=float, default=60.0,
                      help="flood/soak duration (default 60)")
    node.add_argument("--window", type=float, default=10.0,
                      help="flood/soak: seconds per latency/RSS window (default 10)")
    node.add_argument("--engine-frames", type=int, default=20,
                      help="flood/soak: engine-alone frames before and after the node run "
                      "(default 20; 0 skips the comparison)")
    node.add_argument("--thermal-encoding", choices=("mono16", "mono8"), default="mono16",
                      help="flood/soak: thermal encoding (default mono16)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.mode == "node":
        return run_node(args)
    from ..tools.bench import format_table, run_model_bench, write_report

    args.warmup = 1 if args.warmup is None else args.warmup

    bad = [x for x in args.paths if x not in PATHS]
    if bad:
        raise ValueError(f"unknown path(s) {bad}; choose from {list(PATHS)}")
    if args.iterations < 1 or args.warmup < 0:
        raise ValueError("--iterations must be >= 1 and --warmup >= 0")
    devices = args.devices or (["cuda"] if torch.cuda.is_available() else ["cpu"])

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    from ..inference.engine import check_internal_scale

    internal_scales = args.internal_scales or [1.0]
    for scale in internal_scales:
        check_internal_scale(scale)
    loaded = None
    if args.model:
        from ..inference.checkpoint import load_checkpoint

        loaded = load_checkpoint(args.model)
    report = run_model_bench(
        loaded=loaded, internal_scales=internal_scales,
        resolutions=args.sizes, devices=devices, precisions=args.precisions,
        task_counts=args.tasks, paths=args.paths, embed_max_sides=args.embed_max_sides,
        iterations=args.iterations, warmup=args.warmup, threads=args.threads,
        with_metrics=args.metrics, log=log, compile_backend=args.compile_backend,
        interleave=args.interleave,
    )
    report["command"] = "cldyn bench " + " ".join(sys.argv[2:]) if len(sys.argv) > 1 else ""
    table = format_table(report)
    if args.json:
        write_report(report, args.json)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table + "\n")
    if args.plot:
        from ..offline.plots import plot_cost_curve

        plot_cost_curve(report, args.plot)
    print(table)
    print(json.dumps({"machine": report["machine"]}, default=str))
    return 0


def run_node(args: argparse.Namespace) -> int:
    from ..paths import default_model_path

    if args.load != "stream":
        return run_node_load(args)
    args.size = args.size or (512, 640)
    args.rgb_rate = 30.0 if args.rgb_rate is None else args.rgb_rate
    args.thermal_rate = 60.0 if args.thermal_rate is None else args.thermal_rate
    args.out = args.out or Path("bench_node")
    from ..ros.node_bench import NodeBenchSettings, format_node_table, run_node_bench

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    h, w = args.size
    settings = NodeBenchSettings(
        model=str(args.model or default_model_path()), frames=args.frames, height=h, width=w,
        rgb_rate=args.rgb_rate, thermal_rate=args.thermal_rate,
        warmup=5 if args.warmup is None else args.warmup, device=args.device,
        precision=args.precision, task=args.task,
        threads=args.threads[0] if args.threads else 0, qos=args.qos_reliability,
        internal_scale=args.internal_scales[0] if args.internal_scales else 0.0,
        out=str(args.out))
    report = run_node_bench(settings, log=log)
    lost = report["frames"]["dropped_elsewhere"]
    if settings.qos == "best_effort" and lost > report["frames"]["sent"] // 2:
        log(f"{lost} colour frames never reached the node: large best-effort frames overflow "
            "Fast DDS's default 512 KiB shared-memory segment of the publishing process; "
            "use config/fastdds_large_frames.xml (FASTDDS_DEFAULT_PROFILES_FILE) or --qos "
            "reliable")
    report["command"] = "cldyn bench " + " ".join(sys.argv[2:]) if len(sys.argv) > 1 else ""
    from ..tools.bench import write_report

    write_report(report, args.out / "bench_node.json")
    print(f"report and node log in {args.out.resolve()}", file=sys.stderr, flush=True)
    if args.json:
        write_report(report, args.json)
    table = format_node_table([report])
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table + "\n")
    print(table)
    print(json.dumps({"machine": report["machine"], "frames": report["frames"]}, default=str))
    return 0


def run_node_load(args: argparse.Namespace) -> int:
    from ..paths import default_model_path
    from ..ros.node_load import LoadSettings, format_load_report, run_load_bench
    from ..tools.bench import write_report

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    flood = args.load == "flood"
    # camera rates unless given; the flood's default is 200 Hz on both inputs
    rgb = args.rgb_rate if args.rgb_rate is not None else (200.0 if flood else 30.0)
    thermal = args.thermal_rate if args.thermal_rate is not None else (200.0 if flood else 60.0)
    h, w = args.size or (256, 320)
    out = args.out or Path(f"bench_node_{args.load}")
    settings = LoadSettings(
        model=str(args.model or default_model_path()), mode=args.load, seconds=args.seconds,
        height=h, width=w, rgb_rate=rgb, thermal_rate=thermal,
        thermal_encoding=args.thermal_encoding,
        device="cpu" if args.device == "auto" else args.device, precision=args.precision,
        threads=args.threads[0] if args.threads else 1, window_s=args.window, out=str(out),
        engine_frames=args.engine_frames, qos=args.qos_reliability,
        internal_scale=args.internal_scales[0] if args.internal_scales else 0.0)
    report = run_load_bench(settings, log=log)
    report["command"] = "cldyn bench " + " ".join(sys.argv[2:])
    write_report(report, out / f"bench_node_{args.load}.json")
    print(f"report and node log in {out.resolve()}", file=sys.stderr, flush=True)
    if args.json:
        write_report(report, args.json)
    text = format_load_report(report)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text + "\n")
    print(text)
    return 0
