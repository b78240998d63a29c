"""The torchvision operator fallback (plain PyTorch NMS) and the offline imports of the
optional task-network packages."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from cldyn_ros import tv_compat

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None
HAS_ULTRALYTICS = importlib.util.find_spec("ultralytics") is not None


def _reference_nms(boxes: torch.Tensor, scores: torch.Tensor, thr: float) -> list[int]:
    """Textbook greedy NMS, one pair of boxes at a time."""
    def iou(a: torch.Tensor, b: torch.Tensor) -> float:
        w = max(0.0, float(min(a[2], b[2]) - max(a[0], b[0])))
        h = max(0.0, float(min(a[3], b[3]) - max(a[1], b[1])))
        inter = w * h
        area = float((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]))
        return inter / (area - inter)

    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    keep: list[int] = []
    for i in order:
        if all(iou(boxes[i], boxes[k]) <= thr for k in keep):
            keep.append(i)
    return keep


@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7])
def test_nms_matches_the_greedy_definition(thr: float) -> None:
    gen = torch.Generator().manual_seed(int(thr * 10))
    xy = torch.rand(120, 2, generator=gen) * 50
    wh = torch.rand(120, 2, generator=gen) * 20 + 1
    boxes = torch.cat([xy, xy + wh], 1)
    scores = torch.rand(120, generator=gen)
    kept = tv_compat.nms(boxes, scores, thr)
    assert kept.dtype == torch.long
    assert kept.tolist() == _reference_nms(boxes, scores, thr)


def test_nms_of_no_boxes_is_empty() -> None:
    assert tv_compat.nms(torch.zeros(0, 4), torch.zeros(0), 0.5).shape == (0,)


@pytest.mark.skipif(not HAS_TORCHVISION, reason="torchvision (the 'tasks' extra) not installed")
def test_torchvision_imports_and_its_nms_runs() -> None:
    torchvision = tv_compat.import_torchvision()
    gen = torch.Generator().manual_seed(1)
    xy = torch.rand(60, 2, generator=gen) * 30
    boxes = torch.cat([xy, xy + 10], 1)
    scores = torch.rand(60, generator=gen)
    assert torch.equal(torchvision.ops.nms(boxes, scores, 0.5), tv_compat.nms(boxes, scores, 0.5))
    model = torchvision.models.segmentation.lraspp_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=2).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 64))["out"].shape == (1, 2, 64, 64)


@pytest.mark.skipif(not HAS_ULTRALYTICS, reason="ultralytics (the 'tasks' extra) not installed")
def test_ultralytics_imports_offline() -> None:
    tv_compat.import_ultralytics()
    assert os.environ["YOLO_OFFLINE"] == "1"
    assert os.environ["YOLO_AUTOINSTALL"] == "False"
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.path.isdir(os.environ["YOLO_CONFIG_DIR"])
