"""Task-network interface and adapters (import path; Ultralytics and torchvision where
installed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from cldyn_ros.training.task_networks import (
    IMAGENET_MEAN,
    FeatureLayerError,
    SmallSegNet,
    TaskAdapter,
    TaskNetwork,
    from_import_path,
    import_object,
    pool_feature,
    torchvision_segmentation,
    ultralytics_yolo,
)
from cldyn_ros.tv_compat import import_ultralytics

FACTORY = "cldyn_ros.training.task_networks:SmallSegNet"


class Tokens(nn.Module):
    """A toy transformer-like network: its 'encoder' emits (B, N, C) tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(3, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        tokens = self.encoder(x.flatten(2).transpose(1, 2))
        return {"out": self.head(tokens).mean(1)}


def test_task_network_is_frozen_but_differentiable_with_respect_to_its_input() -> None:
    net = SmallSegNet(width=4, feature_channels=8).train()
    task = TaskNetwork("t", net, "body", "bce")
    assert not net.training and all(not p.requires_grad for p in net.parameters())
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    out, feature = task.run(x)
    assert out.shape == (2, 1, 32, 32) and feature.shape == (2, 8, 8, 8)
    task.task_loss(out, torch.ones_like(out)).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())
    assert task.feature_dim() == 8


def test_missing_feature_layer_is_a_clear_error() -> None:
    with pytest.raises(FeatureLayerError, match=r"no layer 'bodi'.*did you mean body"):
        TaskNetwork("seg", SmallSegNet(width=4), "bodi", "bce")
    with pytest.raises(ValueError, match="unknown loss"):
        TaskNetwork("seg", SmallSegNet(width=4), "body", "focal")


def test_layer_that_does_not_run_is_reported() -> None:
    net = SmallSegNet(width=4)
    net.unused = nn.Conv2d(1, 1, 1)
    task = TaskNetwork("seg", net, "unused", "bce")
    with pytest.raises(FeatureLayerError, match="did not run"):
        task.run(torch.rand(1, 3, 16, 16))


def test_input_conventions_grey_and_normalised() -> None:
    rgb = torch.rand(1, 3, 8, 8)
    grey = TaskNetwork("g", nn.Sequential(nn.Conv2d(1, 2, 1)), "0", "mse", channels=1)
    y = grey.prepare(rgb)
    assert y.shape == (1, 1, 8, 8)
    assert torch.allclose(y[0, 0], 0.299 * rgb[0, 0] + 0.587 * rgb[0, 1] + 0.114 * rgb[0, 2],
                          atol=1e-5)
    norm = TaskNetwork("n", nn.Sequential(nn.Conv2d(3, 2, 1)), "0", "mse",
                       mean=IMAGENET_MEAN, std=(0.5, 0.5, 0.5))
    assert torch.allclose(norm.prepare(rgb)[0, 1], (rgb[0, 1] - 0.456) / 0.5)


def test_pooling_of_maps_tokens_vectors_and_containers() -> None:
    assert pool_feature(torch.ones(2, 5, 4, 4)).shape == (2, 5)
    assert pool_feature(torch.ones(2, 7, 5)).shape == (2, 5)
    assert pool_feature(torch.ones(2, 3)).shape == (2, 3)
    assert pool_feature((torch.ones(2, 4, 3, 3), torch.zeros(1))).shape == (2, 4)
    assert pool_feature({"out": torch.ones(2, 6, 2, 2)}).shape == (2, 6)
    task = TaskNetwork("tok", Tokens(), "encoder", "cross_entropy")
    out, feature = task.run(torch.rand(3, 3, 4, 4))
    assert pool_feature(feature).shape == (3, 6)
    assert task.task_loss(out, torch.tensor([0, 1, 1])).ndim == 0


def test_adapter_maps_any_scale_to_the_task_dimension() -> None:
    adapter = TaskAdapter(12, 16)
    small, large = torch.randn(4, 12), torch.randn(4, 12) * 1e4
    assert adapter(small).shape == (4, 16)
    assert adapter(large).abs().max() < 100  # the layer norm removes the feature scale


def test_import_path_adapter_loads_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ref = SmallSegNet(width=4, feature_channels=8)
    weights = tmp_path / "w.pt"
    torch.save({"state_dict": ref.state_dict()}, weights)
    task = from_import_path("edges", FACTORY, "body", "bce", weights=weights,
                            kwargs={"width": 4, "feature_channels": 8})
    x = torch.rand(1, 3, 16, 16)
    assert torch.allclose(task.run(x)[0], ref.eval()(x))
    assert task.description["factory"] == FACTORY
    loss = from_import_path("l", FACTORY, "body", "torch.nn.functional:l1_loss",
                            kwargs={"width": 4})
    assert loss.task_loss(torch.zeros(2), torch.ones(2)) == 1.0
    with pytest.raises(ValueError, match="cannot import"):
        import_object("no_such_package_xyz:thing")
    with pytest.raises(ValueError, match="has no attribute"):
        import_object("cldyn_ros.training.task_networks:Nope")
    with pytest.raises(TypeError, match="not a torch module"):
        from_import_path("x", "builtins:dict", "", "mse")


def test_torchvision_segmentation_adapter(tmp_path: Path) -> None:
    segmentation = pytest.importorskip(
        "torchvision.models.segmentation", reason="torchvision is not installed")
    torch.manual_seed(0)
    model = segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                   num_classes=3)
    weights = tmp_path / "seg.pt"
    torch.save(model.state_dict(), weights)
    task = torchvision_segmentation("seg", "lraspp_mobilenet_v3_large", weights, 3)
    out, feature = task.run(torch.rand(1, 3, 64, 64))
    assert pool_feature(feature).ndim == 2
    target = torch.randint(0, 3, (1, 64, 64))
    assert torch.isfinite(task.task_loss(out, target))


def test_ultralytics_yolo_adapter(tmp_path: Path) -> None:
    pytest.importorskip("ultralytics", reason="ultralytics is not installed")
    import_ultralytics()
    from ultralytics import YOLO

    model = YOLO("yolov8n.yaml")  # built from the architecture file, no download
    weights = tmp_path / "yolo.pt"
    model.save(str(weights))
    task = ultralytics_yolo("det", weights)
    out, feature = task.run(torch.rand(2, 3, 64, 64))
    assert pool_feature(feature).shape[0] == 2
    target = {"batch_idx": torch.tensor([0.0]), "cls": torch.tensor([[0.0]]),
              "bboxes": torch.tensor([[0.5, 0.5, 0.2, 0.3]])}
    assert torch.isfinite(task.task_loss(out, target))


@pytest.mark.parametrize("task", ["detection", "segmentation", "saliency"])
def test_task_file_adapter_runs_the_networks_of_cldyn_train_task(tmp_path: Path,
                                                                 task: str) -> None:
    pytest.importorskip("ultralytics", reason="the 'tasks' extra is not installed")
    pytest.importorskip("torchvision", reason="the 'tasks' extra is not installed")
    from cldyn_ros.training.rsc import network_from_spec
    from cldyn_ros.training.task_train import DEFAULT_NETWORKS, build_network, save_task_network

    torch.manual_seed(0)
    spec = DEFAULT_NETWORKS[task]
    weights = tmp_path / f"{task}.pt"
    save_task_network(weights, task, spec, build_network(task, spec).state_dict(), {})
    net = network_from_spec(task, {"adapter": "task_file", "weights": str(weights)}, tmp_path)
    assert net.description["task"] == task and not net.module.training
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    out, feature = net.run(x)
    expected_dim = {"detection": 256, "segmentation": 960, "saliency": 64}[task]
    assert pool_feature(feature).shape == (2, expected_dim)
    if task == "detection":
        target = {"batch_idx": torch.tensor([0.0, 1.0]), "cls": torch.tensor([[0.0], [2.0]]),
                  "bboxes": torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.4, 0.2, 0.2]])}
    elif task == "segmentation":
        target = torch.randint(0, 3, (2, 64, 64))
    else:
        target = (torch.rand(2, 1, 64, 64) > 0.7).float()
    loss = net.task_loss(out, target)
    loss.backward()
    assert torch.isfinite(loss) and x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.module.parameters())
    # the yolo adapter recognises the same file
    if task == "detection":
        assert ultralytics_yolo("det", weights).description["adapter"] == "task_file"
