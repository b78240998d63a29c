"""``cldyn train vfn``: stage-1 training of the fusion backbone."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

import yaml

from ..training.vfn import VFNTrainConfig, train_vfn


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the fusion backbone (vfn)")
    stages = p.add_subparsers(dest="stage", metavar="STAGE", required=True)
    v = stages.add_parser(
        "vfn",
        help="stage 1: unsupervised VFN training on image pairs",
        description="Train the VFN on infrared-visible pairs (random crops, flips, 90-degree "
        "rotations, Adam). Resumable: re-run the same command to continue from "
        "<out>.state.pt. A config file (YAML, keys as the long options with underscores) "
        "sets defaults; options given on the command line win.",
    )
    v.add_argument("--config", type=Path, help="YAML file of settings")
    v.add_argument("--ir", dest="ir_dir", help="folder of infrared images")
    v.add_argument("--vi", dest="vi_dir", help="folder of visible images")
    v.add_argument("--out", help="output checkpoint (.pt)")
    v.add_argument("--exclude", help="text file of pair names never to train on (test split)")
    for name, typ, text in (
        ("epochs", int, "epochs (default 100)"),
        ("batch-size", int, "batch size (default 16)"),
        ("crop", int, "square crop size (default 256)"),
        ("resize", int, "resize pairs to N x N before cropping, 0 keeps sizes (default 512)"),
        ("lr", float, "Adam learning rate (default 1e-3)"),
        ("intensity-weight", float, "weight of the intensity term (default 0.2)"),
        ("gradient-weight", float, "weight of the gradient term (default 1.0)"),
        ("val-fraction", float, "share of pairs held out for validation (default 0.1)"),
        ("seed", int, "random seed (default 0)"),
        ("max-minutes", float, "stop after this many minutes of training, saving state"),
        ("checkpoint-every", int, "steps between training-state saves (default 50)"),
        ("threads", int, "CPU threads"),
    ):
        v.add_argument(f"--{name}", type=typ, help=text)
    v.add_argument("--device", help="cpu, cuda, ... (default cpu)")
    v.add_argument("--no-progress", action="store_true")
    v.set_defaults(func=run_vfn)


def config_from_args(args: argparse.Namespace) -> VFNTrainConfig:
    known = {f.name for f in fields(VFNTrainConfig)}
    values: dict = {}
    if args.config:
        data = yaml.safe_load(args.config.read_text()) or {}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown settings in {args.config}: {sorted(unknown)}")
        values.update(data)
    values.update({k: v for k, v in vars(args).items() if k in known and v is not None})
    missing = [k for k in ("ir_dir", "vi_dir", "out") if not values.get(k)]
    if missing:
        flags = ", ".join("--" + {"ir_dir": "ir", "vi_dir": "vi"}.get(k, k) for k in missing)
        raise ValueError(f"missing {flags} (on the command line or in --config)")
    if values.get("resize") == 0:
        values["resize"] = None
    return VFNTrainConfig(**values)


def run_vfn(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    summary = train_vfn(config, progress=not args.no_progress)
    last = summary["history"][-1] if summary["history"] else {}
    print(f"trained {summary['steps']} steps in {summary['minutes']:.1f} min"
          + (f", last val loss {last['val_loss']:.4f}" if last else "")
          + f" -> {summary['out']}")
    return 0
