"""What every fusion backend shares: task requests, errors and the backend interface.

The engine (:mod:`cldyn_ros.inference.engine`) prepares the network inputs and renders
the outputs; a backend turns the inputs into fused luminance. Two implement
:class:`FusionBackend`: the PyTorch runner (:class:`~cldyn_ros.inference.engine.TorchRunner`)
and the ONNX Runtime one (:class:`~cldyn_ros.inference.export.OnnxRunner`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from torch import Tensor


class DeviceError(RuntimeError):
    """The device failed to fuse a frame (out of memory, CUDA error). The engine stays
    usable; ``fallback_device`` fuses such frames elsewhere instead of raising."""


class InputError(ValueError):
    """An input frame cannot be fused; the message says why."""


class TaskError(ValueError):
    """An unknown task name, a bad blend or an out-of-range strength."""


@dataclass(frozen=True)
class TaskRequest:
    """One output to compute for a frame.

    ``vector`` is ``None`` for plain fusion (the task ``none``); ``label`` names the output.
    """

    label: str
    vector: Tensor | None = None
    strength: float = 1.0

    @property
    def is_plain(self) -> bool:
        return self.vector is None or self.strength == 0.0


class FusionBackend(Protocol):
    """Network inputs -> fused luminance."""

    def fuse_luminance(self, ir: Tensor, vis_y: Tensor, reqs: Sequence[TaskRequest]) -> Tensor:
        """``ir`` and ``vis_y`` ``(1, 1, H, W)`` in ``[0, 1]`` -> ``(T, 1, H, W)`` fp32, one
        output per request, on the inputs' device."""
        ...
