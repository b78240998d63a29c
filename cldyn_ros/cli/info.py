"""``cldyn info``: architecture, parameter counts, tasks and provenance of a checkpoint."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..inference.checkpoint import NO_TASK, load_checkpoint
from ..model import count_parameters
from ..paths import default_model_path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe a model checkpoint",
                       description="Show the architecture, parameter counts (VFN, RSC, total), "
                       "task names and provenance of a checkpoint.")
    p.add_argument("--model", type=Path, help="checkpoint (default: the shipped model)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run)


def describe(path: Path) -> dict[str, Any]:
    loaded = load_checkpoint(path)
    model = loaded.model
    vfn, rsc = count_parameters(model.vfn), count_parameters(model.rsc)
    return {
        "path": str(path),
        "architecture": model.config.to_dict(),
        "parameters": {"vfn": vfn, "rsc": rsc, "total": vfn + rsc},
        "tasks": [NO_TASK, *loaded.task_names],
        "metadata": loaded.metadata,
    }


def run(args: argparse.Namespace) -> int:
    info = describe(args.model or default_model_path())
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    p = info["parameters"]
    print(f"model:       {info['path']}")
    arch = ", ".join(f"{k}={v}" for k, v in info["architecture"].items())
    print(f"arch:        {arch}")
    print(f"parameters:  VFN {p['vfn']:,}  RSC {p['rsc']:,}  total {p['total']:,}")
    print(f"tasks:       {', '.join(info['tasks'])}")
    meta = info["metadata"]
    if "created" in meta:
        print(f"created:     {meta['created']}")
    if "trained_on" in meta:
        print(f"trained on:  {json.dumps(meta['trained_on'], default=str)}")
    training = meta.get("training", {})
    if training:
        keys = ("stage", "steps", "minutes", "crop", "batch_size", "lr")
        print("training:    " + ", ".join(f"{k}={training[k]}" for k in keys if k in training))
    return 0
