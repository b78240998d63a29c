"""One-file checkpoints: weights, named task vectors and metadata.

Layout (a plain dict, loadable with ``torch.load(..., weights_only=True)``)::

    format:          "cldyn_ros.checkpoint"
    format_version:  1
    config:          CLDyNConfig.to_dict()
    state_dict:      model weights
    task_vectors:    {task name: (task_dim,) float tensor}
    metadata:        {"trained_on": ..., "training": {...}, "created": ..., ...}
"""

from __future__ import annotations

import datetime as _dt
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..model import CLDyN, CLDyNConfig

# The file-format identifier (kept when the module moved: shipped checkpoints carry it).
FORMAT = "cldyn_ros.checkpoint"
FORMAT_VERSION = 1
#: Reserved task name: plain VFN fusion, no compensation.
NO_TASK = "none"


class CheckpointError(Exception):
    """A checkpoint could not be used; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"cannot use model file '{path}': {problem}")


@dataclass
class LoadedModel:
    """A model in eval mode with its task vectors and metadata."""

    model: CLDyN
    task_vectors: dict[str, Tensor] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def task_names(self) -> list[str]:
        return sorted(self.task_vectors)


def save_checkpoint(
    path: str | os.PathLike,
    model: CLDyN,
    task_vectors: dict[str, Tensor] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` with its task vectors and metadata to ``path`` atomically.

    The file is written next to the target and renamed, so a crash never leaves a
    half-written checkpoint under the final name.
    """
    path = Path(path)
    task_vectors = dict(task_vectors or {})
    if NO_TASK in task_vectors:
        raise ValueError(f"'{NO_TASK}' is reserved for plain fusion and cannot name a task")
    dim = model.config.task_dim
    for name, vec in task_vectors.items():
        if vec.shape != (dim,):
            raise ValueError(f"task vector '{name}' has shape {tuple(vec.shape)}, want ({dim},)")
    meta = {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    meta.update(metadata or {})
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "task_vectors": {k: v.detach().float().cpu() for k, v in task_vectors.items()},
        "metadata": meta,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Raises:
        CheckpointError: the file is missing, empty, truncated, corrupt, not a cldyn_ros
            checkpoint, of an invalid or newer format version, its weights do not fit its
            architecture, or its task vectors do not fit its RSC (or it has none).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "file not found" if not path.exists() else "not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(path, "file is empty")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for damaged archives
        if isinstance(e, pickle.UnpicklingError) and "Unsupported global" in str(e):
            # weights_only refuses arbitrary classes: such a file is not one of ours.
            raise CheckpointError(path, "contains objects other than weights and metadata "
                                  "(not a cldyn_ros checkpoint, or unsafe)") from e
        raise CheckpointError(path, f"truncated or corrupt ({first_line(e)})") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(path, f"not a {FORMAT} file")
    version = payload.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(path, f"invalid format version {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            path, f"format version {version} is newer than supported ({FORMAT_VERSION})"
        )
    try:
        config = CLDyNConfig.from_dict(dict(payload["config"]))
        model = CLDyN(config)
        model.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(path, f"incompatible weights ({first_line(e)})") from e
    raw_vectors = payload.get("task_vectors", {})
    if not isinstance(raw_vectors, dict):
        raise CheckpointError(path, "task vectors are malformed (not a mapping)")
    if raw_vectors and model.rsc is None:
        raise CheckpointError(
            path, f"it has task vectors {sorted(map(str, raw_vectors))} but its model has no "
            "RSC to apply them (with_rsc is false): not a consistent checkpoint")
    task_vectors: dict[str, Tensor] = {}
    for name, vec in raw_vectors.items():
        if name == NO_TASK:
            raise CheckpointError(path, f"'{NO_TASK}' is reserved and cannot name a task")
        if not isinstance(vec, Tensor):
            raise CheckpointError(path, f"task vector '{name}' is malformed (a "
                                  f"{type(vec).__name__}, not a tensor)")
        if vec.shape != (config.task_dim,):
            raise CheckpointError(path, f"task vector '{name}' is malformed: shape "
                                  f"{tuple(vec.shape)}, but the model's RSC takes "
                                  f"({config.task_dim},)")
        if not vec.is_floating_point() or not torch.isfinite(vec).all():
            raise CheckpointError(path, f"task vector '{name}' is malformed (not finite "
                                  "floating-point values)")
        task_vectors[str(name)] = vec.float().to(device)
    metadata = payload.get("metadata", {})
    if not isinstance(metadata, dict):
        raise CheckpointError(path, "metadata is malformed (not a mapping)")
    model.eval().to(device)
    return LoadedModel(model=model, task_vectors=task_vectors, metadata=dict(metadata),
                       path=path)


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type name when it has none)."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
