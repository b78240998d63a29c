"""Task datasets for closed-loop RSC training: paired infrared / visible images with labels.

Every dataset is a :class:`TaskData`: a list of items (infrared file, visible file, label),
read on demand (or preloaded), that yields training batches
``(ir (B, 1, s, s), vis_rgb (B, 3, s, s), target)`` with values in ``[0, 1]``.

Readers for the published layouts (folder names are matched case-insensitively, and
each reader also accepts a few common renamings):

- M3FD detection, YOLO txt labels (``<root>/{ir,vi,labels}``, one ``cls cx cy w h`` line per
  box, normalised), :func:`read_m3fd`; targets in the Ultralytics batch layout.
- FMB segmentation (``<root>/<split>/{Infrared,Visible,Label}``, class-index PNG masks),
  :func:`read_fmb`.
- VT5000 salient objects (``<root>/<Train|Test>/{T,RGB,GT}``, 0/255 masks),
  :func:`read_vt5000`.
- MSRS with human-drawn boxes (``<root>/{ir,vi}``, ``<root>/labels/<annotation>/`` YOLO txt
  for the annotation drawn on the infrared, visible or fused image, optional object masks
  in ``<root>/masks*``), :func:`read_msrs_boxes`.

Self-supervised tasks on unlabelled pairs, with labels derived from the images themselves
(:func:`self_supervised`):

- ``warm_objects``: segment objects markedly warmer than their surroundings; labels from
  the thermal image (local contrast threshold, cleaned with a morphological opening).
- ``visible_edges``: recover the edge structure of the visible image; labels are Canny
  edges of the visible luminance, only for pairs taken in good light (mean luminance above
  a threshold), where the visible camera is the trustworthy source of structure.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..imaging.io import IMAGE_EXTENSIONS, read_color, read_thermal
from ..imaging.registration import Registration
from ..imaging.thermal import ThermalNormalizer, thermal_to_unit

__all__ = [
    "SELF_SUPERVISED",
    "Item",
    "TaskData",
    "read_fmb",
    "read_m3fd",
    "read_mask_folder",
    "read_msrs_boxes",
    "read_pairs",
    "read_vt5000",
    "read_yolo_folder",
    "self_supervised",
    "split_items",
    "visible_edges_label",
    "warm_objects_label",
]


@dataclass
class Item:
    """One labelled pair: files and the label (a mask file, a box array or ``None``);
    ``mask`` is an extra object-mask file where a box layout also has masks."""

    name: str
    ir: Path
    vis: Path
    label: Any = None
    mask: Path | None = None


@dataclass
class TaskData:
    """Labelled pairs for one task.

    Args:
        name: dataset name (stored in the checkpoint metadata).
        items: the pairs.
        kind: ``"mask"`` (targets ``(B, 1, s, s)``: class indices or 0/1) or ``"boxes"``
            (targets in the Ultralytics batch layout).
        label_fn: for self-supervised tasks, ``label_fn(ir (H, W), rgb (H, W, 3)) -> mask``
            on ``[0, 1]`` float arrays; otherwise ``item.label`` is a mask file / box array.
        preload: keep decoded images in memory (small sets).
        mask_scale: divide mask files by this (255 for 0/255 saliency masks, 1 for indices).
        source: description for metadata (root folder, layout).
        frame_size: boxes only: ``(H, W)`` the frames are resized to (default: square
            frames of the ``crop`` size passed to :meth:`batch`).
    """

    name: str
    items: list[Item]
    kind: str = "mask"
    label_fn: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
    preload: bool = True
    mask_scale: float = 1.0
    source: dict[str, Any] = field(default_factory=dict)
    frame_size: tuple[int, int] | None = None
    _cache: dict[int, tuple[Tensor, Tensor, Any]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in ("mask", "boxes"):
            raise ValueError(f"kind must be 'mask' or 'boxes', got '{self.kind}'")

    def __len__(self) -> int:
        return len(self.items)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "pairs": len(self.items), "kind": self.kind, **self.source}

    def load(self, index: int) -> tuple[Tensor, Tensor, Any]:
        """``(ir (1, H, W), vis_rgb (3, H, W), label)`` for item ``index``.

        Mask labels are ``(1, H, W)`` float tensors, box labels ``(K, 5)`` float tensors
        of ``cls cx cy w h`` (normalised).
        """
        if index in self._cache:
            return self._cache[index]
        item = self.items[index]
        ir_np = thermal_to_unit(read_thermal(item.ir), ThermalNormalizer())
        rgb_np = read_color(item.vis)
        h, w = rgb_np.shape[:2]
        if ir_np.shape != (h, w):  # as the engine resizes frames of another size
            ir_np = Registration()(ir_np, (h, w))
        rgb_f = rgb_np.astype(np.float32) / 255.0
        if self.kind == "boxes":
            label = torch.as_tensor(np.asarray(item.label, np.float32).reshape(-1, 5))
        elif self.label_fn is not None:
            label = torch.from_numpy(
                np.ascontiguousarray(self.label_fn(ir_np, rgb_f), np.float32))[None]
        else:
            mask = cv2.imread(str(item.label), cv2.IMREAD_UNCHANGED)
            if mask is None:
                raise ValueError(f"cannot read mask {item.label}")
            if mask.ndim == 3:
                mask = mask[:, :, 0]
            if mask.shape != (h, w):
                mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
            label = torch.from_numpy(mask.astype(np.float32) / self.mask_scale)[None]
        out = (torch.from_numpy(np.ascontiguousarray(ir_np, np.float32))[None].clamp(0, 1),
               torch.from_numpy(rgb_f).permute(2, 0, 1).contiguous(), label)
        if self.preload:
            self._cache[index] = out
        return out

    def batch(self, batch_size: int, crop: int, generator: torch.Generator
              ) -> tuple[Tensor, Tensor, Any]:
        """A random training batch: random crops (masks) or resized frames (boxes), random
        horizontal flips."""
        picks = torch.randint(len(self.items), (batch_size,), generator=generator).tolist()
        samples = []
        for i in picks:
            ir, rgb, label = self.load(i)
            flip = bool(torch.rand(1, generator=generator) < 0.5)
            if self.kind == "boxes":
                samples.append(_resize_boxes(ir, rgb, label, self.frame_size or crop, flip))
            else:
                samples.append(_crop_mask(ir, rgb, label, crop, generator, flip))
        return self._collate(samples)

    def fixed_batches(self, crop: int, indices: Sequence[int] | None = None,
                      per_item: int = 1) -> list[tuple[Tensor, Tensor, Any]]:
        """Deterministic evaluation batches: ``per_item`` evenly spaced crops of each item
        (boxes: the resized frame), one batch per item."""
        out = []
        for i in range(len(self.items)) if indices is None else indices:
            ir, rgb, label = self.load(i)
            if self.kind == "boxes":
                out.append(self._collate([_resize_boxes(ir, rgb, label,
                                                        self.frame_size or crop, False)]))
                continue
            h, w = ir.shape[-2:]
            ch, cw = min(crop, h), min(crop, w)
            samples = []
            for k in range(per_item):
                frac = (k + 0.5) / per_item
                top = int((h - ch) * 0.5)
                left = int((w - cw) * frac)
                samples.append(_scale(ir[:, top:top + ch, left:left + cw],
                                      rgb[:, top:top + ch, left:left + cw],
                                      label[:, top:top + ch, left:left + cw], crop))
            out.append(self._collate(samples))
        return out

    def _collate(self, samples: list[tuple[Tensor, Tensor, Any]]) -> tuple[Tensor, Tensor, Any]:
        ir = torch.stack([s[0] for s in samples])
        rgb = torch.stack([s[1] for s in samples])
        if self.kind == "mask":
            return ir, rgb, torch.stack([s[2] for s in samples])
        boxes = [s[2] for s in samples]
        idx = torch.cat([torch.full((len(b),), float(i)) for i, b in enumerate(boxes)])
        allb = torch.cat(boxes) if boxes else torch.zeros(0, 5)
        return ir, rgb, {"batch_idx": idx, "cls": allb[:, :1], "bboxes": allb[:, 1:]}


def _scale(ir: Tensor, rgb: Tensor, label: Tensor, crop: int) -> tuple[Tensor, Tensor, Tensor]:
    if ir.shape[-2:] == (crop, crop):
        return ir, rgb, label
    size = (crop, crop)
    return (F.interpolate(ir[None], size=size, mode="bilinear", align_corners=False)[0],
            F.interpolate(rgb[None], size=size, mode="bilinear", align_corners=False)[0],
            F.interpolate(label[None], size=size, mode="nearest")[0])


def _crop_mask(ir: Tensor, rgb: Tensor, label: Tensor, crop: int, generator: torch.Generator,
               flip: bool) -> tuple[Tensor, Tensor, Tensor]:
    h, w = ir.shape[-2:]
    ch, cw = min(crop, h), min(crop, w)
    top = int(torch.randint(h - ch + 1, (1,), generator=generator))
    left = int(torch.randint(w - cw + 1, (1,), generator=generator))
    sl = (slice(None), slice(top, top + ch), slice(left, left + cw))
    ir, rgb, label = _scale(ir[sl], rgb[sl], label[sl], crop)
    if flip:
        ir, rgb, label = ir.flip(-1), rgb.flip(-1), label.flip(-1)
    return ir, rgb, label


def _resize_boxes(ir: Tensor, rgb: Tensor, boxes: Tensor, size: int | Sequence[int],
                  flip: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Resize the whole frame to ``size x size`` or ``(H, W)`` (normalised boxes are
    unchanged)."""
    hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    ir = F.interpolate(ir[None], size=hw, mode="bilinear", align_corners=False)[0]
    rgb = F.interpolate(rgb[None], size=hw, mode="bilinear", align_corners=False)[0]
    boxes = boxes.clone()
    if flip:
        ir, rgb = ir.flip(-1), rgb.flip(-1)
        boxes[:, 1] = 1.0 - boxes[:, 1]
    return ir, rgb, boxes


# ---------------------------------------------------------------------------------------
# Readers for published layouts
# ---------------------------------------------------------------------------------------


def _subdir(root: Path, names: Sequence[str], what: str) -> Path:
    """The first child of ``root`` whose name matches one of ``names`` (case-insensitive)."""
    if not root.is_dir():
        raise ValueError(f"dataset folder {str(root)!r} does not exist")
    children = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    for n in names:
        if n.lower() in children:
            return children[n.lower()]
    raise ValueError(f"{str(root)!r} has no {what} folder (looked for {', '.join(names)})")


def _split_folder(root: Path, split: str) -> Path:
    """``root/<split>`` (case-insensitive) where it exists, else ``root``: the published
    layouts put the split folder first, but users often point at a split directly."""
    try:
        return _subdir(root, (split,), f"'{split}' split")
    except ValueError:
        return root


def _by_stem(folder: Path, extensions: Sequence[str] = tuple(IMAGE_EXTENSIONS)) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in extensions}


def _names_from(split: str | Path | None) -> set[str] | None:
    if split is None:
        return None
    return {Path(n).stem for n in Path(split).read_text().split()}


def _matched(ir_dir: Path, vi_dir: Path, label_dir: Path | None, label_ext: Sequence[str],
             names: set[str] | None) -> list[tuple[str, Path, Path, Path | None]]:
    irs, vis = _by_stem(ir_dir), _by_stem(vi_dir)
    labels = _by_stem(label_dir, label_ext) if label_dir is not None else {}
    out = []
    for stem in sorted(irs.keys() & vis.keys()):
        if names is not None and stem not in names:
            continue
        if label_dir is not None and stem not in labels:
            continue
        out.append((stem, irs[stem], vis[stem], labels.get(stem)))
    if not out:
        raise ValueError(f"no labelled pairs found in {ir_dir}, {vi_dir}"
                         + (f", {label_dir}" if label_dir else ""))
    return out


def _read_yolo_txt(path: Path | None) -> np.ndarray:
    """``(N, 5)`` YOLO rows of a label file (``None``: no file, no boxes)."""
    rows: list[list[float]] = []
    if path is None:
        return np.zeros((0, 5), np.float32)
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 5:
            raise ValueError(f"{path}:{n}: expected 'cls cx cy w h', got {line!r}")
        rows.append([float(v) for v in parts])
    return np.asarray(rows, np.float32).reshape(-1, 5)


def read_m3fd(root: str | Path, split: str | Path | None = None, preload: bool = False
              ) -> TaskData:
    """M3FD detection with YOLO txt labels: ``<root>/{Ir|ir}``, ``<root>/{Vis|vi}``,
    ``<root>/labels`` (``<stem>.txt``; a pair without a label file is skipped, an empty file
    is an image without objects). ``split``: optional text file of pair names to keep."""
    root = Path(root)
    ir = _subdir(root, ("ir", "infrared", "ir_images"), "infrared")
    vi = _subdir(root, ("vis", "vi", "visible", "rgb"), "visible")
    lb = _subdir(root, ("labels", "label", "yolo_labels"), "YOLO labels")
    items = [Item(s, a, b, _read_yolo_txt(cast(Path, c)))  # label_dir given: never None
             for s, a, b, c in _matched(ir, vi, lb, (".txt",), _names_from(split))]
    return TaskData("m3fd", items, kind="boxes", preload=preload,
                    source={"layout": "m3fd-yolo", "root": str(root)})


def read_yolo_folder(ir: str | Path, vi: str | Path, labels: str | Path,
                     names: str | Path | None = None, size: Sequence[int] | None = None,
                     preload: bool = False) -> TaskData:
    """Pairs from two folders with YOLO txt boxes in a third (``<labels>/<stem>.txt``), e.g.
    the rule labels written by ``cldyn train task``; ``names``: optional text file of pair
    names to keep; ``size``: ``(H, W)`` the frames are resized to."""
    items = [Item(s, a, b, _read_yolo_txt(c))
             for s, a, b, c in _matched(Path(ir), Path(vi), Path(labels), (".txt",),
                                        _names_from(names))]
    return TaskData("yolo", items, kind="boxes", preload=preload,
                    frame_size=(int(size[0]), int(size[1])) if size else None,
                    source={"layout": "yolo", "ir": str(ir), "vi": str(vi),
                            "labels": str(labels), "names": str(names) if names else None})


def read_mask_folder(ir: str | Path, vi: str | Path, masks: str | Path,
                     names: str | Path | None = None, mask_scale: float = 1.0,
                     preload: bool = False) -> TaskData:
    """Pairs from two folders with PNG masks in a third (``<masks>/<stem>.png``: class
    indices, or 0/255 with ``mask_scale`` 255); ``names``: optional text file of pair names
    to keep."""
    items = [Item(s, a, b, c)
             for s, a, b, c in _matched(Path(ir), Path(vi), Path(masks), (".png",),
                                        _names_from(names))]
    return TaskData("masks", items, kind="mask", preload=preload, mask_scale=float(mask_scale),
                    source={"layout": "masks", "ir": str(ir), "vi": str(vi),
                            "masks": str(masks), "names": str(names) if names else None})


MSRS_ANNOTATIONS = ("fusion", "infrared", "visible")


def read_msrs_boxes(root: str | Path, annotation: str = "fusion", masks: bool = False,
                    preload: bool = False) -> TaskData:
    """MSRS pairs with YOLO txt boxes (classes 0 person, 1 bicycle, 2 car):
    ``<root>/{ir,vi}``, ``<root>/labels/<annotation>/<stem>.txt`` (``annotation``: the set
    drawn on the ``fusion``, ``infrared`` or ``visible`` image). With ``masks``, each item's
    ``mask`` is its binary object mask from the first ``<root>/masks*`` folder (0/255 PNG),
    where one exists for the pair."""
    if annotation not in MSRS_ANNOTATIONS:
        raise ValueError(f"annotation must be one of {MSRS_ANNOTATIONS}, got '{annotation}'")
    root = Path(root)
    ir = _subdir(root, ("ir", "infrared"), "infrared")
    vi = _subdir(root, ("vi", "vis", "visible"), "visible")
    lb = _subdir(_subdir(root, ("labels",), "labels"), (annotation,), f"'{annotation}' labels")
    mask_files: dict[str, Path] = {}
    if masks:
        folders = sorted(p for p in root.iterdir() if p.is_dir()
                         and p.name.lower().startswith("mask"))
        if not folders:
            raise ValueError(f"{str(root)!r} has no masks* folder")
        mask_files = _by_stem(folders[0], (".png",))
    items = [Item(s, a, b, _read_yolo_txt(c), mask_files.get(s))
             for s, a, b, c in _matched(ir, vi, lb, (".txt",), None)]
    return TaskData("msrs_boxes", items, kind="boxes", preload=preload,
                    source={"layout": "msrs-boxes", "root": str(root),
                            "annotation": annotation})


def read_fmb(root: str | Path, split: str = "train", preload: bool = False) -> TaskData:
    """FMB segmentation: ``<root>/<split>/{Infrared,Visible,Label}`` (the split folder is
    optional); labels are class-index PNGs (255 = ignore)."""
    root = Path(root)
    base = _split_folder(root, split)
    ir = _subdir(base, ("infrared", "ir"), "infrared")
    vi = _subdir(base, ("visible", "vi", "vis", "rgb"), "visible")
    lb = _subdir(base, ("label", "labels", "mask", "masks"), "label")
    items = [Item(s, a, b, c) for s, a, b, c in _matched(ir, vi, lb, (".png",), None)]
    return TaskData("fmb", items, kind="mask", preload=preload, mask_scale=1.0,
                    source={"layout": "fmb", "root": str(root), "split": split})


def read_vt5000(root: str | Path, split: str = "Train", preload: bool = False) -> TaskData:
    """VT5000 salient objects: ``<root>/<split>/{T,RGB,GT}`` (the split folder is optional);
    GT masks are 0/255 and become 0/1 targets."""
    root = Path(root)
    base = _split_folder(root, split)
    ir = _subdir(base, ("t", "thermal", "ir"), "thermal")
    vi = _subdir(base, ("rgb", "vi", "visible"), "visible")
    lb = _subdir(base, ("gt", "mask", "masks"), "ground-truth")
    items = [Item(s, a, b, c)
             for s, a, b, c in _matched(ir, vi, lb, tuple(IMAGE_EXTENSIONS), None)]
    return TaskData("vt5000", items, kind="mask", preload=preload, mask_scale=255.0,
                    source={"layout": "vt5000", "root": str(root), "split": split})


# ---------------------------------------------------------------------------------------
# Self-supervised tasks on unlabelled pairs
# ---------------------------------------------------------------------------------------


def warm_objects_label(ir: np.ndarray, rgb: np.ndarray, contrast: float = 0.12,
                       sigma: float = 12.0) -> np.ndarray:
    """Mask of pixels warmer than their surroundings by ``contrast`` (in normalised thermal
    units) and warmer than the frame median; cleaned with a 3x3 opening. ``(H, W)`` 0/1."""
    del rgb
    background = cv2.GaussianBlur(ir, (0, 0), sigma)
    smooth = cv2.GaussianBlur(ir, (0, 0), 1.0)
    mask = ((smooth - background) > contrast) & (smooth > np.median(ir))
    mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    return mask.astype(np.float32)


def visible_edges_label(ir: np.ndarray, rgb: np.ndarray, low: int = 60, high: int = 150
                        ) -> np.ndarray:
    """Canny edges of the (lightly blurred) visible luminance, dilated to 2-3 px. ``(H, W)``
    0/1."""
    del ir
    y = (rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114) * 255.0
    y8 = cv2.GaussianBlur(np.clip(y, 0, 255).astype(np.uint8), (0, 0), 1.0)
    edges = cv2.Canny(y8, low, high)
    edges = cv2.dilate(edges, np.ones((2, 2), np.uint8))
    return (edges > 0).astype(np.float32)


def _good_light(vis: Path, min_mean: float) -> bool:
    rgb = read_color(vis).astype(np.float32) / 255.0
    y = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    return float(y.mean()) >= min_mean


#: Self-supervised task name -> (label function, needs good light).
SELF_SUPERVISED: dict[str, tuple[Callable[[np.ndarray, np.ndarray], np.ndarray], bool]] = {
    "warm_objects": (warm_objects_label, False),
    "visible_edges": (visible_edges_label, True),
}


def read_pairs(ir_dir: str | Path, vi_dir: str | Path, names: set[str] | None = None,
               exclude: set[str] | None = None) -> list[Item]:
    """Unlabelled pairs matched by stem, restricted to ``names`` and without ``exclude``."""
    items = [Item(s, a, b) for s, a, b, _ in _matched(Path(ir_dir), Path(vi_dir), None, (),
                                                       names)]
    if exclude:
        items = [it for it in items if it.name not in exclude]
    return items


def self_supervised(task: str, items: Sequence[Item], min_light: float = 0.3,
                    source: dict[str, Any] | None = None) -> TaskData:
    """A :class:`TaskData` for self-supervised ``task`` (see :data:`SELF_SUPERVISED`) on
    unlabelled ``items``; tasks that need good light keep pairs whose visible mean
    luminance is at least ``min_light``."""
    if task not in SELF_SUPERVISED:
        raise ValueError(f"unknown self-supervised task '{task}'; "
                         f"choose from {sorted(SELF_SUPERVISED)}")
    fn, needs_light = SELF_SUPERVISED[task]
    kept = [it for it in items if not needs_light or _good_light(it.vis, min_light)]
    if not kept:
        raise ValueError(f"no pairs left for '{task}' (good-light threshold {min_light})")
    meta = {"layout": "self-supervised", "labels": task, **(source or {})}
    if needs_light:
        meta["min_light"] = min_light
    return TaskData(task, list(kept), kind="mask", label_fn=fn, preload=True, source=meta)


def split_items(items: Sequence[Item], val_fraction: float, seed: int = 0
                ) -> tuple[list[Item], list[Item]]:
    """Deterministic train / validation split."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(order) * val_fraction)) if val_fraction > 0 and len(order) > 1 \
        else 0
    val = sorted(order[:n_val])
    train = sorted(order[n_val:])
    return [items[i] for i in train], [items[i] for i in val]
