"""``cldyn eval images``: metric tables over folders of pairs and fused outputs."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..baselines import BASELINES
from ..evaluation import baseline_method, engine_method, evaluate, folder_method
from ..imaging.io import PairListing, find_pairs
from ..metrics import METRIC_NAMES
from .common import add_engine_args, engine_from_args, parse_task


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate fusion quality (metric tables)")
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    i = kinds.add_parser(
        "images",
        help="metric table for folders of pairs and fused outputs",
        description="Score fused-output folders (NAME=DIR, files named like the pairs), the "
        "two simple baselines and, unless --no-model, this project's model, on the same "
        "pairs with the same metric code. Writes table.md, table.csv and table.json.",
    )
    i.add_argument("--ir", type=Path, required=True, help="folder of infrared images")
    i.add_argument("--vi", type=Path, required=True, help="folder of visible images")
    i.add_argument("--fused", action="append", default=[], metavar="NAME=DIR",
                   help="a method's fused outputs (repeatable)")
    i.add_argument("--names", type=Path, help="text file: only pairs with these names")
    i.add_argument("--metrics", default=",".join(METRIC_NAMES),
                   help=f"comma-separated subset of {','.join(METRIC_NAMES)}")
    i.add_argument("--no-model", action="store_true", help="leave this project's model out")
    i.add_argument("--no-baselines", action="store_true", help="leave the baselines out")
    i.add_argument("--label", default="CLDyN (ours)", help="row label of this project's model")
    i.add_argument("--task", default="none", help="task (or blend) for this project's model")
    i.add_argument("--out", type=Path, help="folder for table.md/.csv/.json")
    i.add_argument("--no-progress", action="store_true")
    add_engine_args(i)
    i.set_defaults(func=run_images)


def run_images(args: argparse.Namespace) -> int:
    listing = find_pairs(args.ir, args.vi)
    if args.names:
        wanted = {Path(n).stem for n in args.names.read_text().split()}
        listing = PairListing([p for p in listing.pairs if p[0] in wanted], [], [])
    if not listing.pairs:
        raise ValueError(f"no pairs to evaluate in '{args.ir}' and '{args.vi}'")
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    unknown = sorted(set(metrics) - set(METRIC_NAMES))
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {list(METRIC_NAMES)}")
    methods = {}
    if not args.no_model:
        engine = engine_from_args(args)
        methods[args.label] = engine_method(engine, engine.request(parse_task(args.task)))
    if not args.no_baselines:
        methods.update({b: baseline_method(b) for b in BASELINES})
    for spec in args.fused:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not Path(folder).is_dir():
            raise ValueError(f"--fused wants NAME=DIR with an existing folder, got '{spec}'")
        methods[name] = folder_method(Path(folder))
    if not methods:
        raise ValueError("nothing to evaluate: give --fused folders or keep the model/baselines")
    table = evaluate(listing, methods, metrics, progress=not args.no_progress)
    markdown = table.to_markdown(highlight=[args.label])
    print(markdown)
    for method, errors in table.failures.items():
        print(f"warning: {method} failed on {len(errors)} pair(s), e.g. {errors[0]}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "table.md").write_text(markdown)
        (args.out / "table.csv").write_text(table.to_csv())
        (args.out / "table.json").write_text(table.to_json())
        print(f"tables written to {args.out}/ (table.md, table.csv, table.json)")
    return 0
