"""``cldyn eval tasks``: the detection mAP, saliency scores, and the command end to end on
generated pairs with tiny randomly initialised task networks."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from helpers import make_loaded

from cldyn_ros.cli import main
from cldyn_ros.imaging.synthetic import generate_pairs, write_pairs
from cldyn_ros.inference.checkpoint import save_checkpoint
from cldyn_ros.training.task_eval import (
    average_precision,
    mean_average_precision,
    saliency_scores,
)

HAS_EXTRA = all(importlib.util.find_spec(m) is not None for m in ("torchvision", "ultralytics"))


def _pred(x1: float, y1: float, x2: float, y2: float, conf: float, cls: int) -> list[float]:
    return [x1, y1, x2, y2, conf, cls]


def test_map_of_perfect_and_of_missing_predictions() -> None:
    truth = [np.array([[0, 0.3, 0.3, 0.2, 0.2], [2, 0.7, 0.6, 0.2, 0.4]], np.float32)]
    perfect = [np.array([_pred(0.2, 0.2, 0.4, 0.4, 0.9, 0),
                         _pred(0.6, 0.4, 0.8, 0.8, 0.8, 2)])]
    r = mean_average_precision(perfect, truth)
    assert r["mAP50"] == pytest.approx(1.0) and r["mAP50_95"] == pytest.approx(1.0)
    assert r["classes"] == 2
    assert mean_average_precision([np.zeros((0, 6))], truth)["mAP50"] == 0.0
    wrong_class = [np.array([_pred(0.2, 0.2, 0.4, 0.4, 0.9, 1)])]
    assert mean_average_precision(wrong_class, truth)["mAP50"] == 0.0
    assert np.isnan(mean_average_precision([np.zeros((0, 6))], [np.zeros((0, 5))])["mAP50"])


def test_map_counts_a_false_positive_and_the_localisation() -> None:
    # two true boxes: the top-scoring prediction hits one, the second is a false positive
    truth = [np.array([[0, 0.25, 0.25, 0.1, 0.1], [0, 0.75, 0.75, 0.1, 0.1]], np.float32)]
    preds = [np.array([_pred(0.2, 0.2, 0.3, 0.3, 0.9, 0), _pred(0.5, 0.0, 0.6, 0.1, 0.8, 0)])]
    # precision 1 up to recall 0.5, then nothing: 51 of the 101 recall points
    assert mean_average_precision(preds, truth)["mAP50"] == pytest.approx(51 / 101)
    # a box shifted so that IoU = 0.62: a hit at 0.5, 0.55 and 0.6 only
    truth = [np.array([[0, 0.5, 0.5, 0.4, 0.4]], np.float32)]
    shift = 0.4 * (1 - 0.62) / (1 + 0.62)  # IoU of two equal boxes shifted along x by s
    preds = [np.array([_pred(0.3 + shift, 0.3, 0.7 + shift, 0.7, 0.9, 0)])]
    r = mean_average_precision(preds, truth)
    assert r["mAP50"] == pytest.approx(1.0) and r["mAP50_95"] == pytest.approx(0.3)
    assert average_precision(np.zeros(0), np.zeros(0), 0) != average_precision(
        np.zeros(0), np.zeros(0), 0)  # NaN without ground truth


def test_saliency_scores() -> None:
    mask = torch.zeros(8, 8)
    mask[2:6, 2:6] = 1
    assert saliency_scores(mask.clone(), mask) == (0.0, pytest.approx(1.0))
    prob = torch.full((8, 8), 0.3)
    prob[2:4, 2:6] = 1.0  # half the object: threshold 2 x mean = 0.775 keeps exactly it
    mae, fb = saliency_scores(prob, mask)
    assert mae == pytest.approx(20 / 64)  # 48 px off by 0.3, 8 px off by 0.7
    assert fb == pytest.approx(1.3 * 1.0 * 0.5 / (0.3 * 1.0 + 0.5))  # precision 1, recall 0.5
    assert saliency_scores(torch.zeros(8, 8), torch.zeros(8, 8)) == (0.0, None)


def _labels_from_masks(pairs, boxes_dir: Path, masks_dir: Path) -> None:
    boxes_dir.mkdir(parents=True)
    masks_dir.mkdir(parents=True)
    for p in pairs:
        m = p.warm_mask.astype(np.uint8)
        h, w = m.shape
        n, _, stats, _ = cv2.connectedComponentsWithStats(m)
        rows = [f"{0 if bh > bw else 2} {(x + bw / 2) / w} {(y + bh / 2) / h} {bw / w} {bh / h}"
                for x, y, bw, bh, _ in stats[1:]]
        (boxes_dir / f"{p.name}.txt").write_text("\n".join(rows) + "\n")
        cv2.imwrite(str(masks_dir / f"{p.name}.png"), m * 255)


@pytest.mark.skipif(not HAS_EXTRA, reason="the 'tasks' extra (torchvision, ultralytics) is "
                    "not installed: make tasks")
def test_eval_tasks_command_on_generated_pairs(tmp_path: Path) -> None:
    from cldyn_ros.training.task_train import build_network, save_task_network

    pairs = generate_pairs(3, seed=4, height=64, width=96, conditions=("night", "day"))
    write_pairs(pairs, tmp_path / "pairs")
    _labels_from_masks(pairs, tmp_path / "boxes", tmp_path / "masks")
    (tmp_path / "boxes" / f"{pairs[2].name}.txt").unlink()  # a pair without boxes: skipped
    loaded = make_loaded(("detection", "saliency"))
    save_checkpoint(tmp_path / "model.pt", loaded.model, loaded.task_vectors, {})
    nets = {}
    specs = {"detection": {"arch": "yolov8n.yaml", "num_classes": 3},
             "segmentation": {"arch": "lraspp_mobilenet_v3_large", "num_classes": 3},
             "saliency": {"arch": "u2netp", "input_scale": 0.5}}
    for task, spec in specs.items():
        torch.manual_seed(0)
        net = build_network(task, spec)
        nets[task] = tmp_path / f"{task}.pt"
        save_task_network(nets[task], task, spec, net.state_dict(),
                          {"config": {"size": [64, 96]}})
    out = tmp_path / "report"
    assert main(["eval", "tasks", "--ir", str(tmp_path / "pairs" / "ir"),
                 "--vi", str(tmp_path / "pairs" / "vi"), "--boxes", str(tmp_path / "boxes"),
                 "--masks", str(tmp_path / "masks"), "--model", str(tmp_path / "model.pt"),
                 "--detector", str(nets["detection"]), "--segmenter", str(nets["segmentation"]),
                 "--saliency-net", str(nets["saliency"]), "--out", str(out),
                 "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["pairs"] == 2 and report["skipped_no_boxes"] == 1
    assert report["fusions"] == ["none", "detection", "saliency"]
    for fusion, row in report["rows"].items():
        assert 0.0 <= row["detection"]["mAP50"] <= 1.0, fusion
        assert row["detection"]["mAP50_95"] <= row["detection"]["mAP50"]
        assert row["detection"]["loss"] > 0
        assert 0.0 <= row["segmentation"]["mIoU"] <= 1.0 and len(row["segmentation"]["IoU"]) == 2
        assert 0.0 <= row["saliency"]["MAE"] <= 1.0 and row["saliency"]["loss"] > 0
        assert 0 < row["fusion"]["Qabf"] < 1 and 0 < row["fusion"]["SSIM"] <= 1
        assert row["fusion"]["EN"] > 0
    # the active random RSC changes the fused image, so the scores of a vector differ
    assert report["rows"]["detection"]["fusion"] != report["rows"]["none"]["fusion"]
    md = (out / "report.md").read_text()
    assert "| none |" in md and "det mAP@0.5" in md and "**" in md
    # rule labels, one network, one vector
    out2 = tmp_path / "report_rules"
    assert main(["eval", "tasks", "--ir", str(tmp_path / "pairs" / "ir"),
                 "--vi", str(tmp_path / "pairs" / "vi"), "--boxes", "rules",
                 "--model", str(tmp_path / "model.pt"), "--detector", "off",
                 "--segmenter", str(nets["segmentation"]), "--saliency-net", "off",
                 "--tasks", "saliency", "--out", str(out2), "--no-progress"]) == 0
    report = json.loads((out2 / "report.json").read_text())
    assert report["pairs"] == 3 and report["labels"] == {"boxes": "rules", "masks": "rules"}
    assert len(report["rows"]["none"]["segmentation"]["IoU"]) == 3
    assert set(report["rows"]["none"]) == {"fusion", "segmentation"}


def test_eval_tasks_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pairs = generate_pairs(1, seed=4, height=32, width=32)
    write_pairs(pairs, tmp_path / "pairs")
    args = ["eval", "tasks", "--ir", str(tmp_path / "pairs" / "ir"),
            "--vi", str(tmp_path / "pairs" / "vi"), "--out", str(tmp_path / "o")]
    assert main([*args, "--boxes", "rules", "--detector", "off", "--segmenter", "off",
                 "--saliency-net", "off"]) == 2
    assert "nothing to score" in capsys.readouterr().err
    assert main([*args, "--boxes", str(tmp_path / "nowhere"), "--detector",
                 str(tmp_path / "det.pt"), "--segmenter", "off", "--saliency-net", "off"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([*args, "--boxes", "rules", "--detector", str(tmp_path / "det.pt"),
                 "--segmenter", "off", "--saliency-net", "off"]) == 2
    assert "no detection network" in capsys.readouterr().err
