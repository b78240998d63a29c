"""Dataset readers (M3FD YOLO labels, FMB masks, VT5000 saliency) on small generated folders
in the published layouts, and the self-supervised labels on generated pairs."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from cldyn_ros.imaging.synthetic import generate_pairs
from cldyn_ros.training.datasets import (
    read_fmb,
    read_m3fd,
    read_pairs,
    read_vt5000,
    self_supervised,
    split_items,
    warm_objects_label,
)


def write_pair(ir_dir: Path, vi_dir: Path, name: str, seed: int, h: int = 40, w: int = 56,
               ext: str = ".png") -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ir = rng.integers(0, 256, (h, w), dtype=np.uint8)
    vis = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    ir_dir.mkdir(parents=True, exist_ok=True)
    vi_dir.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(ir_dir / f"{name}{ext}"), ir)
    cv2.imwrite(str(vi_dir / f"{name}{ext}"), vis[..., ::-1])
    return ir, vis


def test_m3fd_yolo_labels(tmp_path: Path) -> None:
    root = tmp_path / "M3FD"
    labels = root / "labels"
    labels.mkdir(parents=True)
    for i in range(3):
        write_pair(root / "Ir", root / "Vis", f"{i:05d}", i)
    (labels / "00000.txt").write_text("0 0.25 0.5 0.1 0.2\n2 0.6 0.4 0.3 0.3\n")
    (labels / "00001.txt").write_text("")  # an image without objects
    data = read_m3fd(root)  # 00002 has no label file: skipped
    assert [it.name for it in data.items] == ["00000", "00001"]
    ir, rgb, target = data.batch(4, 32, torch.Generator().manual_seed(0))
    assert ir.shape == (4, 1, 32, 32) and rgb.shape == (4, 3, 32, 32)
    k = len(target["batch_idx"])
    assert target["cls"].shape == (k, 1) and target["bboxes"].shape == (k, 4)
    assert set(target["cls"].flatten().tolist()) <= {0.0, 2.0}
    # Horizontal flips mirror cx; everything else is unchanged.
    assert {round(x, 4) for x in target["bboxes"][:, 0].tolist()} <= {0.25, 0.75, 0.6, 0.4}
    [(_, _, fixed)] = data.fixed_batches(32, indices=[0])
    assert torch.allclose(fixed["bboxes"], torch.tensor([[0.25, 0.5, 0.1, 0.2],
                                                         [0.6, 0.4, 0.3, 0.3]]))
    names = tmp_path / "split.txt"
    names.write_text("00001\n")
    assert [it.name for it in read_m3fd(root, split=names).items] == ["00001"]
    (labels / "00000.txt").write_text("0 0.5 0.5\n")
    with pytest.raises(ValueError, match="expected 'cls cx cy w h'"):
        read_m3fd(root)


def test_fmb_masks_stay_aligned_with_the_crops(tmp_path: Path) -> None:
    base = tmp_path / "FMB" / "train"
    for i in range(2):
        ir, _ = write_pair(base / "Infrared", base / "Visible", f"{i}", i)
        (base / "Label").mkdir(exist_ok=True)
        # Label = a function of the infrared pixel, so crops can be checked for alignment.
        cv2.imwrite(str(base / "Label" / f"{i}.png"), (ir // 64).astype(np.uint8))
    data = read_fmb(tmp_path / "FMB", "train")
    assert len(data) == 2 and data.kind == "mask"
    ir, rgb, target = data.batch(6, 24, torch.Generator().manual_seed(1))
    assert target.shape == (6, 1, 24, 24)
    assert torch.equal(target, torch.floor(ir * 255 / 64 + 1e-4).clamp(max=3))
    with pytest.raises(ValueError, match="no infrared folder"):
        read_fmb(tmp_path / "FMB" / "train" / "Infrared")
    (base / "Label").rename(base / "Other")
    with pytest.raises(ValueError, match="no label folder"):
        read_fmb(tmp_path / "FMB")


def test_vt5000_saliency_masks_become_zero_one(tmp_path: Path) -> None:
    base = tmp_path / "VT5000" / "Train"
    ir, _ = write_pair(base / "T", base / "RGB", "a", 0, ext=".jpg")
    (base / "GT").mkdir()
    gt = np.zeros(ir.shape, np.uint8)
    gt[10:20, 5:30] = 255
    cv2.imwrite(str(base / "GT" / "a.png"), gt)
    data = read_vt5000(tmp_path / "VT5000")
    [(_, _, target)] = data.fixed_batches(ir.shape[0])
    assert set(target.unique().tolist()) == {0.0, 1.0}
    assert float(target.sum()) > 0


def test_self_supervised_labels_on_generated_pairs(tmp_path: Path) -> None:
    pairs = generate_pairs(4, seed=2, height=96, width=128, conditions=("day", "night"))
    precision, base_rate = [], []
    for p in pairs:
        mask = warm_objects_label(p.ir.astype(np.float32) / 255.0, p.vis / 255.0)
        if p.warm_mask.any() and mask.any():
            precision.append((mask.astype(bool) & p.warm_mask).sum() / mask.sum())
            base_rate.append(p.warm_mask.mean())
    # The label concentrates on the warm actors (lamps and engines are warm too).
    assert precision and np.mean(precision) > 3 * np.mean(base_rate)
    for p in pairs:
        write_pair(tmp_path / "ir", tmp_path / "vi", p.name, 0)
        cv2.imwrite(str(tmp_path / "ir" / f"{p.name}.png"), p.ir)
        cv2.imwrite(str(tmp_path / "vi" / f"{p.name}.png"), p.vis[..., ::-1])
    items = read_pairs(tmp_path / "ir", tmp_path / "vi")
    edges = self_supervised("visible_edges", items, min_light=0.25)
    assert {it.name for it in edges.items} == {p.name for p in pairs if "day" in p.name}
    _, _, target = edges.batch(2, 32, torch.Generator().manual_seed(0))
    assert set(target.unique().tolist()) <= {0.0, 1.0}
    train, val = split_items(items, 0.25)
    assert len(val) == 1 and len(train) == 3 and not {i.name for i in val} & {
        i.name for i in train}
    with pytest.raises(ValueError, match="unknown self-supervised task"):
        self_supervised("depth", items)
