"""Import the optional task-network packages (torchvision, Ultralytics, transformers) safely.

Called before anything imports torchvision: :mod:`cldyn_ros.metrics` (torchmetrics imports
torchvision whenever it is installed) and the task-network adapters.

The only torchvision wheels for the project's torch are CUDA builds: their compiled operator
library needs CUDA's ``libc10_cuda.so`` and does not load beside the CPU build of torch, and
``import torchvision`` then fails because the operator ``torchvision::nms`` does not exist.
Models, transforms and the Python ops work once the ``torchvision::nms`` and
``torchvision::qnms`` schemas exist, so :func:`ensure_torchvision_ops` defines them with
``torch.library`` and registers a plain PyTorch non-maximum suppression as their CPU kernel,
but only where torchvision's own library cannot be loaded (with a matching CUDA torch nothing
changes).

:func:`import_ultralytics` and :func:`import_transformers` also switch both packages to
offline mode before their first import (no settings file written in the home folder, no
DNS look-ups, no automatic pip installs, no model-hub requests).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import tempfile
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

__all__ = [
    "ensure_torchvision_ops",
    "import_torchvision",
    "import_optional",
    "import_transformers",
    "import_ultralytics",
    "nms",
]

_LIBRARY: torch.library.Library | None = None  # keeps the fallback definitions alive


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression.

    Args:
        boxes: ``(N, 4)`` boxes as ``x1, y1, x2, y2``.
        scores: ``(N,)`` scores.
        iou_threshold: boxes overlapping a kept, higher-scoring box by more than this IoU
            are dropped.

    Returns:
        ``(K,)`` int64 indices of the kept boxes, by decreasing score (torchvision's
        contract).
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    if boxes.is_quantized:
        boxes = boxes.dequantize()
    if scores.is_quantized:
        scores = scores.dequantize()
    boxes = boxes.float()
    order = scores.float().argsort(descending=True)
    boxes = boxes[order]
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    n = boxes.shape[0]
    removed = torch.zeros(n, dtype=torch.bool)
    keep = []
    # One vectorised IoU row per kept box: O(N) memory, the loop runs over kept boxes only.
    for i in range(n):
        if removed[i]:
            continue
        keep.append(i)
        if i + 1 == n:
            break
        rest = slice(i + 1, n)
        w = (torch.minimum(x2[i], x2[rest]) - torch.maximum(x1[i], x1[rest])).clamp(min=0)
        h = (torch.minimum(y2[i], y2[rest]) - torch.maximum(y1[i], y1[rest])).clamp(min=0)
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter).clamp(min=1e-12)
        removed[rest] |= iou > iou_threshold
    return order[torch.as_tensor(keep, dtype=torch.long, device=order.device)]


def _torchvision_library_loads() -> bool:
    """Whether torchvision's compiled operator library loads (it defines the real ops)."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    folder = Path(next(iter(spec.submodule_search_locations)))
    candidates = sorted(folder.glob("_C*.so")) + sorted(folder.glob("_C*.pyd"))
    if not candidates:
        return False
    try:
        torch.ops.load_library(str(candidates[0]))
    except (OSError, RuntimeError):  # needs CUDA libraries this torch does not have
        return False
    return True


def _has_op(name: str) -> bool:
    try:
        getattr(torch.ops.torchvision, name)
    except (AttributeError, RuntimeError):
        return False
    return True


def ensure_torchvision_ops() -> None:
    """Make ``import torchvision`` work beside a CPU torch (see the module docstring).

    Idempotent; does nothing where the ops already exist or torchvision's own library loads.
    """
    global _LIBRARY
    if _LIBRARY is not None or importlib.util.find_spec("torchvision") is None:
        return
    if _has_op("nms"):
        return
    if _torchvision_library_loads() and _has_op("nms"):
        return
    lib = torch.library.Library("torchvision", "DEF")  # noqa: TOR901 (a new namespace)
    for name in ("nms", "qnms"):
        lib.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.impl(name, nms, "CPU")
    _LIBRARY = lib


def _offline_environment() -> None:
    config_dir = Path(os.environ.get("YOLO_CONFIG_DIR")
                      or Path(tempfile.gettempdir()) / f"cldyn_ultralytics_{os.getuid()}")
    config_dir.mkdir(parents=True, exist_ok=True)
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _import(name: str, extra: str) -> ModuleType:
    _offline_environment()
    ensure_torchvision_ops()
    if name != "torchvision" and importlib.util.find_spec("torchvision") is not None:
        import_torchvision()  # both import it when installed
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise ImportError(f"this needs the '{extra}' package: install the optional extra "
                          f"with `make tasks` (or pip install .[tasks]) ({e})") from e


def import_torchvision() -> ModuleType:
    """``torchvision``, importable beside a CPU torch.

    Where the fallback ops are in use, torchvision's "has its compiled ops" flag is set, so
    that ``torchvision.ops.nms`` (which Ultralytics calls) reaches the fallback kernel instead
    of refusing; the other compiled ops (``roi_align``, ...) still fail, with torch's
    "operator does not exist" error.
    """
    torchvision = _import("torchvision", "torchvision")
    if _LIBRARY is not None:
        torchvision.extension._has_ops = lambda: True
    return torchvision


def import_ultralytics() -> ModuleType:
    """``ultralytics`` in offline mode (settings under a temporary folder unless
    ``YOLO_CONFIG_DIR`` is set)."""
    return _import("ultralytics", "ultralytics")


def import_transformers() -> ModuleType:
    """``transformers`` in offline mode."""
    return _import("transformers", "transformers")


def import_optional(name: str) -> ModuleType:
    """A module of one of the optional packages (e.g. ``ultralytics.nn.tasks``), imported
    the safe way (offline, torchvision's operators defined first)."""
    package = name.partition(".")[0]
    if package not in ("torchvision", "ultralytics", "transformers"):
        raise ValueError(f"'{name}' is not a module of the optional task-network packages")
    {"torchvision": import_torchvision, "ultralytics": import_ultralytics,
     "transformers": import_transformers}[package]()
    return _import(name, package)
