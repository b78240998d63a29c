"""Train the downstream task networks on fused images (``cldyn train task``).

The closed loop (``cldyn train rsc``) needs frozen task networks that were trained on what
the fusion model produces. This module trains three standard architectures, with random
initial weights (nothing is downloaded), on images fused by a given fusion model (task
``none``), with labels from :mod:`.labels` (pairs without human annotation):

- ``detection``: an Ultralytics YOLO (``yolov8n.yaml``) with Ultralytics' own detection
  loss, on whole frames resized to ``size`` (H, W), random horizontal flips;
- ``segmentation``: a torchvision segmentation network (``lraspp_mobilenet_v3_large``),
  cross-entropy over background / warm object / structure, on random crops;
- ``saliency``: U2NETP (:mod:`.sod`), BCE + IoU loss with deep supervision, on random
  crops.

Labels come from the rules (pairs from ``ir_dir`` / ``vi_dir``, the default) or, for
labelled data, from a published layout (``data`` / ``val``: the entries of
``cldyn train rsc``'s tasks files, e.g. ``{layout: m3fd, root: ..., split: train.txt}``,
``fmb``, ``vt5000``, ``msrs``, ``yolo``, ``masks``). Fused images and labels are computed once
and cached under ``cache`` (``fused/*.png``, ``boxes/*.txt``, ``seg/*.png``, ``sal/*.png``,
``train.txt``, ``val.txt``); the pairs of ``exclude`` (a test split) are never read.
Training is resumable: the state is saved every ``checkpoint_minutes`` to
``<out>.state.pt`` and re-running the same command continues; ``<out>.train.csv`` logs the
training and validation losses; the final weights (the best validation step) go to
``<out>`` with the metadata the adapters of ``cldyn train rsc`` need.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ..imaging.io import read_color, read_thermal
from ..imaging.thermal import ThermalNormalizer, thermal_to_unit
from ..inference.checkpoint import load_checkpoint
from ..model import rgb_to_ycbcr
from ..model.color import fused_rgb
from .datasets import read_pairs, split_items
from .history import write_history_csv
from .labels import LabelRules, detection_boxes, saliency_mask, segmentation_mask
from .task_files import (  # noqa: F401  (re-exported: the file format of this trainer)
    DEFAULT_NETWORKS,
    build_network,
    export_task_network,
    load_task_network,
    save_task_network,
)
from .task_networks import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "TASKS",
    "TaskTrainConfig",
    "build_cache",
    "build_network",
    "export_task_network",
    "load_task_network",
    "save_task_network",
    "train_task",
]

TASKS = ("detection", "segmentation", "saliency")


@dataclass
class TaskTrainConfig:
    """Settings of one task-network training run (stored with the weights)."""

    task: str
    out: str
    ir_dir: str | None = None  # unlabelled pairs with rule labels ...
    vi_dir: str | None = None
    data: dict[str, Any] | None = None  # ... or a labelled dataset (a tasks-file entry)
    val: dict[str, Any] | None = None  # its validation data (default: val_fraction of data)
    fusion_model: str = "models/cldyn_default.pt"
    exclude: str | None = None  # pair names never read (a test split)
    cache: str = "runs/tasks/cache"
    val_fraction: float = 0.1
    network: dict[str, Any] = field(default_factory=dict)
    size: tuple[int, int] = (256, 320)  # detection: (H, W) of the resized frames
    crop: int = 256  # segmentation / saliency: square crops
    scale_range: tuple[float, float] = (0.6, 1.0)  # crops: zoom out by up to this
    batch_size: int = 8
    steps: int = 2000
    lr: float = 1e-3
    weight_decay: float = 5e-4
    warmup: int = 100
    eval_every: int = 200
    checkpoint_minutes: float = 3.0
    max_minutes: float | None = None
    seed: int = 0
    threads: int | None = 1
    keep: str = "best"  # weights written: the best validation step's, or the last step's
    bn_batches: int = 32  # training batches that re-estimate batch-norm statistics at the end

    def __post_init__(self) -> None:
        if self.keep not in ("best", "last"):
            raise ValueError(f"keep must be 'best' or 'last', got '{self.keep}'")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got '{self.task}'")
        self.network = {**DEFAULT_NETWORKS[self.task], **dict(self.network)}
        self.size = (int(self.size[0]), int(self.size[1]))
        self.scale_range = (float(self.scale_range[0]), float(self.scale_range[1]))
        if self.task == "detection" and (self.size[0] % 32 or self.size[1] % 32):
            raise ValueError(f"detection size must be multiples of 32, got {self.size}")
        if (self.data is None) == (self.ir_dir is None or self.vi_dir is None):
            raise ValueError("give either ir_dir and vi_dir (rule labels) or data "
                             "(a labelled dataset), not both")


# ---------------------------------------------------------------------------------------
# Cache of fused images and rule labels
# ---------------------------------------------------------------------------------------


def _read_pair(ir_path: Path, vi_path: Path) -> tuple[np.ndarray, np.ndarray]:
    ir = thermal_to_unit(read_thermal(ir_path), ThermalNormalizer())
    rgb = read_color(vi_path).astype(np.float32) / 255.0
    h, w = rgb.shape[:2]
    if ir.shape != (h, w):
        ir = cv2.resize(ir, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.clip(ir, 0, 1).astype(np.float32), rgb


@torch.no_grad()
def fuse_rgb(model: nn.Module, ir: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """Plain fusion (task ``none``) rendered as the node renders it: uint8 RGB ``(H, W, 3)``."""

    ir_t = torch.from_numpy(ir)[None, None]
    rgb_t = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None]
    fused = model(ir_t, rgb_to_ycbcr(rgb_t)[:, :1])
    out = fused_rgb(fused, rgb_t)[0].permute(1, 2, 0).numpy()
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


def _write_cached(cache: Path, name: str, fused: np.ndarray, boxes: np.ndarray | None,
                  seg: np.ndarray | None, sal: np.ndarray | None) -> None:
    cv2.imwrite(str(cache / "fused" / f"{name}.png"), fused[..., ::-1])
    if boxes is not None:
        (cache / "boxes" / f"{name}.txt").write_text(
            "".join(f"{int(r[0])} {r[1]:.6f} {r[2]:.6f} {r[3]:.6f} {r[4]:.6f}\n" for r in boxes))
    if seg is not None:
        cv2.imwrite(str(cache / "seg" / f"{name}.png"), seg.astype(np.uint8))
    if sal is not None:
        cv2.imwrite(str(cache / "sal" / f"{name}.png"), (sal > 0).astype(np.uint8) * 255)
    (cache / "done" / name).touch()  # written last: the pair is complete


def _read_cached(path: Path, flags: int) -> np.ndarray:
    image = cv2.imread(str(path), flags)
    if image is None:
        raise ValueError(f"cannot read {path}: the cache is damaged (delete it to rebuild)")
    return image


def build_cache(config: TaskTrainConfig, rules: LabelRules | None = None,
                progress: bool = True) -> Path:
    """Fuse every training pair once and write its labels (skips what exists)."""
    rules = rules or LabelRules()
    cache = Path(config.cache)
    for sub in ("fused", "boxes", "seg", "sal", "done"):
        (cache / sub).mkdir(parents=True, exist_ok=True)
    exclude = set(Path(config.exclude).read_text().split()) if config.exclude else set()
    exclude = {Path(n).stem for n in exclude}
    meta: dict[str, Any] = {"fusion_model": str(config.fusion_model),
                            "exclude": config.exclude}
    datasets: dict[int, tuple[Any, int]] | None
    if config.data is None:
        if config.ir_dir is None or config.vi_dir is None:
            raise ValueError("the config needs ir_dir and vi_dir, or data")
        items = read_pairs(config.ir_dir, config.vi_dir, exclude=exclude)
        train, val = split_items(items, config.val_fraction, seed=0)
        meta.update({"ir_dir": config.ir_dir, "vi_dir": config.vi_dir,
                     "rules": asdict(rules)})
        datasets = None
    else:
        from .rsc import data_from_spec  # noqa: PLC0415

        base = Path(".")
        data = data_from_spec(config.data, base)
        data.items = [it for it in data.items if it.name not in exclude]
        if config.val:
            val_data = data_from_spec(config.val, base)
            val_data.items = [it for it in val_data.items if it.name not in exclude]
            train, val = list(data.items), list(val_data.items)
        else:
            val_data = data
            train, val = split_items(data.items, config.val_fraction, seed=0)
        clash = {it.name for it in train} & {it.name for it in val}
        if clash and config.val:
            raise ValueError(f"training and validation data share pairs: {sorted(clash)[:5]}")
        items = train + val
        datasets = {}
        for source in (data, val_data):
            for index, it in enumerate(source.items):
                datasets.setdefault(id(it), (source, index))
        meta.update({"data": config.data, "val": config.val})
    meta.update({"train": len(train), "val": len(val)})
    meta_path = cache / "meta.json"
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        if {k: old.get(k) for k in meta} != json.loads(json.dumps(meta)):
            raise ValueError(f"{cache} was built with other settings ({meta_path}); use "
                             "another cache folder or delete it")
    (cache / "train.txt").write_text("".join(it.name + "\n" for it in train))
    (cache / "val.txt").write_text("".join(it.name + "\n" for it in val))
    def done(name: str) -> bool:
        # rule-label caches written before the done/ markers: the saliency mask came last
        return (cache / "done" / name).exists() or (
            datasets is None and (cache / "sal" / f"{name}.png").exists())

    todo = [it for it in items if not done(it.name)]
    if todo:
        model = load_checkpoint(config.fusion_model).model.eval()
        for it in tqdm(todo, desc="fuse + label", disable=not progress, unit="pair"):
            if datasets is None:
                ir, rgb = _read_pair(it.ir, it.vis)
                _write_cached(cache, it.name, fuse_rgb(model, ir, rgb),
                              detection_boxes(ir, rgb, rules), segmentation_mask(ir, rgb, rules),
                              saliency_mask(ir, rgb, rules))
                continue
            source, index = datasets[id(it)]
            ir_t, rgb_t, label = source.load(index)
            ir, rgb = ir_t[0].numpy(), rgb_t.permute(1, 2, 0).numpy()
            fused = fuse_rgb(model, ir, rgb)
            if source.kind == "boxes":
                _write_cached(cache, it.name, fused, label.numpy(), None, None)
            elif config.task == "saliency":
                _write_cached(cache, it.name, fused, None, None, label[0].numpy())
            else:
                _write_cached(cache, it.name, fused, None, label[0].numpy(), None)
    meta_path.write_text(json.dumps(meta, indent=1))
    return cache


@dataclass
class CachedSet:
    """Fused frames (uint8 ``(3, H, W)``) with their labels, held in memory."""

    names: list[str]
    images: list[Tensor]
    labels: list[Any]

    @classmethod
    def load(cls, cache: Path, split: str, task: str) -> CachedSet:
        names = (cache / f"{split}.txt").read_text().split()
        images, labels = [], []
        for n in names:
            bgr = _read_cached(cache / "fused" / f"{n}.png", cv2.IMREAD_COLOR)
            rgb = bgr[..., ::-1]
            images.append(torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1))
            if task == "detection":
                rows = [[float(v) for v in line.split()]
                        for line in (cache / "boxes" / f"{n}.txt").read_text().splitlines()
                        if line.strip()]
                labels.append(torch.tensor(rows, dtype=torch.float32).reshape(-1, 5))
            else:
                sub = "seg" if task == "segmentation" else "sal"
                m = _read_cached(cache / sub / f"{n}.png", cv2.IMREAD_GRAYSCALE)
                if task == "saliency":
                    m = (m > 127).astype(np.uint8)
                labels.append(torch.from_numpy(m))
        return cls(names, images, labels)


def detection_batch(images: Sequence[Tensor], boxes: Sequence[Tensor], size: tuple[int, int],
                    flips: Sequence[bool]) -> tuple[Tensor, dict[str, Tensor]]:
    """Frames resized to ``size`` in ``[0, 1]`` and targets in the Ultralytics batch layout
    (``batch_idx``, ``cls`` ``(K, 1)``, ``bboxes`` ``(K, 4)`` normalised xywh)."""
    imgs, idx, cls, bxs = [], [], [], []
    for i, (img, b, flip) in enumerate(zip(images, boxes, flips, strict=True)):
        x = F.interpolate(img[None].float() / 255.0, size=size, mode="bilinear",
                          align_corners=False)[0]
        b = b.clone()
        if flip:
            x = x.flip(-1)
            b[:, 1] = 1.0 - b[:, 1]
        imgs.append(x)
        idx.append(torch.full((len(b),), float(i)))
        cls.append(b[:, :1])
        bxs.append(b[:, 1:])
    return torch.stack(imgs), {"batch_idx": torch.cat(idx), "cls": torch.cat(cls),
                               "bboxes": torch.cat(bxs)}


def mask_batch(images: Sequence[Tensor], masks: Sequence[Tensor], crop: int,
               scale_range: tuple[float, float], generator: torch.Generator
               ) -> tuple[Tensor, Tensor]:
    """Random crops (zoomed out by a random factor in ``scale_range``), resized to
    ``crop x crop``, random flips: images ``(B, 3, crop, crop)`` in ``[0, 1]``, masks
    ``(B, crop, crop)`` int64."""
    xs, ys = [], []
    for img, m in zip(images, masks, strict=True):
        h, w = img.shape[-2:]
        lo, hi = scale_range
        scale = lo + (hi - lo) * float(torch.rand(1, generator=generator))
        side = min(int(round(crop / max(scale, 1e-3))), h, w)
        top = int(torch.randint(h - side + 1, (1,), generator=generator))
        left = int(torch.randint(w - side + 1, (1,), generator=generator))
        x = img[:, top:top + side, left:left + side].float()[None] / 255.0
        y = m[top:top + side, left:left + side].float()[None, None]
        x = F.interpolate(x, size=(crop, crop), mode="bilinear", align_corners=False)[0]
        y = F.interpolate(y, size=(crop, crop), mode="nearest")[0, 0]
        if bool(torch.rand(1, generator=generator) < 0.5):
            x, y = x.flip(-1), y.flip(-1)
        xs.append(x)
        ys.append(y.long())
    return torch.stack(xs), torch.stack(ys)


# ---------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------


def _normalise(x: Tensor) -> Tensor:
    mean = torch.as_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.as_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def task_loss(task: str, model: Any, x: Tensor, target: Any) -> Tensor:
    """Training loss of ``model`` on fused RGB ``x`` in ``[0, 1]`` (train or eval mode)."""
    if task == "detection":
        if getattr(model, "criterion", None) is None:
            model.criterion = model.init_criterion()
        out = model(x)
        preds = out[1] if isinstance(out, tuple) else out
        total, _ = model.criterion(preds, target)
        return total.sum() / x.shape[0]  # Ultralytics scales its loss by the batch size
    if task == "segmentation":
        out = model(_normalise(x))["out"]
        return F.cross_entropy(out, target, ignore_index=255)
    from .sod import sod_deep_loss  # noqa: PLC0415

    return sod_deep_loss(model(_normalise(x)), target[:, None].float())


# ---------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------


def _lr_factor(step: int, elapsed: float, config: TaskTrainConfig) -> float:
    """Linear warm-up, then cosine decay to 5% over the run; the run's progress is the
    larger of the step share and, with ``max_minutes``, the time share, so a run that its
    time budget ends still finishes its schedule."""
    if step < config.warmup:
        return (step + 1) / config.warmup
    t = (step - config.warmup) / max(config.steps - config.warmup, 1)
    if config.max_minutes:
        t = max(t, elapsed / (config.max_minutes * 60.0))
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))


def _batch(config: TaskTrainConfig, data: CachedSet, picks: Sequence[int],
           generator: torch.Generator, train: bool) -> tuple[Tensor, Any]:
    images = [data.images[i] for i in picks]
    labels = [data.labels[i] for i in picks]
    if config.task == "detection":
        flips = [bool(torch.rand(1, generator=generator) < 0.5) if train else False
                 for _ in picks]
        return detection_batch(images, labels, config.size, flips)
    return mask_batch(images, labels, config.crop,
                      config.scale_range if train else (1.0, 1.0), generator)


@torch.no_grad()
def recalibrate_batch_norm(config: TaskTrainConfig, model: nn.Module, train: CachedSet,
                           batches: int) -> None:
    """Re-estimate every batch norm's running statistics as the plain average over
    ``batches`` training batches (no weight changes). Short runs need it: torchvision's
    MobileNetV3 updates its statistics with momentum 0.01, so after a few hundred steps they
    still lag behind the weights and eval-mode outputs degenerate."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or batches <= 0:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    gen = torch.Generator().manual_seed(4321)
    model.train()
    for _ in range(batches):
        picks = torch.randint(len(train.names), (config.batch_size,), generator=gen).tolist()
        x, _ = _batch(config, train, picks, gen, train=True)
        model(x if config.task == "detection" else _normalise(x))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.eval()


@torch.no_grad()
def validation_loss(config: TaskTrainConfig, model: nn.Module, val: CachedSet) -> float:
    """Mean loss over the validation pairs (eval mode, fixed crops, no flips)."""
    model.eval()
    gen = torch.Generator().manual_seed(1234)
    total, n = 0.0, 0
    for i in range(len(val.names)):
        x, t = _batch(config, val, [i], gen, train=False)
        total += float(task_loss(config.task, model, x, t))
        n += 1
    model.train()
    return total / max(n, 1)


def _metadata(config: TaskTrainConfig, summary: dict[str, Any]) -> dict[str, Any]:
    return {"task": config.task, "network": config.network, "config": asdict(config),
            **summary}


def train_task(config: TaskTrainConfig, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) one task-network training; returns a summary."""
    if config.threads:
        torch.set_num_threads(config.threads)
    cache = build_cache(config, progress=progress)
    train = CachedSet.load(cache, "train", config.task)
    val = CachedSet.load(cache, "val", config.task)
    torch.manual_seed(config.seed)
    model = build_network(config.task, config.network)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state_path = out.with_name(out.name + ".state.pt")
    log_path = out.with_name(out.stem + ".train.csv")
    step, elapsed, history = 0, 0.0, []
    best: dict[str, Any] = {"val_loss": math.inf, "step": 0, "state": None}
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state.get("task") != config.task:
            raise ValueError(f"{state_path} belongs to task '{state.get('task')}'")
        model.load_state_dict(state["model"])
        optim.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        step, elapsed, history, best = (state["step"], state["elapsed"],
                                        list(state["history"]), dict(state["best"]))

    def save_state() -> None:
        tmp = state_path.with_name(state_path.name + ".tmp")
        torch.save({"task": config.task, "model": model.state_dict(),
                    "optimizer": optim.state_dict(), "generator": generator.get_state(),
                    "step": step, "elapsed": elapsed, "history": history, "best": best}, tmp)
        tmp.replace(state_path)

    budget = None if config.max_minutes is None else config.max_minutes * 60.0
    bar = tqdm(total=config.steps, initial=step, disable=not progress,
               desc=f"train {config.task}", unit="step")
    running, since, last_save = 0.0, 0, time.monotonic()
    while step < config.steps and (budget is None or elapsed < budget):
        t0 = time.perf_counter()
        for g in optim.param_groups:
            g["lr"] = config.lr * _lr_factor(step, elapsed, config)
        picks = torch.randint(len(train.names), (config.batch_size,),
                              generator=generator).tolist()
        x, target = _batch(config, train, picks, generator, train=True)
        loss = task_loss(config.task, model, x, target)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        optim.step()
        step += 1
        elapsed += time.perf_counter() - t0
        running += float(loss.detach())
        since += 1
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}", s_per_step=f"{elapsed / step:.2f}"
                        if step else "")
        done = step >= config.steps or (budget is not None and elapsed >= budget)
        if step % config.eval_every == 0 or done:
            v = validation_loss(config, model, val)
            row = {"step": step, "minutes": round(elapsed / 60.0, 2),
                   "train_loss": running / since, "val_loss": v,
                   "lr": optim.param_groups[0]["lr"]}
            running, since = 0.0, 0
            history.append(row)
            write_history_csv(log_path, history)
            if v < best["val_loss"]:
                best = {"val_loss": v, "step": step,
                        "state": {k: t.detach().clone() for k, t in model.state_dict().items()}}
            bar.write(f"step {step}: train {row['train_loss']:.4f} val {v:.4f} "
                      f"(best {best['val_loss']:.4f} at {best['step']})")
        if done or time.monotonic() - last_save >= config.checkpoint_minutes * 60.0:
            save_state()
            last_save = time.monotonic()
    bar.close()
    save_state()
    if config.keep == "best" and best["state"] is not None:
        model.load_state_dict(best["state"])
    recalibrate_batch_norm(config, model, train, config.bn_batches)
    final_val = validation_loss(config, model, val)
    weights = model.state_dict()
    summary = {"steps": step, "kept": config.keep,
               "kept_step": best["step"] if config.keep == "best" else step,
               "bn_recalibration_batches": config.bn_batches,
               "final_val_loss": final_val, "minutes": round(elapsed / 60.0, 1),
               "seconds_per_step": elapsed / max(step, 1), "best_step": best["step"],
               "best_val_loss": best["val_loss"], "train_pairs": len(train.names),
               "val_pairs": len(val.names), "cache": str(cache),
               "history": history[-5:]}
    save_task_network(out, config.task, config.network, weights,
                      _metadata(config, summary))
    return {**summary, "out": str(out)}
