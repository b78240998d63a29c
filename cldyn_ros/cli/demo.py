"""``cldyn demo``: fuse generated scenes with the shipped model and write a contact sheet."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tqdm import tqdm

from ..baselines import BASELINES
from ..imaging.contact_sheet import save_contact_sheet
from ..imaging.io import write_image
from ..imaging.synthetic import generate_pairs, write_pairs
from ..metrics import FAST_METRICS, fusion_metrics
from .common import add_engine_args, engine_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="fuse generated thermal/visible scenes and write a contact sheet",
        description="Generate synthetic scenes (warm people and vehicles; night, glare, fog, "
        "day), fuse them with the model for plain fusion and every task it carries, and "
        "write the inputs, fused images, metrics and a side-by-side contact sheet.",
    )
    p.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder")
    p.add_argument("--pairs", type=int, default=8, help="number of generated pairs")
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--seed", type=int, default=0)
    add_engine_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
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

