"""Rule labels (warm regions, HOG people, segmentation, saliency), their scoring against
human labels, and the MSRS box layout reader."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from cldyn_ros.imaging.synthetic import generate_pairs
from cldyn_ros.training import labels as L
from cldyn_ros.training.datasets import read_msrs_boxes


def _unit(pair) -> tuple[np.ndarray, np.ndarray]:
    return pair.ir.astype(np.float32) / 255.0, pair.vis.astype(np.float32) / 255.0


def _blobs(h: int = 120, w: int = 160) -> tuple[np.ndarray, np.ndarray]:
    """A cool textured frame with one tall warm blob (a person) and one wide one (a car)."""
    rng = np.random.default_rng(0)
    ir = (0.2 + 0.02 * rng.standard_normal((h, w))).astype(np.float32)
    ir[30:80, 20:36] = 0.9   # tall: 50 x 16
    ir[70:100, 90:150] = 0.8  # wide: 30 x 60
    rgb = np.full((h, w, 3), 0.1, np.float32)  # dark: HOG does not run
    return np.clip(ir, 0, 1), rgb


def test_warm_boxes_classify_tall_as_person_and_wide_as_car() -> None:
    ir, rgb = _blobs()
    rows = L.warm_boxes(ir)
    assert sorted(rows[:, 0].tolist()) == [0.0, 2.0]
    truth = np.array([[0, 28 / 160, 55 / 120, 16 / 160, 50 / 120],
                      [2, 120 / 160, 85 / 120, 60 / 160, 30 / 120]], np.float32)
    assert L.match_boxes(rows, truth, iou=0.7) == 2
    assert len(L.hog_people(ir, rgb)) == 0  # not well lit
    np.testing.assert_array_equal(L.detection_boxes(ir, rgb), rows)


def test_segmentation_and_saliency_masks() -> None:
    ir, rgb = _blobs()
    seg = L.segmentation_mask(ir, rgb)
    assert set(np.unique(seg)) <= {0, 1, 2}
    assert (seg[35:75, 22:34] == 1).all() and seg[5, 5] == 0
    assert (seg[29:31, 20:36] != 0).any()  # the blob's outline is structure or object
    sal = L.saliency_mask(ir, rgb)
    assert sal.dtype == np.uint8 and set(np.unique(sal)) == {0, 1}
    assert sal[75:95, 95:145].all() and sal.sum() < 0.2 * sal.size


def test_rules_find_the_warm_actors_of_generated_night_scenes() -> None:
    pairs = generate_pairs(4, seed=5, height=192, width=256, conditions=("night",))
    tp = n_pred = n_true = 0.0
    for p in pairs:
        ir, rgb = _unit(p)
        pred, truth = L.saliency_mask(ir, rgb).astype(bool), p.warm_mask
        tp += (pred & truth).sum()
        n_pred += pred.sum()
        n_true += truth.sum()
    assert tp / n_pred > 0.5, "warm-region saliency mostly on the warm actors"
    assert tp / n_true > 0.3


def test_match_boxes_is_one_to_one_and_class_aware() -> None:
    truth = np.array([[0, 0.5, 0.5, 0.2, 0.4]], np.float32)
    twice = np.array([[0, 0.5, 0.5, 0.2, 0.4], [0, 0.51, 0.5, 0.2, 0.4]], np.float32)
    assert L.match_boxes(twice, truth) == 1
    other = twice.copy()
    other[:, 0] = 2
    assert L.match_boxes(other, truth) == 0
    assert L.match_boxes(other, truth, class_aware=False) == 1


def test_score_rules_counts() -> None:
    ir, rgb = _blobs()
    truth = np.array([[0, 28 / 160, 55 / 120, 16 / 160, 50 / 120]], np.float32)
    mask = np.zeros(ir.shape, bool)
    mask[30:80, 20:36] = True
    scores = L.score_rules([{"ir": ir, "rgb": rgb, "boxes": truth, "mask": mask}])
    s = scores["warm boxes (person, car)"]
    assert (s["predicted"], s["true"], s["precision"], s["recall"]) == (2, 1, 0.5, 1.0)
    assert scores["warm boxes (person, car) / person"]["precision"] == 1.0
    sal = scores["saliency mask (warm regions)"]
    assert sal["recall"] > 0.9 and 0.25 < sal["precision"] < 0.35  # 800 of about 2600 px
    assert "| warm boxes (person, car) | 0.500 | 1.000 |" in L.rules_table(scores)


def _msrs_layout(root: Path, with_masks: bool = True) -> Path:
    pairs = generate_pairs(3, seed=1, height=48, width=64, conditions=("night",))
    for sub in ("ir", "vi", "labels/fusion", "labels/infrared", "masks_drmf"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(pairs):
        name = f"0000{i}N"
        cv2.imwrite(str(root / "ir" / f"{name}.png"), p.ir)
        cv2.imwrite(str(root / "vi" / f"{name}.png"), p.vis[..., ::-1])
        (root / "labels" / "fusion" / f"{name}.txt").write_text(
            "0  0.5 0.5 0.1 0.3  \n2 0.2 0.6 0.3 0.2\n" if i else "")
        if with_masks and i < 2:
            cv2.imwrite(str(root / "masks_drmf" / f"{name}.png"),
                        p.warm_mask.astype(np.uint8) * 255)
    return root


def test_read_msrs_boxes_layout(tmp_path: Path) -> None:
    root = _msrs_layout(tmp_path / "msrs")
    data = read_msrs_boxes(root, annotation="fusion", masks=True)
    assert [it.name for it in data.items] == ["00000N", "00001N", "00002N"]
    assert data.kind == "boxes"
    assert data.items[0].label.shape == (0, 5)
    np.testing.assert_allclose(data.items[1].label[1], [2, 0.2, 0.6, 0.3, 0.2])
    assert data.items[1].mask is not None and data.items[2].mask is None
    ir, rgb, boxes = data.load(1)
    assert ir.shape == (1, 48, 64) and rgb.shape == (3, 48, 64) and boxes.shape == (2, 5)
    _, _, target = data.batch(2, 32, torch.Generator().manual_seed(0))
    assert set(target) == {"batch_idx", "cls", "bboxes"}
    with pytest.raises(ValueError, match="'visible' labels"):
        read_msrs_boxes(root, annotation="visible")
    with pytest.raises(ValueError, match="annotation must be one of"):
        read_msrs_boxes(root, annotation="thermal")


def test_rules_against_the_real_msrs_boxes(shared_data: Path) -> None:
    """Prints the precision / recall table of the model cards (labels drawn on the fused
    image); run with -s to see it."""
    root = shared_data / "msrs_boxes"
    if not root.is_dir():
        pytest.skip(f"{root} not available")
    pairs = L.load_scoring_pairs(root, "fusion")
    assert len(pairs) == 8 and all(p["mask"] is not None for p in pairs)
    scores = L.score_rules(pairs)
    print("\n" + L.rules_table(scores))
    assert scores["detection boxes (HOG + warm)"]["true"] == sum(len(p["boxes"]) for p in pairs)
    for s in scores.values():
        assert 0.0 <= s["precision"] <= 1.0 and 0.0 <= s["recall"] <= 1.0


def test_hog_people_on_frames_smaller_than_its_window_finds_none() -> None:
    """A bright frame too small for one HOG window (64 x 128 after the 2x upscale) gives no
    person instead of crashing OpenCV."""
    rng = np.random.default_rng(0)
    ir = rng.random((40, 56), dtype=np.float32)
    rgb = np.full((40, 56, 3), 0.8, np.float32)
    assert L.hog_people(ir, rgb).shape == (0, 5)
