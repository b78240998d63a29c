"""Task-network files written by ``cldyn train task``: the architectures they name and
their save / load format (tensors and plain data only, ``weights_only`` loads)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DEFAULT_NETWORKS: dict[str, dict[str, Any]] = {
    "detection": {"arch": "yolov8n.yaml", "num_classes": 3},
    "segmentation": {"arch": "lraspp_mobilenet_v3_large", "num_classes": 3},
    "saliency": {"arch": "u2netp", "input_scale": 0.5},
}



def build_network(task: str, spec: dict[str, Any]) -> nn.Module:
    """A randomly initialised task network from its spec (see :data:`DEFAULT_NETWORKS`)."""
    from ..tv_compat import import_optional, import_torchvision  # noqa: PLC0415

    spec = {**DEFAULT_NETWORKS[task], **spec}
    if task == "detection":
        tasks = import_optional("ultralytics.nn.tasks")
        cfg = import_optional("ultralytics.cfg")
        model = tasks.DetectionModel(spec["arch"], nc=int(spec["num_classes"]), verbose=False)
        # the detection loss reads its gains from Ultralytics' default configuration
        model.args = cfg.get_cfg(import_optional("ultralytics.utils").DEFAULT_CFG)
        return model
    if task == "segmentation" and spec["arch"].startswith("segformer"):
        return SegFormer(spec["arch"], int(spec["num_classes"]))
    if task == "segmentation":
        segmentation = import_torchvision().models.segmentation
        builder = getattr(segmentation, spec["arch"], None)
        if builder is None:
            raise ValueError(f"torchvision has no segmentation model '{spec['arch']}'")
        return builder(weights=None, weights_backbone=None,
                       num_classes=int(spec["num_classes"]))
    from .sod import U2NetP  # noqa: PLC0415

    if spec["arch"] != "u2netp":
        raise ValueError(f"unknown saliency network '{spec['arch']}' (use u2netp)")
    return U2NetP(input_scale=float(spec.get("input_scale", 1.0)))


#: SegFormer encoders (MiT) by name: hidden sizes, depths, decoder width.
SEGFORMER_VARIANTS = {
    "segformer_b0": ([32, 64, 160, 256], [2, 2, 2, 2], 256),
    "segformer_b1": ([64, 128, 320, 512], [2, 2, 2, 2], 256),
    "segformer_b2": ([64, 128, 320, 512], [3, 4, 6, 3], 768),
}


class SegFormer(nn.Module):
    """A transformers SegFormer (random initial weights, built from its config) behind the
    torchvision interface: ``(B, 3, H, W) -> {"out": (B, K, H, W)}`` logits (SegFormer's
    1/4-resolution logits upsampled bilinearly). Feature layers: ``model.segformer.stages.i``.
    """

    def __init__(self, arch: str = "segformer_b0", num_classes: int = 3) -> None:
        super().__init__()
        from ..tv_compat import import_transformers  # noqa: PLC0415

        if arch not in SEGFORMER_VARIANTS:
            raise ValueError(f"unknown SegFormer '{arch}'; choose from "
                             f"{sorted(SEGFORMER_VARIANTS)}")
        transformers = import_transformers()
        hidden, depths, decoder = SEGFORMER_VARIANTS[arch]
        config = transformers.SegformerConfig(num_labels=num_classes, hidden_sizes=hidden,
                                              depths=depths, decoder_hidden_size=decoder)
        self.model = transformers.SegformerForSemanticSegmentation(config)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        logits = self.model(pixel_values=x).logits
        return {"out": F.interpolate(logits, size=x.shape[-2:], mode="bilinear",
                                     align_corners=False)}


def save_task_network(path: str | Path, task: str, network: dict[str, Any],
                      state_dict: dict[str, Tensor], metadata: dict[str, Any],
                      half: bool = False) -> None:
    """Weights file of a trained task network: ``{"task", "network", "state_dict",
    "metadata"}`` (tensors and plain data only: loads with ``weights_only=True``).
    ``half`` stores floating-point tensors as float16 (half the size; they load back into
    the float32 network)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    state = {k: v.detach().cpu() for k, v in state_dict.items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    torch.save({"format": "cldyn_ros task network", "task": task, "network": dict(network),
                "state_dict": state,
                "metadata": json.loads(json.dumps(metadata, default=str))}, tmp)
    tmp.replace(path)


def export_task_network(src: str | Path, dst: str | Path, half: bool = True) -> None:
    """Copy a task-network file (e.g. for ``models/``), in float16 by default."""
    data = torch.load(src, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or data.get("format") != "cldyn_ros task network":
        raise ValueError(f"{src} is not a cldyn_ros task-network file")
    save_task_network(dst, data["task"], data["network"], data["state_dict"],
                      data.get("metadata", {}), half=half)


def load_task_network(path: str | Path) -> tuple[str, dict[str, Any], nn.Module, dict]:
    """``(task, network spec, module in eval mode, metadata)`` from :func:`save_task_network`."""
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or data.get("format") != "cldyn_ros task network":
        raise ValueError(f"{path} is not a cldyn_ros task-network file")
    model = build_network(data["task"], data["network"])
    model.load_state_dict(data["state_dict"])  # float16 files load into float32 weights
    return data["task"], data["network"], model.eval(), data.get("metadata", {})
