"""``cldyn demo``: the fusion node live over DDS (default), or offline with ``--offline``.

Live (:mod:`cldyn_ros.ros.demo`): starts ``fusion_node``, plays a generated scene through it
(colour 30 Hz, thermal 60 Hz with stamp jitter), switches the task half-way by a service
call, records the outputs and writes contact_sheet.png, metrics.json and latency.md.
Offline: fuses generated pairs in this process for every task of the model and writes the
fused images, metrics.json and a contact sheet with the baselines; no ROS needed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tqdm import tqdm

from ..imaging.contact_sheet import save_contact_sheet
from ..imaging.io import write_image
from ..imaging.synthetic import generate_pairs, write_pairs
from ..metrics import FAST_METRICS, fusion_metrics
from ..offline.baselines import BASELINES
from .common import add_engine_args, engine_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the fusion node live on a generated scene (or --offline) and report",
        description="Live (default): start fusion_node, play a generated street scene through "
        "it over DDS (colour 30 Hz, 16-bit thermal 60 Hz with stamp jitter), switch the task "
        "half-way by a call of ~/select_task/<task> (a model without tasks: the thermal "
        "stretch, by ~/set_parameters), record the outputs and write contact_sheet.png, "
        "metrics.json and latency.md (plus the full replay report in replay/). Needs ROS 2. "
        "--offline: fuse generated pairs (warm people and vehicles; night, glare, fog, day) in "
        "this process for plain fusion and every task of the model, and write the inputs, "
        "fused images, metrics and a contact sheet with the baselines.",
    )
    p.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder")
    p.add_argument("--offline", action="store_true",
                   help="no node, no ROS: fuse generated pairs in this process")
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--seed", type=int, default=0)
    live = p.add_argument_group("live demo")
    live.add_argument("--seconds", type=float, default=6.0, help="length of the scene, s")
    live.add_argument("--switch-to", metavar="TASK",
                      help="task selected half-way (default: the model's first task)")
    live.add_argument("--jitter-ms", type=float, default=2.0, help="stamp jitter (std), ms")
    live.add_argument("--condition", default="night",
                      help="lighting of the scene: night, day, glare, fog")
    live.add_argument("--no-progress", action="store_true")
    offline = p.add_argument_group("offline demo")
    offline.add_argument("--pairs", type=int, default=8, help="number of generated pairs")
    add_engine_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_offline(args) if args.offline else run_live(args)


def run_live(args: argparse.Namespace) -> int:
    from ..ros.demo import DemoError, LiveDemoSettings, run_live_demo
    from .common import CLIError

    settings = LiveDemoSettings(
        out=args.out, model=args.model, seconds=args.seconds, height=args.height,
        width=args.width, jitter_ms=args.jitter_ms, condition=args.condition, seed=args.seed,
        switch_to=args.switch_to, threads=args.threads or 1, device=args.device,
        progress=not args.no_progress,
    )
    try:
        report = run_live_demo(settings)
    except DemoError as e:
        raise CLIError(str(e)) from None
    live, sw = report["live"], report["switch"]
    phases = report["phases"]
    print(f"demo: {sw['note']}: {'OK' if sw.get('success') else 'FAILED'} "
          f"({sw.get('message', 'no answer')})")
    print(f"demo: {live['pairs_received']} of {live['pairs_offline']} pairs came back fused "
          f"({live['pairs_dropped']} dropped under load); "
          + ", ".join(f"{k}: {v['frames']} frames, end-to-end latency p50 "
                      f"{_ms(v['latency_ms']['end_to_end_ms']['p50'])}" for k, v in phases.items()))
    for warning in report["warnings"]:
        if warning != sw["note"]:  # printed above
            print(f"demo: warning: {warning}")
    print(f"demo: {report['runtime_s']['total']:.1f} s; outputs in {args.out.resolve()}/ "
          f"(contact_sheet.png, metrics.json, latency.md, replay/)")
    # Failure: the switch was refused or nothing came back. Few (or no) frames after the
    # switch on a loaded machine are a warning in the report, not a failure.
    return 0 if sw.get("success") and live["pairs_received"] else 1


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} ms"


def run_offline(args: argparse.Namespace) -> int:
    if args.pairs < 1:
        raise ValueError("--pairs must be at least 1")
    engine = engine_from_args(args)
    pairs = generate_pairs(args.pairs, seed=args.seed, height=args.height, width=args.width)
    write_pairs(pairs, args.out)
    tasks = engine.task_names  # 'none' plus every task of the model
    rows, titles, metrics = [], [], {}
    for pair in tqdm(pairs, desc="demo", unit="pair"):
        result = engine.fuse(pair.ir, pair.vis, tasks)
        row = [pair.ir, pair.vis]
        for task in tasks:
            write_image(args.out / "fused" / task / f"{pair.name}.png", result.images[task])
            row.append(result.images[task])
        for fn in BASELINES.values():
            row.append(engine.render(fn(result.ir, result.vis_y), result.ycbcr)[0])
        scores = fusion_metrics(result.fused_y, result.ir.expand_as(result.fused_y),
                                result.vis_y.expand_as(result.fused_y), FAST_METRICS)
        metrics[pair.name] = {
            task: {k: round(float(v[i]), 4) for k, v in scores.items()}
            for i, task in enumerate(tasks)
        }
        rows.append(row)
        titles.append(pair.name)
    columns = ["thermal", "visible", *[f"CLDyN {t}" for t in tasks], *BASELINES]
    sheet = args.out / "contact_sheet.png"
    save_contact_sheet(sheet, rows, columns, titles)
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"demo: fused {len(pairs)} generated pairs for task(s) {', '.join(tasks)} "
          f"on {engine.device}")
    print(f"demo: outputs in {args.out.resolve()}/ (contact sheet: {sheet})")
    return 0

