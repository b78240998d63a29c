"""Task-level evaluation of the fusion (``cldyn eval tasks``).

For a folder of pairs with YOLO boxes (and optionally object masks), every pair is fused
with ``none`` and with each task vector of the model; the frozen task networks score each
fusion:

- detection (Ultralytics YOLO): mAP@0.5 and mAP@0.5:0.95 (COCO-style: per class, greedy
  matching by confidence, 101-point interpolated precision, mean over the classes that
  have ground truth) and the Ultralytics detection loss;
- segmentation: mIoU and cross-entropy; against object masks (``--masks``) the network's
  ``warm object`` class is scored as foreground against background (two-class mIoU),
  against rule labels all classes;
- saliency: mean F-beta (beta^2 = 0.3, adaptive threshold twice the mean saliency, images
  with an empty mask left out), MAE and the BCE + IoU loss;

plus the fusion metrics Q^AB/F, SSIM and EN of the fused luminance. Where a folder of boxes
or masks is not given, the labels come from the stated rules of
:mod:`cldyn_ros.training.labels` (computed from the source pair, as for training).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..imaging.io import find_pairs
from ..inference.checkpoint import LoadedModel
from ..metrics import fusion_metrics
from ..model import ycbcr_to_rgb
from ..model.color import fused_rgb
from ..offline.evaluation import load_pair

__all__ = [
    "FUSION_METRICS",
    "TaskEvalConfig",
    "average_precision",
    "evaluate_tasks",
    "mean_average_precision",
    "report_markdown",
    "saliency_scores",
]

FUSION_METRICS = ("Qabf", "SSIM", "EN")
IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
BETA2 = 0.3


# ---------------------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------------------


def _iou_xyxy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(2)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(1)
    return inter / np.maximum(area_a[:, None] + area_b[None] - inter, 1e-12)


def _yolo_to_xyxy(rows: np.ndarray) -> np.ndarray:
    cx, cy, w, h = rows[:, 1], rows[:, 2], rows[:, 3], rows[:, 4]
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)


def average_precision(tp: np.ndarray, conf: np.ndarray, n_true: int) -> float:
    """COCO-style AP: precision made monotone, sampled at 101 recall points."""
    if n_true == 0:
        return float("nan")
    if len(tp) == 0:
        return 0.0
    order = np.argsort(-conf, kind="stable")
    tps = np.cumsum(tp[order])
    fps = np.cumsum(1 - tp[order])
    recall = tps / n_true
    precision = tps / np.maximum(tps + fps, 1e-12)
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    points = np.linspace(0, 1, 101)
    idx = np.searchsorted(recall, points, side="left")
    sampled = np.where(idx < len(precision), precision[np.minimum(idx, len(precision) - 1)], 0)
    return float(sampled.mean())


def mean_average_precision(preds: Sequence[np.ndarray], truths: Sequence[np.ndarray],
                           iou_thresholds: Sequence[float] = IOU_THRESHOLDS
                           ) -> dict[str, float]:
    """mAP over images.

    Args:
        preds: per image ``(N, 6)`` ``x1 y1 x2 y2 conf cls`` (normalised coordinates).
        truths: per image ``(K, 5)`` YOLO rows ``cls cx cy w h`` (normalised).

    Returns:
        ``{"mAP50", "mAP50_95", "classes"}``; NaN where no image has a box.
    """
    classes = sorted({int(c) for t in truths for c in np.asarray(t).reshape(-1, 5)[:, 0]})
    if not classes:
        return {"mAP50": float("nan"), "mAP50_95": float("nan"), "classes": 0}
    per_threshold: dict[float, list[float]] = {t: [] for t in iou_thresholds}
    for c in classes:
        n_true = 0
        confs: list[np.ndarray] = []
        tps: dict[float, list[np.ndarray]] = {t: [] for t in iou_thresholds}
        for p, g in zip(preds, truths, strict=True):
            p = np.asarray(p, np.float64).reshape(-1, 6)
            g = np.asarray(g, np.float64).reshape(-1, 5)
            pc = p[p[:, 5] == c]
            pc = pc[np.argsort(-pc[:, 4], kind="stable")]
            gc = _yolo_to_xyxy(g[g[:, 0] == c])
            n_true += len(gc)
            confs.append(pc[:, 4])
            iou = _iou_xyxy(pc[:, :4], gc) if len(pc) and len(gc) else np.zeros((len(pc), 0))
            for t in iou_thresholds:
                used = np.zeros(len(gc), bool)
                tp = np.zeros(len(pc))
                for i in range(len(pc)):
                    if not len(gc):
                        break
                    cand = np.where(used, -1.0, iou[i])
                    j = int(cand.argmax())
                    if cand[j] >= t:
                        used[j] = True
                        tp[i] = 1
                tps[t].append(tp)
        conf = np.concatenate(confs) if confs else np.zeros(0)
        for t in iou_thresholds:
            per_threshold[t].append(average_precision(np.concatenate(tps[t]), conf, n_true))
    ap = {t: float(np.mean(v)) for t, v in per_threshold.items()}
    return {"mAP50": ap[iou_thresholds[0]], "mAP50_95": float(np.mean(list(ap.values()))),
            "classes": len(classes)}


def saliency_scores(prob: Tensor, mask: Tensor) -> tuple[float, float | None]:
    """``(MAE, F-beta)`` of one saliency map ``(H, W)`` in ``[0, 1]`` against a 0/1 mask;
    F-beta at the adaptive threshold ``min(2 mean(prob), 1)``, ``None`` for an empty mask."""
    mae = float((prob - mask).abs().mean())
    if float(mask.sum()) == 0:
        return mae, None
    thr = min(2.0 * float(prob.mean()), 1.0)
    pred = prob >= thr
    tp = float((pred & (mask > 0.5)).sum())
    precision = tp / max(float(pred.sum()), 1e-12)
    recall = tp / float(mask.sum())
    if precision + recall == 0:
        return mae, 0.0
    return mae, (1 + BETA2) * precision * recall / (BETA2 * precision + recall)


# ---------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------


@dataclass
class TaskEvalConfig:
    """What to evaluate: pair folders, label sources, networks and fusion settings."""

    ir_dir: Path
    vi_dir: Path
    boxes_dir: Path | None = None  # None: rule labels
    masks_dir: Path | None = None  # None: rule labels
    networks: dict[str, Path] = field(default_factory=dict)  # task -> weights file
    tasks: Sequence[str] | None = None  # task vectors (default: all of the model's)
    strength: float = 1.0
    names: set[str] | None = None
    limit: int | None = None


def _read_boxes(folder: Path, name: str) -> np.ndarray | None:
    path = folder / f"{name}.txt"
    if not path.exists():
        return None
    rows = [[float(v) for v in line.split()] for line in path.read_text().splitlines()
            if line.strip()]
    return np.asarray(rows, np.float32).reshape(-1, 5)


def _read_mask(folder: Path, name: str, shape: tuple[int, int]) -> np.ndarray | None:
    for ext in (".png", ".bmp", ".jpg"):
        path = folder / f"{name}{ext}"
        if path.exists():
            m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            if m is None:
                raise ValueError(f"cannot read mask {path}")
            if m.shape != shape:
                m = cv2.resize(m, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
            return (m > 127).astype(np.uint8)
    return None


class _Scorer:
    """Accumulates one task network's scores for one fusion."""

    def __init__(self, task: str) -> None:
        self.task = task
        self.losses: list[float] = []
        self.preds: list[np.ndarray] = []
        self.truths: list[np.ndarray] = []
        self.conf = np.zeros((0, 0), np.int64)
        self.mae: list[float] = []
        self.fbeta: list[float] = []

    def add_confusion(self, pred: np.ndarray, truth: np.ndarray, n: int) -> None:
        if self.conf.shape != (n, n):
            self.conf = np.zeros((n, n), np.int64)
        valid = truth < n
        self.conf += np.bincount(truth[valid] * n + pred[valid], minlength=n * n).reshape(n, n)

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {"loss": float(np.mean(self.losses)) if self.losses else None}
        if self.task == "detection":
            out.update(mean_average_precision(self.preds, self.truths))
        elif self.task == "segmentation":
            tp = np.diag(self.conf).astype(np.float64)
            union = self.conf.sum(0) + self.conf.sum(1) - tp
            ious = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
            out["mIoU"] = float(np.nanmean(ious)) if np.isfinite(ious).any() else None
            out["IoU"] = [None if math.isnan(v) else float(v) for v in ious]
        else:
            out["MAE"] = float(np.mean(self.mae)) if self.mae else None
            out["Fbeta"] = float(np.mean(self.fbeta)) if self.fbeta else None
            out["Fbeta_images"] = len(self.fbeta)
        return out


@torch.no_grad()
def evaluate_tasks(config: TaskEvalConfig, loaded: LoadedModel,
                   progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Fuse every pair with ``none`` and each task vector; score with the task networks.

    Returns the report (``rows``: fusion -> task -> scores, plus fusion metrics).
    """
    from .labels import detection_boxes, saliency_mask, segmentation_mask  # noqa: PLC0415
    from .task_networks import from_task_file  # noqa: PLC0415

    model = loaded.model.eval()
    vectors = loaded.task_vectors
    tasks = list(config.tasks) if config.tasks is not None else list(vectors)
    missing = [t for t in tasks if t not in vectors]
    if missing:
        raise ValueError(f"the model has no task vector {missing}; it has {sorted(vectors)}")
    nets = {}
    sizes: dict[str, tuple[int, int]] = {}
    for task, path in config.networks.items():
        if not Path(path).is_file():
            raise FileNotFoundError(f"no {task} network at {path} (train one with "
                                    f"`cldyn train task --config config/train_task_{task}.yaml`)")
        net = from_task_file(task, path)
        kind = net.description.get("task")
        if kind != task:
            raise ValueError(f"{path} is a {kind} network, not a {task} network")
        nets[task] = net
        meta_size = (torch.load(path, map_location="cpu", weights_only=True)
                     .get("metadata", {}).get("config", {}).get("size"))
        sizes[task] = (int(meta_size[0]), int(meta_size[1])) if meta_size else (256, 320)
    listing = find_pairs(config.ir_dir, config.vi_dir)
    pairs = [p for p in listing.pairs if config.names is None or p[0] in config.names]
    if config.limit:
        pairs = pairs[:config.limit]
    fusions = ["none", *tasks]
    scorers = {f: {t: _Scorer(t) for t in nets} for f in fusions}
    metric_sums = {f: dict.fromkeys(FUSION_METRICS, 0.0) for f in fusions}
    counts = {"pairs": 0, "skipped_no_boxes": 0}
    stacked = torch.stack([vectors[t] for t in tasks]) if tasks else None
    for k, (name, ir_file, vi_file) in enumerate(pairs):
        ir, ycbcr = load_pair(ir_file, vi_file)
        y = ycbcr[:, :1]
        rgb = ycbcr_to_rgb(ycbcr[:, :1], ycbcr[:, 1:2], ycbcr[:, 2:3]).clamp(0, 1)
        h, w = y.shape[-2:]
        ir_np, rgb_np = ir[0, 0].numpy(), rgb[0].permute(1, 2, 0).numpy()
        if config.boxes_dir is not None:
            boxes = _read_boxes(config.boxes_dir, name)
            if boxes is None:
                counts["skipped_no_boxes"] += 1
                continue
        else:
            boxes = detection_boxes(ir_np, rgb_np)
        mask = _read_mask(config.masks_dir, name, (h, w)) if config.masks_dir else None
        seg_rule = segmentation_mask(ir_np, rgb_np) if mask is None else None
        sal_rule = saliency_mask(ir_np, rgb_np) if mask is None else None
        counts["pairs"] += 1
        outs = {"none": model.vfn(ir, y)}
        if stacked is not None:
            comp = model.fuse_tasks(ir, y, stacked, strength=config.strength)
            outs.update({t: comp[i] for i, t in enumerate(tasks)})
        for fusion, fused_y in outs.items():
            fused_y = fused_y.clamp(0, 1)
            for name, v in fusion_metrics(fused_y, ir, y, FUSION_METRICS).items():
                metric_sums[fusion][name] += float(v[0])
            image = fused_rgb(fused_y, rgb)
            for task, net in nets.items():
                s = scorers[fusion][task]
                if task == "detection":
                    x = F.interpolate(image, size=sizes[task], mode="bilinear",
                                      align_corners=False)
                    out, _ = net.run(x)
                    target = {"batch_idx": torch.zeros(len(boxes)),
                              "cls": torch.from_numpy(boxes[:, :1]),
                              "bboxes": torch.from_numpy(boxes[:, 1:])}
                    s.losses.append(float(net.task_loss(out, target)))
                    s.preds.append(_yolo_predictions(out, sizes[task]))
                    s.truths.append(boxes)
                elif task == "segmentation":
                    out, _ = net.run(image)
                    logits = out["out"] if isinstance(out, Mapping) else out
                    pred = logits.argmax(1)[0].numpy()
                    if mask is not None:
                        truth = mask.astype(np.int64)
                        s.add_confusion((pred == 1).astype(np.int64), truth, 2)
                    else:
                        assert seg_rule is not None  # made wherever no mask is given
                        truth = seg_rule.astype(np.int64)
                        s.add_confusion(pred, truth, logits.shape[1])
                    s.losses.append(float(net.task_loss(
                        out, torch.from_numpy(truth)[None])))
                else:
                    out, _ = net.run(image)
                    sal = mask if mask is not None else sal_rule
                    assert sal is not None  # made wherever no mask is given
                    sal_truth = torch.from_numpy(sal.astype(np.float32))
                    prob = torch.sigmoid(out if isinstance(out, Tensor) else out[0])[0, 0]
                    mae, fb = saliency_scores(prob, sal_truth)
                    s.mae.append(mae)
                    if fb is not None:
                        s.fbeta.append(fb)
                    s.losses.append(float(net.task_loss(out, sal_truth[None, None])))
        if progress is not None:
            progress(k + 1, len(pairs))
    n = max(counts["pairs"], 1)
    rows = {}
    for fusion in fusions:
        rows[fusion] = {"fusion": {m: v / n for m, v in metric_sums[fusion].items()},
                        **{t: s.result() for t, s in scorers[fusion].items()}}
    return {
        "pairs": counts["pairs"], "skipped_no_boxes": counts["skipped_no_boxes"],
        "labels": {"boxes": str(config.boxes_dir) if config.boxes_dir else "rules",
                   "masks": str(config.masks_dir) if config.masks_dir else "rules"},
        "networks": {t: str(p) for t, p in config.networks.items()},
        "strength": config.strength, "fusions": fusions, "rows": rows,
    }


def _yolo_predictions(out: Any, size: tuple[int, int]) -> np.ndarray:
    """Ultralytics' NMS of an eval-mode output; ``(N, 6)`` normalised xyxy, conf, cls."""
    from ..tv_compat import import_optional  # noqa: PLC0415

    nms = import_optional("ultralytics.utils.nms")
    pred = out[0] if isinstance(out, tuple) else out
    det = nms.non_max_suppression(pred, conf_thres=0.001, iou_thres=0.7, max_det=300)[0]
    det = det.float().numpy().copy()
    det[:, [0, 2]] /= size[1]
    det[:, [1, 3]] /= size[0]
    return det[:, :6]


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}"


def report_markdown(report: Mapping[str, Any]) -> str:
    """The report as markdown tables (task scores, then task loss relative to ``none``)."""
    rows = report["rows"]
    tasks = [t for t in ("detection", "segmentation", "saliency") if t in rows["none"]]
    head = ["fusion"]
    if "detection" in tasks:
        head += ["det mAP@0.5", "det mAP@0.5:0.95", "det loss"]
    if "segmentation" in tasks:
        head += ["seg mIoU", "seg loss"]
    if "saliency" in tasks:
        head += ["sal F-beta", "sal MAE", "sal loss"]
    head += ["Q^AB/F", "SSIM", "EN"]
    lines = [f"Pairs: {report['pairs']} (boxes: {report['labels']['boxes']}, masks: "
             f"{report['labels']['masks']}; compensation strength {report['strength']})", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for fusion, r in rows.items():
        cells = [fusion]
        if "detection" in tasks:
            d = r["detection"]
            cells += [_fmt(d.get("mAP50")), _fmt(d.get("mAP50_95")), _fmt(d["loss"])]
        if "segmentation" in tasks:
            cells += [_fmt(r["segmentation"].get("mIoU")), _fmt(r["segmentation"]["loss"])]
        if "saliency" in tasks:
            s = r["saliency"]
            cells += [_fmt(s.get("Fbeta")), _fmt(s.get("MAE")), _fmt(s["loss"])]
        cells += [_fmt(r["fusion"]["Qabf"]), _fmt(r["fusion"]["SSIM"]),
                  _fmt(r["fusion"]["EN"], 3)]
        lines.append("| " + " | ".join(cells) + " |")
    if tasks and len(rows) > 1:
        lines += ["", "Task loss relative to `none` (own vector in bold):", "",
                  "| fusion | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
        for fusion, r in rows.items():
            cells = [fusion]
            for t in tasks:
                base = rows["none"][t]["loss"]
                v = r[t]["loss"]
                txt = "-" if base in (None, 0) or v is None else f"{v / base:.3f}"
                cells.append(f"**{txt}**" if fusion == t else txt)
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(report: Mapping[str, Any], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    js, md = out / "report.json", out / "report.md"
    js.write_text(json.dumps(report, indent=1, allow_nan=True))
    md.write_text("# Task evaluation\n\n" + report_markdown(report))
    return js, md
