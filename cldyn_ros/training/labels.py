"""Labels by stated rules for pairs without human annotation, and how good they are.

No detection, segmentation or saliency labels exist for RoadScene, TNO or VIFB. The rules
below derive them from the images themselves; :func:`score_rules` measures each rule
against real human labels (the MSRS boxes and object masks) so the model cards can say how
good the labels are. The rules' settings are fixed a priori from the camera physics and the
RoadScene training pairs, never from the pairs they are scored on.

Rules (inputs: infrared ``(H, W)`` and visible RGB ``(H, W, 3)``, float in ``[0, 1]``):

- **warm regions** (:func:`warm_regions`): the infrared frame stretched between its 1st and
  99.5th percentile, lightly smoothed; pixels at least ``contrast`` above a wide Gaussian
  background *and* above the frame's ``level`` percentile; a 3x3 opening and a 5x5 closing;
  connected regions between ``min_area`` and ``max_area`` (shares of the frame) whose
  pixels fill at least ``min_fill`` of their box. People and running vehicles are warmer
  than their surroundings at night and in most daylight scenes.
- **warm boxes** (:func:`warm_boxes`): one box per warm region; tall regions
  (height / width >= ``person_aspect``) are ``person``, wide ones (width / height >=
  ``car_aspect``, area >= ``car_min_area``) are ``car``; others are not labelled.
- **HOG people** (:func:`hog_people`): OpenCV's built-in HOG people detector (a linear SVM
  shipped with OpenCV) on the visible frame upscaled 2x, only where the frame is well lit
  (mean luminance >= ``min_light``), kept where the box holds warm pixels (share >=
  ``min_warm``): the visible detector proposes, the thermal frame confirms.
- **detection boxes** (:func:`detection_boxes`): HOG people and warm boxes together, with
  overlapping boxes of a class merged by non-maximum suppression (IoU 0.5; HOG first).
- **segmentation** (:func:`segmentation_mask`): class 1 ``warm object`` (warm regions),
  class 2 ``structure`` (Canny edges of the visible luminance in good light, of the
  infrared otherwise, dilated to 3 px, outside warm objects), class 0 ``background``.
- **saliency** (:func:`saliency_mask`): the warm regions with holes filled, 0/1.

Class indices follow the MSRS detection labels: 0 person, 1 bicycle, 2 car (no rule labels
bicycles).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

__all__ = [
    "BOX_CLASSES",
    "SEGMENTATION_CLASSES",
    "LabelRules",
    "box_iou",
    "detection_boxes",
    "hog_people",
    "match_boxes",
    "saliency_mask",
    "score_rules",
    "segmentation_mask",
    "warm_boxes",
    "warm_regions",
]

BOX_CLASSES = ("person", "bicycle", "car")
SEGMENTATION_CLASSES = ("background", "warm object", "structure")


@dataclass(frozen=True)
class LabelRules:
    """Settings of the label rules (see the module docstring)."""

    contrast: float = 0.12
    background_sigma: float = 20.0
    level: float = 80.0
    min_area: float = 0.0004
    max_area: float = 0.12
    min_fill: float = 0.3
    person_aspect: float = 1.3
    car_aspect: float = 1.0
    car_min_area: float = 0.002
    min_light: float = 0.25
    hog_min_score: float = 0.5
    min_warm: float = 0.1
    canny_low: int = 60
    canny_high: int = 150


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def _stretched(ir: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(ir, (1.0, 99.5))
    return np.clip((ir - lo) / max(hi - lo, 1e-6), 0.0, 1.0).astype(np.float32)


def _warm_pixels(ir: np.ndarray, rules: LabelRules) -> np.ndarray:
    s = cv2.GaussianBlur(_stretched(ir), (0, 0), 1.5)
    background = cv2.GaussianBlur(s, (0, 0), rules.background_sigma)
    return ((s - background) > rules.contrast) & (s > np.percentile(s, rules.level))


def warm_regions(ir: np.ndarray, rules: LabelRules = LabelRules()
                 ) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """Warm connected regions of the infrared frame.

    Returns:
        ``(mask (H, W) uint8 0/1, boxes)``: the kept regions' pixels and one
        ``(x, y, w, h)`` pixel box per kept region.
    """
    h, w = ir.shape
    mask: np.ndarray = _warm_pixels(ir, rules).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    keep = np.zeros(n, bool)
    boxes = []
    for i in range(1, n):
        x, y, bw, bh, area = (int(v) for v in stats[i])
        if not rules.min_area * h * w <= area <= rules.max_area * h * w:
            continue
        if area < rules.min_fill * bw * bh:
            continue
        keep[i] = True
        boxes.append((x, y, bw, bh))
    return keep[labels].astype(np.uint8), boxes


def _to_yolo(x: float, y: float, bw: float, bh: float, w: int, h: int, cls: int
             ) -> list[float]:
    return [float(cls), (x + bw / 2) / w, (y + bh / 2) / h, bw / w, bh / h]


def warm_boxes(ir: np.ndarray, rules: LabelRules = LabelRules()) -> np.ndarray:
    """``(K, 5)`` YOLO rows ``cls cx cy w h`` (normalised) from the warm regions."""
    h, w = ir.shape
    rows = []
    for x, y, bw, bh in warm_regions(ir, rules)[1]:
        if bh >= rules.person_aspect * bw:
            rows.append(_to_yolo(x, y, bw, bh, w, h, 0))
        elif bw >= rules.car_aspect * bh and bw * bh >= rules.car_min_area * h * w:
            rows.append(_to_yolo(x, y, bw, bh, w, h, 2))
    return np.asarray(rows, np.float32).reshape(-1, 5)


def hog_people(ir: np.ndarray, rgb: np.ndarray, rules: LabelRules = LabelRules()
               ) -> np.ndarray:
    """``(K, 5)`` person rows from OpenCV's HOG people detector, confirmed by warm pixels;
    empty for frames that are not well lit."""
    h, w = ir.shape
    y = _luminance(rgb)
    if float(y.mean()) < rules.min_light:
        return np.zeros((0, 5), np.float32)
    hog = cv2.HOGDescriptor()
    win_w, win_h = hog.winSize
    if 2 * w < win_w or 2 * h < win_h:  # no detection window fits (OpenCV crashes on these)
        return np.zeros((0, 5), np.float32)
    hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())  # type: ignore[attr-defined]
    grey = cv2.resize((np.clip(y, 0, 1) * 255).astype(np.uint8), (2 * w, 2 * h),
                      interpolation=cv2.INTER_LINEAR)
    found, scores = hog.detectMultiScale(grey, winStride=(8, 8), padding=(8, 8), scale=1.05)
    warm = _warm_pixels(ir, rules)
    rows = []
    for (x, yy, bw, bh), score in zip(np.asarray(found).reshape(-1, 4),
                                      np.asarray(scores).reshape(-1), strict=True):
        if score < rules.hog_min_score:
            continue
        # the detector's window has a margin around the person: shrink to the body
        x, yy, bw, bh = (x + 0.15 * bw) / 2, (yy + 0.07 * bh) / 2, 0.7 * bw / 2, 0.86 * bh / 2
        x0, y0 = max(int(x), 0), max(int(yy), 0)
        x1, y1 = min(int(x + bw), w), min(int(yy + bh), h)
        if x1 <= x0 or y1 <= y0 or warm[y0:y1, x0:x1].mean() < rules.min_warm:
            continue
        rows.append(_to_yolo(x0, y0, x1 - x0, y1 - y0, w, h, 0))
    return np.asarray(rows, np.float32).reshape(-1, 5)


def _xyxy(rows: np.ndarray) -> np.ndarray:
    cx, cy, bw, bh = rows[:, 1], rows[:, 2], rows[:, 3], rows[:, 4]
    return np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix ``(len(a), len(b))`` of ``x1 y1 x2 y2`` boxes."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(2)
    area_a = (a[:, 2:] - a[:, :2]).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).prod(1)
    return inter / np.maximum(area_a[:, None] + area_b[None] - inter, 1e-12)


def _merge(rows: np.ndarray, iou: float = 0.5) -> np.ndarray:
    """Keep the first of overlapping same-class boxes (rows are in priority order)."""
    kept: list[int] = []
    boxes = _xyxy(rows)
    for i in range(len(rows)):
        same = [k for k in kept if rows[k, 0] == rows[i, 0]]
        if same and box_iou(boxes[i:i + 1], boxes[same]).max() > iou:
            continue
        kept.append(i)
    return rows[kept]


def detection_boxes(ir: np.ndarray, rgb: np.ndarray, rules: LabelRules = LabelRules()
                    ) -> np.ndarray:
    """HOG people and warm boxes, merged: ``(K, 5)`` YOLO rows."""
    rows = np.concatenate([hog_people(ir, rgb, rules), warm_boxes(ir, rules)])
    return _merge(rows) if len(rows) else rows


def _edges(grey: np.ndarray, rules: LabelRules) -> np.ndarray:
    g = cv2.GaussianBlur((np.clip(grey, 0, 1) * 255).astype(np.uint8), (0, 0), 1.0)
    e = cv2.Canny(g, rules.canny_low, rules.canny_high)
    return cv2.dilate(e, np.ones((3, 3), np.uint8)) > 0


def segmentation_mask(ir: np.ndarray, rgb: np.ndarray, rules: LabelRules = LabelRules()
                      ) -> np.ndarray:
    """``(H, W)`` uint8 class indices: 0 background, 1 warm object, 2 structure."""
    warm = warm_regions(ir, rules)[0].astype(bool)
    y = _luminance(rgb)
    edges = _edges(y if float(y.mean()) >= rules.min_light else _stretched(ir), rules)
    out = np.zeros(ir.shape, np.uint8)
    out[edges] = 2
    out[warm] = 1
    return out


def saliency_mask(ir: np.ndarray, rgb: np.ndarray | None = None,
                  rules: LabelRules = LabelRules()) -> np.ndarray:
    """``(H, W)`` uint8 0/1: warm regions with their holes filled."""
    del rgb
    warm = warm_regions(ir, rules)[0]
    contours, _ = cv2.findContours(warm, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(warm)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled


# ---------------------------------------------------------------------------------------
# Scoring against human labels
# ---------------------------------------------------------------------------------------


def match_boxes(pred: np.ndarray, truth: np.ndarray, iou: float = 0.5,
                class_aware: bool = True) -> int:
    """Number of true positives: greedy one-to-one matching of ``pred`` to ``truth`` rows
    (YOLO ``cls cx cy w h``) at IoU >= ``iou`` (same class unless ``class_aware`` is off)."""
    if not len(pred) or not len(truth):
        return 0
    m = box_iou(_xyxy(pred), _xyxy(truth))
    if class_aware:
        m = np.where(pred[:, :1] == truth[None, :, 0], m, 0.0)
    used = np.zeros(len(truth), bool)
    tp = 0
    for i in np.argsort(-m.max(1)):
        j = np.where(used, -1.0, m[i]).argmax()
        if m[i, j] >= iou and not used[j]:
            used[j] = True
            tp += 1
    return tp


def _pr(tp: float, n_pred: float, n_true: float) -> dict[str, float]:
    return {"precision": tp / n_pred if n_pred else 0.0,
            "recall": tp / n_true if n_true else 0.0,
            "predicted": n_pred, "true": n_true}


def score_rules(pairs: Sequence[Mapping[str, Any]], rules: LabelRules = LabelRules(),
                iou: float = 0.5) -> dict[str, dict[str, float]]:
    """Precision / recall of each rule against human labels.

    Args:
        pairs: dicts with ``ir`` ``(H, W)``, ``rgb`` ``(H, W, 3)`` (float ``[0, 1]``),
            ``boxes`` ``(K, 5)`` YOLO rows and optionally ``mask`` ``(H, W)`` 0/1.

    Returns:
        rule name -> ``precision``, ``recall`` (and ``iou`` for masks), with the counts.
        Box rules: matches at IoU >= ``iou``, class-aware, against all boxes and against the
        person / car boxes only; mask rules: pixel precision / recall / IoU.
    """
    rules_fn = {
        "HOG people (person)": lambda p: hog_people(p["ir"], p["rgb"], rules),
        "warm boxes (person, car)": lambda p: warm_boxes(p["ir"], rules),
        "detection boxes (HOG + warm)": lambda p: detection_boxes(p["ir"], p["rgb"], rules),
    }
    out: dict[str, dict[str, float]] = {}
    for name, fn in rules_fn.items():
        tp = n_pred = n_true = 0
        per_class = {c: [0, 0, 0] for c in (0, 2)}
        for p in pairs:
            pred, truth = fn(p), np.asarray(p["boxes"], np.float32).reshape(-1, 5)
            tp += match_boxes(pred, truth, iou)
            n_pred += len(pred)
            n_true += len(truth)
            for c, acc in per_class.items():
                pc, tc = pred[pred[:, 0] == c], truth[truth[:, 0] == c]
                acc[0] += match_boxes(pc, tc, iou)
                acc[1] += len(pc)
                acc[2] += len(tc)
        out[name] = _pr(tp, n_pred, n_true)
        for c, (ctp, cp, ct) in per_class.items():
            out[f"{name} / {BOX_CLASSES[c]}"] = _pr(ctp, cp, ct)
    masks = [p for p in pairs if p.get("mask") is not None]
    if masks:
        for name, fn in (("saliency mask (warm regions)",
                          lambda p: saliency_mask(p["ir"], p["rgb"], rules)),
                         ("segmentation class 'warm object'",
                          lambda p: segmentation_mask(p["ir"], p["rgb"], rules) == 1)):
            px_tp = px_pred = px_true = 0.0
            for p in masks:
                px = np.asarray(fn(p)).astype(bool)
                px_truth = np.asarray(p["mask"]) > 0
                px_tp += float((px & px_truth).sum())
                px_pred += float(px.sum())
                px_true += float(px_truth.sum())
            out[name] = {**_pr(px_tp, px_pred, px_true),
                         "iou": px_tp / max(px_pred + px_true - px_tp, 1)}
    return out


def rules_table(scores: Mapping[str, Mapping[str, float]]) -> str:
    """Markdown table of :func:`score_rules` output."""
    lines = ["| rule | precision | recall | IoU | predicted | true |", "|---|---|---|---|---|---|"]
    for name, s in scores.items():
        iou = f"{s['iou']:.3f}" if "iou" in s else ""
        unit = " px" if "iou" in s else ""
        lines.append(f"| {name} | {s['precision']:.3f} | {s['recall']:.3f} | {iou} | "
                     f"{s['predicted']:.0f}{unit} | {s['true']:.0f}{unit} |")
    return "\n".join(lines)


def load_scoring_pairs(root: str | Path, annotation: str = "fusion") -> list[dict[str, Any]]:
    """The MSRS-box pairs as :func:`score_rules` input (see
    :func:`~cldyn_ros.training.datasets.read_msrs_boxes`)."""
    from .datasets import read_msrs_boxes  # noqa: PLC0415  (datasets imports this module)

    data = read_msrs_boxes(root, annotation=annotation, masks=True)
    pairs = []
    for i, item in enumerate(data.items):
        ir, rgb, boxes = data.load(i)
        mask = None
        if item.mask is not None:
            grey = cv2.imread(str(item.mask), cv2.IMREAD_GRAYSCALE)
            if grey is None:
                raise ValueError(f"cannot read mask {item.mask}")
            mask = grey > 127
        pairs.append({"name": item.name, "ir": ir[0].numpy(),
                      "rgb": rgb.permute(1, 2, 0).numpy(), "boxes": boxes.numpy(),
                      "mask": mask})
    return pairs
