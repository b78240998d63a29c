"""Frozen downstream task networks (DTNs) for closed-loop RSC training.

One small interface, :class:`TaskNetwork`, wraps any torch module with:

- the module itself, frozen (no gradient to its weights, kept in eval mode, so its batch
  norm statistics never move) but differentiable with respect to its input;
- the name of the layer whose output is the task feature (read with a forward hook);
- a differentiable task loss ``loss(output, target) -> scalar``;
- the input the network expects: RGB or grey, and a per-channel mean / std normalisation.

The network receives the fused image as RGB in ``[0, 1]`` (fused luminance with the visible
Cb, Cr, as the node renders it), ``(B, 3, H, W)``; :meth:`TaskNetwork.prepare` turns it into
what the network wants.

The task feature (any shape: ``(B, C, H, W)`` maps, ``(B, N, C)`` tokens, ``(B, C)``
vectors, or a tuple / dict holding one) is pooled to a vector ``(B, C)`` by
:func:`pool_feature` and mapped to the model's ``task_dim`` by a per-task
:class:`TaskAdapter` that trains along with RSC.

Adapters for real networks:

- :func:`from_import_path`: any module built by ``package.module:callable``;
- :func:`ultralytics_yolo`: an Ultralytics YOLO ``.pt`` file (detection loss of Ultralytics);
- :func:`torchvision_segmentation`: a torchvision segmentation model with the user's weights;
- :func:`from_task_file`: a network written by ``cldyn train task``.

Each imports its package only when called.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model import rgb_to_ycbcr

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LOSSES",
    "FeatureLayerError",
    "TaskAdapter",
    "SmallSegNet",
    "TaskNetwork",
    "from_import_path",
    "from_task_file",
    "import_object",
    "pool_feature",
    "torchvision_segmentation",
    "ultralytics_yolo",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FeatureLayerError(ValueError):
    """The named feature layer does not exist in the task network."""


def _first_tensor(x: Any) -> Tensor:
    """The first tensor inside a (possibly nested) tuple / list / dict output."""
    if isinstance(x, Tensor):
        return x
    if isinstance(x, Mapping):
        if "out" in x:
            return _first_tensor(x["out"])
        for v in x.values():
            return _first_tensor(v)
    if isinstance(x, (tuple, list)) and x:
        return _first_tensor(x[0])
    raise TypeError(f"no tensor in task feature of type {type(x).__name__}")


def pool_feature(feature: Any) -> Tensor:
    """Global average pooling of a task feature to ``(B, C)``.

    ``(B, C, ...spatial)`` maps are averaged over space, ``(B, N, C)`` token sequences over
    tokens, ``(B, C)`` vectors are returned as they are.
    """
    f = _first_tensor(feature)
    if f.dim() == 2:
        return f
    if f.dim() == 3:  # transformer tokens (B, N, C)
        return f.mean(dim=1)
    if f.dim() >= 4:
        return f.flatten(2).mean(dim=2)
    raise ValueError(f"task feature must have a batch dimension, got shape {tuple(f.shape)}")


def _bce_logits(output: Any, target: Tensor) -> Tensor:
    out = _first_tensor(output)
    return F.binary_cross_entropy_with_logits(out, target.to(out.dtype))


def _cross_entropy(output: Any, target: Tensor) -> Tensor:
    out = _first_tensor(output)
    t = target.long()
    if t.dim() == out.dim():  # (B, 1, H, W) masks
        t = t.squeeze(1)
    return F.cross_entropy(out, t, ignore_index=255)


def _mse(output: Any, target: Tensor) -> Tensor:
    out = _first_tensor(output)
    return F.mse_loss(out, target.to(out.dtype))


def _l1(output: Any, target: Tensor) -> Tensor:
    out = _first_tensor(output)
    return F.l1_loss(out, target.to(out.dtype))


def _bce_iou(output: Any, target: Tensor) -> Tensor:
    from .sod import bce_iou_loss  # noqa: PLC0415

    return bce_iou_loss(_first_tensor(output), target)


#: Named task losses usable from configuration files.
LOSSES: dict[str, Callable[[Any, Tensor], Tensor]] = {
    "bce": _bce_logits,
    "bce_iou": _bce_iou,
    "cross_entropy": _cross_entropy,
    "mse": _mse,
    "l1": _l1,
}


@dataclass
class TaskNetwork:
    """A frozen task network with its feature layer, task loss and input convention.

    Args:
        name: task name (becomes the task-vector name in the checkpoint).
        module: the network; frozen here (``requires_grad_(False)``, ``eval()``).
        feature_layer: dotted name of the sub-module whose output is the task feature
            (as in ``module.named_modules()``); ``""`` means the whole network's output.
        loss: ``loss(output, target) -> scalar``, differentiable; or a name in
            :data:`LOSSES`.
        channels: 3 to feed RGB, 1 to feed the fused luminance.
        mean, std: per-channel normalisation applied after scaling to ``[0, 1]``.
        forward: optional ``forward(module, x) -> output`` when calling the module directly
            is not how it runs (default ``module(x)``).
        description: free text stored in the checkpoint metadata (network, weights, data).

    Raises:
        FeatureLayerError: ``feature_layer`` is not a sub-module of ``module``.
    """

    name: str
    module: nn.Module
    feature_layer: str
    loss: Callable[[Any, Any], Tensor] | str
    channels: int = 3
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    forward: Callable[[nn.Module, Tensor], Any] | None = None
    description: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.loss, str):
            if self.loss not in LOSSES:
                raise ValueError(f"unknown loss '{self.loss}'; choose from {sorted(LOSSES)}")
            self.description.setdefault("loss", self.loss)
            self.loss = LOSSES[self.loss]
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        self.module.requires_grad_(False)
        self.module.eval()
        modules = dict(self.module.named_modules())
        if self.feature_layer not in modules:
            names = [n for n in modules if n]
            close = difflib.get_close_matches(self.feature_layer, names, n=5, cutoff=0.4)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            listing = ", ".join(names[:40]) + (" ..." if len(names) > 40 else "")
            raise FeatureLayerError(
                f"task '{self.name}': the network has no layer '{self.feature_layer}'{hint} "
                f"(layers: {listing})"
            )
        self._layer = modules[self.feature_layer]
        self._captured: Any = None
        self._layer.register_forward_hook(self._hook)

    def _hook(self, _module: nn.Module, _inputs: Any, output: Any) -> None:
        self._captured = output

    def to(self, device: torch.device | str) -> TaskNetwork:
        self.module.to(device)
        return self

    def prepare(self, rgb: Tensor) -> Tensor:
        """Fused RGB ``(B, 3, H, W)`` in ``[0, 1]`` -> the network's input."""
        x = rgb_to_ycbcr(rgb)[:, :1] if self.channels == 1 else rgb
        if self.mean is not None:
            x = x - torch.as_tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        if self.std is not None:
            x = x / torch.as_tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return x

    def run(self, rgb: Tensor) -> tuple[Any, Any]:
        """Run on fused RGB; returns ``(output, feature)``."""
        self.module.eval()  # stays frozen even if someone called .train() on a parent
        self._captured = None
        x = self.prepare(rgb)
        out = self.forward(self.module, x) if self.forward else self.module(x)
        if self._captured is None:
            raise FeatureLayerError(
                f"task '{self.name}': layer '{self.feature_layer}' did not run in the forward "
                "pass (choose a layer on the network's path)"
            )
        feature, self._captured = self._captured, None
        return out, feature

    def task_loss(self, output: Any, target: Any) -> Tensor:
        return self.loss(output, target)  # type: ignore[operator]

    @torch.no_grad()
    def feature_dim(self, size: int = 64, device: torch.device | str = "cpu") -> int:
        """Width of the pooled feature, found with one probe forward pass."""
        _, feature = self.run(torch.full((1, 3, size, size), 0.5, device=device))
        return int(pool_feature(feature).shape[1])


class TaskAdapter(nn.Module):
    """Pooled task feature ``(B, C)`` -> task vector ``(B, task_dim)``.

    A parameter-free layer norm first (task features differ in scale by orders of
    magnitude between networks), then a trainable linear map.
    """

    def __init__(self, feature_dim: int, task_dim: int = 256) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(feature_dim, elementwise_affine=False)
        self.linear = nn.Linear(feature_dim, task_dim)

    def forward(self, pooled: Tensor) -> Tensor:
        return self.linear(self.norm(pooled.float()))


# ---------------------------------------------------------------------------------------
# Adapters
# ---------------------------------------------------------------------------------------


def import_object(path: str) -> Any:
    """``package.module:attr.sub`` (or ``package.module.attr``) -> the object."""
    if ":" in path:
        module_name, _, attr = path.partition(":")
    else:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"import path must look like 'package.module:name', got '{path}'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"cannot import '{module_name}' (from '{path}'): {e}") from e
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as e:
            raise ValueError(f"'{module_name}' has no attribute '{attr}'") from e
    return obj


def _load_weights(module: nn.Module, weights: str | Path) -> None:
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(
        state["state_dict"], Mapping
    ):
        state = state["state_dict"]
    module.load_state_dict(state)


def from_import_path(
    name: str,
    factory: str,
    feature_layer: str,
    loss: str | Callable[[Any, Any], Tensor],
    weights: str | Path | None = None,
    kwargs: Mapping[str, Any] | None = None,
    channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> TaskNetwork:
    """Build a module with ``factory(**kwargs)`` (an import path) and load ``weights``
    (a state dict, or a dict with a ``state_dict`` entry). ``loss`` is a name in
    :data:`LOSSES` or an import path of a callable ``loss(output, target)``.
    """
    module = import_object(factory)(**dict(kwargs or {}))
    if not isinstance(module, nn.Module):
        raise TypeError(f"'{factory}' returned {type(module).__name__}, not a torch module")
    if weights:
        _load_weights(module, weights)
    if isinstance(loss, str) and loss not in LOSSES:
        loss = import_object(loss)
    return TaskNetwork(
        name, module, feature_layer, loss, channels, mean, std,
        description={"adapter": "import", "factory": factory,
                     "weights": str(weights) if weights else None,
                     "feature_layer": feature_layer},
    )


def _yolo_task_network(name: str, model: Any, feature_layer: str | None,
                       description: dict[str, Any]) -> TaskNetwork:
    """A TaskNetwork around an Ultralytics ``DetectionModel`` with its detection loss."""
    from types import SimpleNamespace  # noqa: PLC0415

    if feature_layer is None:
        feature_layer = f"model.{len(model.model) - 2}"
    hyp = {"box": 7.5, "cls": 0.5, "dfl": 1.5}  # Ultralytics defaults
    raw = getattr(model, "args", None)
    args = dict(raw) if isinstance(raw, dict) else dict(vars(raw)) if raw is not None else {}
    hyp.update({k: v for k, v in args.items() if k in hyp})
    model.args = SimpleNamespace(**{**args, **hyp})
    model.float()

    def loss(output: Any, target: Mapping[str, Tensor]) -> Tensor:
        if getattr(model, "criterion", None) is None:
            model.criterion = model.init_criterion()
        preds = output[1] if isinstance(output, tuple) else output
        batch_size = _first_tensor(preds).shape[0]
        total, _ = model.criterion(preds, dict(target))
        return total.sum() / batch_size  # Ultralytics scales its loss by the batch size

    return TaskNetwork(name, model, feature_layer, loss, channels=3,
                       description={**description, "feature_layer": feature_layer,
                                    "loss": "ultralytics detection"})


def ultralytics_yolo(
    name: str, weights: str | Path, feature_layer: str | None = None
) -> TaskNetwork:
    """An Ultralytics YOLO detection model file (``yolov5su.pt``, ``yolov8s.pt``, your own),
    or a detection network written by ``cldyn train task``.

    The task loss is Ultralytics' own detection loss (box + class + DFL) on targets in the
    Ultralytics batch layout, as :class:`~cldyn_ros.training.datasets.M3FDDetection` yields
    them: ``{"batch_idx": (K,), "cls": (K, 1), "bboxes": (K, 4) normalised xywh}``. Input is
    RGB in ``[0, 1]`` without further normalisation, as Ultralytics feeds it. The default
    feature layer is the last module before the detection head (for YOLOv5s the last head
    C3, 512 channels at stride 32, as in the paper; for YOLOv8n the last C2f, 256 channels).

    Requires the ``ultralytics`` package (imported only here, offline).
    """
    from ..tv_compat import import_ultralytics  # noqa: PLC0415

    if _is_task_file(weights):
        return from_task_file(name, weights, feature_layer)
    model = import_ultralytics().YOLO(str(weights)).model
    return _yolo_task_network(name, model, feature_layer,
                              {"adapter": "ultralytics", "weights": str(weights)})


def _is_task_file(path: str | Path) -> bool:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # an Ultralytics file holds pickled classes: not ours
        return False
    return isinstance(data, dict) and data.get("format") == "cldyn_ros task network"


#: Default feature layer per task of a ``cldyn train task`` network.
TASK_FILE_FEATURES = {"segmentation": None, "saliency": "stage6"}


def from_task_file(name: str, weights: str | Path, feature_layer: str | None = None
                   ) -> TaskNetwork:
    """A task network written by ``cldyn train task`` (its file says which architecture,
    task and classes): detection with Ultralytics' loss, segmentation with cross-entropy,
    saliency with BCE + IoU; ImageNet normalisation for the last two.

    Default feature layers: the last module before the YOLO head, the backbone's last stage
    (segmentation), the bottom stage ``stage6`` of U2NETP (saliency).
    """
    from .task_files import load_task_network  # noqa: PLC0415

    task, spec, network, _ = load_task_network(weights)
    module: Any = network  # Ultralytics / torchvision / transformers: untyped attributes
    description = {"adapter": "task_file", "task": task, "network": spec,
                   "weights": str(weights)}
    if task == "detection":
        return _yolo_task_network(name, module, feature_layer, description)
    if task == "segmentation":
        if feature_layer is not None:
            layer = feature_layer
        elif hasattr(module, "model"):  # SegFormer: the last stage
            stages = module.model.segformer.stages
            layer = f"model.segformer.stages.{len(stages) - 1}"
        else:
            names = [n for n, _ in module.backbone.named_children()]
            layer = "backbone.layer4" if "layer4" in names else f"backbone.{names[-1]}"
        loss: str = "cross_entropy"
    else:
        layer = feature_layer or str(TASK_FILE_FEATURES["saliency"])
        loss = "bce_iou"
    return TaskNetwork(name, module, layer, loss, channels=3, mean=IMAGENET_MEAN,
                       std=IMAGENET_STD, description={**description, "feature_layer": layer})


def torchvision_segmentation(
    name: str,
    arch: str,
    weights: str | Path,
    num_classes: int,
    feature_layer: str | None = None,
    ignore_index: int = 255,
) -> TaskNetwork:
    """A torchvision segmentation model (``deeplabv3_resnet50``, ``fcn_resnet50``,
    ``lraspp_mobilenet_v3_large``, ...) with ``num_classes`` outputs and the user's weights.

    Cross-entropy on ``(B, H, W)`` class masks (``ignore_index`` skipped), ImageNet input
    normalisation; the default feature layer is the backbone's last stage (``backbone.layer4``
    for ResNets, else the last backbone module). Requires ``torchvision``.
    """
    from ..tv_compat import import_torchvision  # noqa: PLC0415

    segmentation = import_torchvision().models.segmentation
    builder = getattr(segmentation, arch, None)
    if builder is None:
        raise ValueError(f"torchvision has no segmentation model '{arch}'")
    module = builder(weights=None, weights_backbone=None, num_classes=num_classes)
    _load_weights(module, weights)
    if feature_layer is None:
        names = [n for n, _ in module.backbone.named_children()]
        feature_layer = "backbone.layer4" if "layer4" in names else f"backbone.{names[-1]}"

    def loss(output: Any, target: Tensor) -> Tensor:
        out = _first_tensor(output)
        t = target.long()
        if t.dim() == 4:
            t = t.squeeze(1)
        return F.cross_entropy(out, t, ignore_index=ignore_index)

    return TaskNetwork(
        name, module, feature_layer, loss, channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        description={"adapter": "torchvision", "arch": arch, "weights": str(weights),
                     "num_classes": num_classes, "feature_layer": feature_layer,
                     "loss": "cross_entropy"},
    )


class SmallSegNet(nn.Module):
    """A small fully convolutional dense-prediction network (encoder with two stride-2
    stages, bottleneck, upsampling head) for self-supervised tasks and tests.

    The bottleneck ``body`` (``feature_channels`` channels at 1/4 resolution) is the natural
    feature layer. ``(B, in_channels, H, W) -> (B, out_channels, H, W)`` logits.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 1, width: int = 16,
                 feature_channels: int = 32) -> None:
        super().__init__()

        def block(i: int, o: int, stride: int = 1) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(i, o, 3, stride, 1), nn.BatchNorm2d(o), nn.ReLU())

        self.stem = block(in_channels, width)
        self.down = nn.Sequential(block(width, width * 2, 2), block(width * 2, width * 2))
        self.body = nn.Sequential(block(width * 2, feature_channels, 2),
                                  block(feature_channels, feature_channels))
        self.up = block(feature_channels + width * 2, width * 2)
        self.head = nn.Sequential(block(width * 2 + width, width),
                                  nn.Conv2d(width, out_channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        s = self.stem(x)
        d = self.down(s)
        b = self.body(d)
        u = F.interpolate(b, size=d.shape[-2:], mode="bilinear", align_corners=False)
        u = self.up(torch.cat([u, d], 1))
        u = F.interpolate(u, size=s.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(torch.cat([u, s], 1))
