"""``cldyn eval``: metric tables over folders of pairs and fused outputs (``images``),
offline evaluation of recorded bags (``bag``), the benchmark tables of
``docs/benchmarks.md`` (``suite``) and task-network scores per task vector (``tasks``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..imaging.io import PairListing, find_pairs
from ..metrics import METRIC_NAMES
from ..offline.baselines import BASELINES
from ..offline.evaluation import (
    ScoreCache,
    baseline_method,
    engine_method,
    evaluate,
    folder_method,
)
from ..streams.settings import add_option
from .common import add_engine_args, engine_from_args, parse_task


def parse_metrics(spec: str) -> list[str]:
    metrics = [m.strip() for m in spec.split(",") if m.strip()]
    unknown = sorted(set(metrics) - set(METRIC_NAMES))
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {list(METRIC_NAMES)}")
    return metrics


SUITE_SETS = ("vifb", "tno", "roadscene")
BEGIN_QUALITY = "<!-- BEGIN quality -->"
END_QUALITY = "<!-- END quality -->"
_SET_TITLES = {
    "vifb": "VIFB",
    "tno": "TNO",
    "roadscene": "RoadScene test split",
}
_SET_SOURCES = {
    "vifb": "VIFB (Zhang et al., CVPRW 2020); the other methods' fused images are the ones "
    "VIFB distributes, scored here with this project's metric code",
    "tno": "TNO Image Fusion Dataset (Toet), the subset used by CDDFuse",
    "roadscene": "RoadScene (Xu et al., FusionDN, AAAI 2020), the test pairs listed in "
    "roadscene/test_split.txt",
}


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

    b = kinds.add_parser(
        "bag",
        help="offline evaluation of a recorded bag (pairing, fusion per task, report)",
        description="Read a rosbag2 bag (sqlite3 or MCAP; no ROS needed), pair the thermal "
        "and colour frames with the fusion node's pairing code, fuse every pair for every "
        "task in one batched pass and write report.json, report.md, plots (metrics over "
        "time per task, latency per stage) and a contact sheet to --out.",
    )
    b.add_argument("bag", type=Path, help="bag folder (with metadata.yaml)")
    b.add_argument("--thermal-topic", default="/thermal/image",
                   help="thermal sensor_msgs/Image or CompressedImage topic (e.g. "
                   "/thermal/image_raw/compressed)")
    b.add_argument("--rgb-topic", default="/rgb/image",
                   help="colour sensor_msgs/Image or CompressedImage topic")
    b.add_argument("--tasks", default="none",
                   help="comma-separated tasks of the model ('none' = plain fusion)")
    b.add_argument("--out", type=Path, help="report folder (default: <bag>_eval)")
    b.add_argument("--write-bag", action="store_true",
                   help="also write <out>/fused_bag: the input bag plus /fused/<task>/image "
                   "(and /fused/<task>/camera_info where the colour camera_info is there)")
    b.add_argument("--rgb-camera-info", default="", metavar="TOPIC",
                   help="colour camera_info topic (default: the colour topic's sibling "
                   "<camera>/camera_info if the bag has it; 'none': ignore)")
    b.add_argument("--storage", choices=("mcap", "sqlite3"),
                   help="storage of the output bag (default: as the input)")
    for name in ("slop", "queue_size", "max_delay"):
        add_option(b, name)
    b.add_argument("--metrics", default=",".join(METRIC_NAMES),
                   help="comma-separated subset of metrics ('' for none)")
    b.add_argument("--batch-size", type=int, default=16, help="pairs scored per metric batch")
    b.add_argument("--no-progress", action="store_true")
    add_engine_args(b, per_image=False)  # a stream: smoothed like the node
    b.set_defaults(func=run_bag)

    q = kinds.add_parser(
        "suite",
        help="regenerate the quality tables of docs/benchmarks.md (VIFB, TNO, RoadScene)",
        description="Score this project's model, the two baselines and (VIFB) the outputs of "
        "the published methods in <data>/vifb/fused/<METHOD>/ with the same metric code, on "
        "VIFB, TNO and the RoadScene test split (<data>/roadscene/test_split.txt), and write "
        "the tables between '<!-- BEGIN quality -->' and '<!-- END quality -->' under "
        "'## Quality' in --out (the rest of the file is kept). Sets missing under --data are "
        "skipped with a note.",
    )
    q.add_argument("--data", type=Path, default=Path("../shared/data"),
                   help="folder with vifb/, tno/, roadscene/ (default ../shared/data)")
    q.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"),
                   help="markdown file to update (default docs/benchmarks.md)")
    q.add_argument("--sets", default=",".join(SUITE_SETS),
                   help=f"comma-separated subset of {','.join(SUITE_SETS)}")
    q.add_argument("--metrics", default=",".join(METRIC_NAMES),
                   help=f"comma-separated subset of {','.join(METRIC_NAMES)}")
    q.add_argument("--label", default="CLDyN (ours)", help="row label of this project's model")
    q.add_argument("--no-model", action="store_true", help="leave this project's model out")
    q.add_argument("--limit", type=int, help="only the first N pairs of each set (quick check)")
    q.add_argument("--batch-size", type=int, default=8, help="images scored per metric batch")
    q.add_argument("--json", type=Path, help="also write every table as JSON here")
    q.add_argument("--cache", type=Path, default=Path("runs/quality_cache.json"),
                   help="scores of the baselines and published methods are kept here and "
                   "reused while their files and the metric code are unchanged (default "
                   "runs/quality_cache.json)")
    q.add_argument("--no-cache", action="store_true", help="recompute every score")
    q.add_argument("--no-progress", action="store_true")
    add_engine_args(q)
    q.set_defaults(func=run_suite)
    _register_tasks(kinds)


#: Shipped task networks (``cldyn train task``), relative to the share directory.
TASK_NETWORK_FILES = {"detection": "models/task_detection.pt",
                      "segmentation": "models/task_segmentation.pt",
                      "saliency": "models/task_saliency.pt"}
TASK_FLAGS = {"detection": "--detector", "segmentation": "--segmenter",
              "saliency": "--saliency-net"}


def _register_tasks(kinds: argparse._SubParsersAction) -> None:
    t = kinds.add_parser(
        "tasks",
        help="task-network scores (mAP, mIoU, F-beta/MAE, task loss) and fusion metrics for "
        "none and each task vector (needs make tasks)",
        description="Fuse every pair with 'none' and with each task vector of the model, "
        "score the fusions with the task networks (detection mAP@0.5 and mAP@0.5:0.95, "
        "segmentation mIoU, saliency F-beta and MAE, and each network's task loss) and with "
        "Q^AB/F, SSIM and EN; write report.json and report.md to --out. Boxes: YOLO txt "
        "'cls cx cy w h' per pair (classes 0 person, 1 bicycle, 2 car); pairs without a "
        "box file are skipped. Masks: binary 0/255 PNG per pair (segmentation scores the "
        "'warm object' class against them). --boxes rules / --masks rules (the default for "
        "masks) use the label rules of cldyn_ros.training.labels instead.",
    )
    t.add_argument("--ir", type=Path, required=True, help="folder of infrared images")
    t.add_argument("--vi", type=Path, required=True, help="folder of visible images")
    t.add_argument("--boxes", required=True, metavar="DIR|rules",
                   help="folder of YOLO txt boxes, or 'rules'")
    t.add_argument("--masks", default="rules", metavar="DIR|rules",
                   help="folder of binary object masks, or 'rules' (default)")
    t.add_argument("--model", help="fusion checkpoint with task vectors (default: the model "
                   "shipped in models/)")
    for task, flag in TASK_FLAGS.items():
        t.add_argument(flag, dest=f"net_{task}", metavar="FILE",
                       help=f"{task} network from cldyn train task (default: "
                       f"{TASK_NETWORK_FILES[task]}; 'off' leaves it out)")
    t.add_argument("--tasks", help="comma-separated task vectors (default: all the model's)")
    t.add_argument("--strength", type=float, default=1.0, help="compensation strength")
    t.add_argument("--names", type=Path, help="text file: only pairs with these names")
    t.add_argument("--limit", type=int, help="only the first N pairs")
    t.add_argument("--threads", type=int, help="CPU threads")
    t.add_argument("--out", type=Path, required=True, help="folder for report.json/.md")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=run_tasks)


def run_tasks(args: argparse.Namespace) -> int:
    import torch  # noqa: PLC0415
    from tqdm import tqdm  # noqa: PLC0415

    from ..inference.checkpoint import load_checkpoint  # noqa: PLC0415
    from ..paths import default_model_path, find_share_file  # noqa: PLC0415
    from ..training.task_eval import TaskEvalConfig, evaluate_tasks, write_report  # noqa: PLC0415

    if args.threads:
        torch.set_num_threads(args.threads)
    networks = {}
    for task, default in TASK_NETWORK_FILES.items():
        value = getattr(args, f"net_{task}")
        if value == "off":
            continue
        if value is None:
            try:
                value = find_share_file(default)
            except FileNotFoundError as e:
                raise ValueError(f"no shipped {task} network ({default}): pass "
                                 f"{TASK_FLAGS[task]} FILE or 'off'") from e
        networks[task] = Path(value)
    if not networks:
        raise ValueError("every task network is off: nothing to score")
    model_path = Path(args.model) if args.model else default_model_path()
    loaded = load_checkpoint(model_path)
    names = set(args.names.read_text().split()) if args.names else None
    names = {Path(n).stem for n in names} if names else None
    config = TaskEvalConfig(
        ir_dir=args.ir, vi_dir=args.vi,
        boxes_dir=None if args.boxes == "rules" else Path(args.boxes),
        masks_dir=None if args.masks == "rules" else Path(args.masks),
        networks=networks,
        tasks=[t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None,
        strength=args.strength, names=names, limit=args.limit)
    for folder in (config.boxes_dir, config.masks_dir):
        if folder is not None and not folder.is_dir():
            raise ValueError(f"label folder {folder} does not exist")
    bar = tqdm(total=None, disable=args.no_progress, desc="eval tasks", unit="pair")

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        report = evaluate_tasks(config, loaded, progress)
    except ImportError as e:
        raise ValueError(str(e)) from e
    finally:
        bar.close()
    report["model"] = str(model_path)
    json_path, md_path = write_report(report, args.out)
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")
    return 0


def run_images(args: argparse.Namespace) -> int:
    listing = find_pairs(args.ir, args.vi)
    if args.names:
        wanted = {Path(n).stem for n in args.names.read_text().split()}
        listing = PairListing([p for p in listing.pairs if p[0] in wanted], [], [])
    if not listing.pairs:
        raise ValueError(f"no pairs to evaluate in '{args.ir}' and '{args.vi}'")
    metrics = parse_metrics(args.metrics)
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


def run_bag(args: argparse.Namespace) -> int:
    from ..offline.bag_eval import BagEvalSettings, evaluate_bag
    from ..offline.bags import bag_info, check_image_topics
    from .common import CLIError

    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    if not tasks or len(set(tasks)) != len(tasks):
        raise ValueError(f"--tasks wants distinct comma-separated task names, got "
                         f"'{args.tasks}'")
    settings = BagEvalSettings(
        thermal_topic=args.thermal_topic, rgb_topic=args.rgb_topic, tasks=tasks,
        slop=args.slop, queue_size=args.queue_size, max_delay=args.max_delay,
        metrics=tuple(parse_metrics(args.metrics)), batch_size=args.batch_size,
        write_bag=args.write_bag, storage=args.storage, progress=not args.no_progress,
        rgb_camera_info=None if args.rgb_camera_info == "none" else args.rgb_camera_info,
    )
    from ..streams.pairing import ApproximateTimePairer

    ApproximateTimePairer(args.slop, args.queue_size, args.max_delay)  # validates
    # Bag problems first: they are cheaper to find than loading a model.
    info = bag_info(args.bag)
    check_image_topics(info, [args.thermal_topic, args.rgb_topic])
    settings.camera_info_topic(info)
    engine = engine_from_args(args)
    for task in tasks:
        engine.request(task)
    out = args.out or args.bag.with_name(args.bag.name.rstrip("/") + "_eval")
    report = evaluate_bag(args.bag, engine, settings, out, model_label=args.model or "default")
    p = report["pairing"]
    print(f"{p['pairs']} pairs fused ({p['color_received']} colour, {p['thermal_received']} "
          f"thermal frames); report in {out}/report.md")
    for task, row in report["summary"].items():
        cells = ", ".join(f"{k} {v['mean']:.4g}" for k, v in row.items())
        print(f"  {task}: {cells}")
    for warning in report["warnings"]:
        print(f"warning: {warning}")
    if report["pairing"]["pairs"] == 0:
        raise CLIError(f"no frame pairs in {args.bag}: {report['warnings'][0]} (pairing "
                       f"statistics in {out}/report.md)")
    return 0


def _suite_listing(data: Path, name: str, limit: int | None) -> PairListing | None:
    root = data / name
    if not (root / "ir").is_dir() or not (root / "vi").is_dir():
        return None
    listing = find_pairs(root / "ir", root / "vi")
    if name == "roadscene":
        split = root / "test_split.txt"
        if not split.is_file():
            raise ValueError(f"{split} is missing: the RoadScene test split is undefined")
        wanted = {Path(n).stem for n in split.read_text().split()}
        listing = PairListing([p for p in listing.pairs if p[0] in wanted], [], [])
    if limit:
        listing = PairListing(listing.pairs[:limit], [], [])
    return listing


def run_suite(args: argparse.Namespace) -> int:
    import datetime
    import json

    from .. import __version__

    sets = [x.strip() for x in args.sets.split(",") if x.strip()]
    unknown = sorted(set(sets) - set(SUITE_SETS))
    if unknown or not sets:
        raise ValueError(f"unknown set(s) {unknown}; choose from {list(SUITE_SETS)}")
    metrics = parse_metrics(args.metrics)
    if not metrics:
        raise ValueError("--metrics names no metric")
    if not args.data.is_dir():
        raise ValueError(f"data folder '{args.data}' does not exist")
    engine = None if args.no_model else engine_from_args(args)
    cache = None if args.no_cache else ScoreCache(args.cache)
    sections: list[str] = []
    tables: dict[str, object] = {}
    for name in sets:
        listing = _suite_listing(args.data, name, args.limit)
        title = _SET_TITLES[name]
        if listing is None or not listing.pairs:
            sections.append(f"### {title}\n\nNot generated: no pairs in "
                            f"`{args.data / name}`.\n")
            continue
        methods = {}
        if engine is not None:
            methods[args.label] = engine_method(engine)
        methods.update({b: baseline_method(b) for b in BASELINES})
        cache_ids = {b: (f"baseline:{b}", _no_files) for b in BASELINES}
        peers: list[str] = []
        fused_root = args.data / name / "fused"
        if fused_root.is_dir():
            for folder in sorted(p for p in fused_root.iterdir() if p.is_dir()):
                methods[folder.name] = folder_method(folder)
                cache_ids[folder.name] = (f"folder:{folder.resolve()}", _files_of(folder))
                peers.append(folder.name)
        print(f"{title}: {len(listing.pairs)} pairs, {len(methods)} methods")
        table = evaluate(listing, methods, metrics, progress=not args.no_progress,
                         batch_size=args.batch_size, cache=cache, cache_ids=cache_ids)
        tables[name] = json.loads(table.to_json())
        head = f"### {title} ({len(listing.pairs)} pairs"
        head += f"; {len(peers)} published methods)" if peers else ")"
        notes = [f"Source: {_SET_SOURCES[name]}."]
        for method, errors in table.failures.items():
            notes.append(f"{method} failed on {len(errors)} pair(s), left out of its mean "
                         f"(e.g. {errors[0]}).")
        sections.append(head + "\n\n" + table.to_markdown(highlight=[args.label]) + "\n"
                        + "\n".join(notes) + "\n")

    model = "none (baselines and published methods only)"
    if engine is not None:
        meta = engine.loaded.metadata or {}
        model = f"`{args.model or 'models/cldyn_default.pt (shipped default)'}`"
        trained = meta.get("trained_on")
        if isinstance(trained, dict):
            trained = "; ".join(f"{k.replace('_', ' ')}: {v}" for k, v in trained.items())
        if trained:
            model += f", trained on {trained}"
    command = "cldyn eval suite --data " + str(args.data) + " --out " + str(args.out)
    if args.model:
        command += f" --model {args.model}"
    if args.sets != ",".join(SUITE_SETS):
        command += f" --sets {args.sets}"
    if args.limit:
        command += f" --limit {args.limit}"
    body = [
        f"Generated {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC by "
        f"cldyn_ros {__version__} with:",
        "",
        f"    {command}",
        "",
        f"Model: {model}; device {engine.device if engine else '-'}.",
        "",
        "Every row is scored by the same code (`cldyn_ros.metrics`) on the same pairs: "
        "luminance in [0, 1] (fused and visible images as BT.601 Y, fused images quantised to "
        "8 bits like any image file, the infrared image as the engine prepares it). Cells are "
        "mean ± standard deviation over the pairs, with the rank among the table's rows in "
        "brackets (1 = best; higher is better for every metric). EN and MI in bits, SD, SF "
        "and AG on 0-255 grey levels, PSNR in dB. Our row is in bold.",
        "",
        *sections,
    ]
    write_quality_section(args.out, "\n".join(body))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(tables, indent=1))
    if cache is not None:
        print(f"score cache {args.cache}: {cache.hits} reused, {cache.misses} computed")
    print(f"quality tables written to {args.out}")
    return 0


def _no_files(_name: str) -> list[Path]:
    return []


def _files_of(folder: Path):
    """Pair name -> the method's output file for it (what the cache key must watch)."""
    files = {p.stem: p for p in folder.iterdir() if p.is_file()}
    return lambda name: [files[name]] if name in files else []


def write_quality_section(path: Path, body: str) -> None:
    """Replace what lies between the quality markers of ``path`` (kept elsewhere as is);
    add a ``## Quality`` section with the markers if there is none, and create the file
    (with an empty ``## Speed`` section for the speed tables) if it does not exist."""
    block = f"{BEGIN_QUALITY}\n{body.rstrip()}\n{END_QUALITY}"
    if path.exists():
        text = path.read_text()
        start, end = text.find(BEGIN_QUALITY), text.find(END_QUALITY)
        if start >= 0 and end > start:
            text = text[:start] + block + text[end + len(END_QUALITY):]
        elif start >= 0 or end >= 0:
            raise ValueError(f"{path} has only one of the markers {BEGIN_QUALITY} and "
                             f"{END_QUALITY}: fix the file by hand")
        else:
            text = text.rstrip() + "\n\n## Quality\n\n" + block + "\n"
    else:
        text = ("# Benchmarks\n\n## Speed\n\nNot generated yet.\n\n## Quality\n\n"
                + block + "\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
