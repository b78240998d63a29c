"""``cldyn train vfn`` (stage 1, the fusion backbone) and ``cldyn train rsc`` (stage 2, the
closed loop against frozen task networks)."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from ..training.vfn import VFNTrainConfig, read_recipe, train_vfn, vfn_config

if TYPE_CHECKING:
    from ..training.rsc import RSCTrainConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the fusion backbone (vfn), the task-driven "
                       "compensation (rsc) or a downstream task network (task)")
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
        ("qabf-weight", float, "weight of the 1 - soft Q^AB/F edge-preservation term "
         "(default 0)"),
        ("ssim-weight", float, "weight of the 1 - SSIM term against both sources (default 0)"),
        ("anchor-weight", float, "weight of the low-frequency anchor to the VFN prior "
         "(default 0)"),
        ("val-fraction", float, "share of pairs held out for validation (default 0.1)"),
        ("seed", int, "random seed (default 0)"),
        ("max-minutes", float, "stop after this many minutes of training, saving state"),
        ("checkpoint-every", int, "steps between training-state saves (default 50)"),
        ("threads", int, "CPU threads"),
        ("internal-scale", float, "run the network at this fraction of the crop size, the "
         "prior and the loss at full size, as the engine's internal_scale (needs a prior; "
         "default 1)"),
    ):
        v.add_argument(f"--{name}", type=typ, help=text)
    v.add_argument("--qabf-border", choices=("valid", "zeros", "reflect"),
                   help="Sobel border of the Q^AB/F term (default valid: crop-interior pixels)")
    v.add_argument("--init", help="start from the weights of this checkpoint")
    v.add_argument("--prior", choices=("none", "max", "detail"),
                   help="VFN output: none = the fused image (the method, default); max / "
                   "detail = a correction of max(IR, Y) / of the multi-scale detail "
                   "selection, starting at it")
    v.add_argument("--scale-range", type=_float_pair, metavar="LOW,HIGH",
                   help="random zoom of each crop, e.g. 0.5,1.5 (default none)")
    v.add_argument("--augment", type=lambda text: tuple(t for t in text.split(",") if t),
                   metavar="NAMES", help="comma-separated of low_light, fog, thermal_noise, "
                   "gamma (default none)")
    v.add_argument("--augment-p", type=float, help="probability of each augmentation "
                   "(default 0.3)")
    v.add_argument("--device", help="cpu, cuda, ... (default cpu)")
    v.add_argument("--no-progress", action="store_true")
    v.set_defaults(func=run_vfn)
    _register_rsc(stages)
    _register_task(stages)


def _float_pair(text: str) -> tuple[float, float]:
    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH, got {text!r}")
    return float(parts[0]), float(parts[1])


def config_from_args(args: argparse.Namespace) -> VFNTrainConfig:
    known = {f.name for f in fields(VFNTrainConfig)}
    values: dict = {}
    if args.config:
        values.update(read_recipe(args.config))
    values.update({k: v for k, v in vars(args).items() if k in known and v is not None})
    missing = [k for k in ("ir_dir", "vi_dir", "out") if not values.get(k)]
    if missing:
        flags = ", ".join("--" + {"ir_dir": "ir", "vi_dir": "vi"}.get(k, k) for k in missing)
        raise ValueError(f"missing {flags} (on the command line or in --config)")
    return vfn_config(values)


def run_vfn(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    summary = train_vfn(config, progress=not args.no_progress)
    last = summary["history"][-1] if summary["history"] else {}
    print(f"trained {summary['steps']} steps in {summary['minutes']:.1f} min"
          + (f", last val loss {last['val_loss']:.4f}" if last else "")
          + f" -> {summary['out']}")
    return 0


RSC_HELP = """\
Train RSC (and the basis vector bank) with the VFN frozen against frozen task networks:
loss l_r + delta * l_p per task, one batch per task per step, per-task gradients combined by
the CAGrad min-norm solve, gradient clipping, Adam. Resumable: re-run the same command to
continue from <out>.state.pt. The final checkpoint holds the best step's weights and one
deployment vector per task (the mean adapter output over training batches).

The --tasks YAML file has a 'tasks:' list; each entry has name, network, data and optionally
val. Other top-level keys set defaults for the options below (underscores for dashes).

  tasks:
    - name: detection
      network: {adapter: yolo, weights: yolov5s_m3fd.pt}          # feature_layer optional
      data: {layout: m3fd, root: /data/M3FD, split: train.txt}
      val:  {layout: m3fd, root: /data/M3FD, split: val.txt}
    - name: segmentation
      network: {adapter: torchvision, arch: deeplabv3_resnet50, weights: fmb.pt,
                num_classes: 15}
      data: {layout: fmb, root: /data/FMB, split: train}
    - name: saliency
      network: {adapter: import, factory: mypkg.nets:build, weights: ctdnet.pt,
                feature_layer: refine, loss: bce, mean: [0.485, 0.456, 0.406],
                std: [0.229, 0.224, 0.225]}
      data: {layout: vt5000, root: /data/VT5000, split: Train}
    - name: warm_objects                                         # labels from the images
      network: {adapter: import, factory: cldyn_ros.training.task_networks:SmallSegNet,
                weights: warm.pt, feature_layer: body, loss: bce}
      data: {layout: self-supervised, labels: warm_objects, ir: ir/, vi: vi/,
             exclude: test_split.txt}

Relative paths are taken from the YAML file's folder.
"""


def _register_rsc(stages: argparse._SubParsersAction) -> None:
    r = stages.add_parser(
        "rsc",
        help="stage 2: closed-loop RSC training against frozen task networks",
        description=RSC_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("--tasks", type=Path, required=True, help="YAML file of tasks (and settings)")
    r.add_argument("--vfn", help="checkpoint with the trained VFN (e.g. runs/vfn_default.pt)")
    r.add_argument("--out", help="output checkpoint (.pt)")
    for name, typ, text in (
        ("steps", int, "training steps (default 2000)"),
        ("batch-size", int, "batch size per task (default 4)"),
        ("crop", int, "square crop size (default 256)"),
        ("lr", float, "Adam learning rate (default 1e-2)"),
        ("weight-decay", float, "Adam weight decay (default 1e-4)"),
        ("penalty", float, "delta, weight of the penalty term l_p (default 5; 0 = off)"),
        ("cagrad-c", float, "c of the CAGrad min-norm solve (default 0.5; 0 = averaging)"),
        ("clip", float, "gradient-norm clipping (default 1.0)"),
        ("eval-every", int, "steps between validations / best-checkpoint checks (default 100)"),
        ("checkpoint-every", int, "steps between training-state saves (default 50)"),
        ("fidelity-weight", float, "weight of the fidelity term: the VFN's own fusion loss "
         "on the compensated output (default 0 = off)"),
        ("vector-batches", int, "training batches per task averaged into the deployment "
         "vector (default 16)"),
        ("seed", int, "random seed (default 0)"),
        ("max-minutes", float, "stop after this many minutes of training, saving state"),
        ("threads", int, "CPU threads"),
        ("internal-scale", float, "run the network at this fraction of the crop size, the "
         "prior and the loss at full size, as the engine's internal_scale (needs a prior; "
         "default 1)"),
    ):
        r.add_argument(f"--{name}", type=typ, help=text)
    r.add_argument("--precision", choices=("fp32", "bf16"), help="default fp32")
    r.add_argument("--relative", action="store_true", default=None,
                   help="divide each task's loss and its fidelity term by their values on "
                   "the plain fusion of the batch (tasks of different loss scale weigh alike)")
    r.add_argument("--fresh-rsc", action="store_true", default=None,
                   help="start from a new RSC even if the --vfn checkpoint has one")
    r.add_argument("--device", help="cpu, cuda, ... (default cpu)")
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(func=run_rsc)


def rsc_config_from_args(args: argparse.Namespace) -> tuple[RSCTrainConfig, list]:
    from ..training.rsc import RSCTrainConfig  # noqa: PLC0415  (keeps 'cldyn --help' fast)

    data = yaml.safe_load(args.tasks.read_text()) or {}
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), list):
        raise ValueError(f"{args.tasks}: needs a 'tasks:' list")
    entries = data.pop("tasks")
    known = {f.name for f in fields(RSCTrainConfig)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown settings in {args.tasks}: {sorted(unknown)}")
    values = dict(data)
    values.update({k: v for k, v in vars(args).items() if k in known and v is not None})
    missing = [k for k in ("vfn", "out") if not values.get(k)]
    if missing:
        raise ValueError(f"missing {', '.join('--' + k for k in missing)} "
                         f"(on the command line or in {args.tasks})")
    return RSCTrainConfig(**values), entries


def run_rsc(args: argparse.Namespace) -> int:
    from ..training.rsc import tasks_from_spec, train_rsc  # noqa: PLC0415

    config, entries = rsc_config_from_args(args)
    try:
        tasks = tasks_from_spec(entries, args.tasks.resolve().parent)
    except ImportError as e:
        raise ValueError(str(e)) from e
    summary = train_rsc(config, tasks, progress=not args.no_progress)
    print(f"trained {summary['steps']} steps in {summary['minutes']:.1f} min "
          f"(best step {summary['best_step']}) -> {summary['out']}")
    for name, v in summary["validation"].items():
        print(f"  {name}: validation task loss {v['before']:.4f} -> {v['after']:.4f} "
              f"({100 * (v['ratio'] - 1):+.1f}%)")
    return 0


TASK_HELP = """\
Train a downstream task network (detection: Ultralytics YOLO; segmentation: torchvision
LRASPP; saliency: U2NETP) with random initial weights on images fused by --fusion-model
(task none), with labels from the stated rules of cldyn_ros.training.labels. Fused images
and labels are cached once under 'cache'. Resumable: the state is saved every
checkpoint_minutes to <out>.state.pt; re-run the same command to continue. Needs the
optional 'tasks' extra (make tasks).

The --config YAML file holds the settings (keys of TaskTrainConfig), e.g.

  task: detection
  out: runs/tasks/detection.pt
  ir_dir: ../shared/data/roadscene/ir
  vi_dir: ../shared/data/roadscene/vi
  exclude: ../shared/data/roadscene/test_split.txt
  network: {arch: yolov8n.yaml, num_classes: 3}
  size: [256, 320]
  steps: 2000
"""


def _register_task(stages: argparse._SubParsersAction) -> None:
    t = stages.add_parser(
        "task", help="train a downstream task network on fused images (needs make tasks)",
        description=TASK_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--config", type=Path, required=True, help="YAML file of settings")
    t.add_argument("--out", help="output weights (.pt); overrides the config")
    t.add_argument("--steps", type=int, help="training steps; overrides the config")
    t.add_argument("--max-minutes", type=float, help="stop after this many minutes, saving")
    t.add_argument("--threads", type=int, help="CPU threads (default 1)")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=run_task)


def run_task(args: argparse.Namespace) -> int:
    from ..training.task_train import TaskTrainConfig, train_task  # noqa: PLC0415

    values = yaml.safe_load(args.config.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{args.config}: expected a mapping of settings")
    known = {f.name for f in fields(TaskTrainConfig)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown settings in {args.config}: {sorted(unknown)}")
    for key in ("out", "steps", "max_minutes", "threads"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    missing = [k for k in ("task", "out") if not values.get(k)]
    if missing:
        raise ValueError(f"{args.config}: missing {', '.join(missing)}")
    try:
        summary = train_task(TaskTrainConfig(**values), progress=not args.no_progress)
    except ImportError as e:
        raise ValueError(str(e)) from e
    print(f"trained {summary['steps']} steps in {summary['minutes']:.1f} min "
          f"({summary['seconds_per_step']:.2f} s/step), best validation loss "
          f"{summary['best_val_loss']:.4f} at step {summary['best_step']} -> {summary['out']}")
    return 0
