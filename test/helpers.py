"""Shared test helpers: small random models, loaded checkpoints and frame pairs.

Import them as ``from helpers import make_model`` from any test module in ``test/``.
This works because ``test/`` has no ``__init__.py``: pytest's default ``prepend`` import
mode then puts ``test/`` itself on ``sys.path`` (as it does for ``conftest.py``). Do not add
``test/__init__.py``: the package would be called ``test``, which the standard library's
``test`` package shadows, and ``from helpers import ...`` would stop working.
"""

from __future__ import annotations

import signal
import subprocess

import numpy as np
import torch
from torch import nn

from cldyn_ros.inference.checkpoint import LoadedModel
from cldyn_ros.model import CLDyN, CLDyNConfig

# The test models are tiny: one thread is fastest, and with more threads than free cores
# (another job on the machine) OpenMP spinning makes every forward pass ~50x slower.
torch.set_num_threads(1)

TASKS = ("detection", "segmentation")


def activate_rsc(model: CLDyN, seed: int = 0, std: float = 1.0) -> CLDyN:
    """Give every A2SI block's zero-initialised output conv (``block.out``) small random
    weights, so compensation actually changes the fused image."""
    if model.rsc is None:
        return model
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for blocks in (model.rsc.blocks_ir, model.rsc.blocks_vis):
            for block in blocks:
                conv: nn.Conv2d = block.out
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * std)
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=gen) * std * 0.1)
    return model


def make_model(
    seed: int = 0, with_rsc: bool = True, active: bool = True, **config: object
) -> CLDyN:
    """A CLDyN in eval mode with seeded random weights.

    ``active=True`` re-initialises the A2SI output convs (see :func:`activate_rsc`);
    ``active=False`` keeps them zero, so RSC is an exact identity. Extra keyword arguments
    go to :class:`CLDyNConfig` (``num_blocks``, ``branches``, ...).
    """
    torch.manual_seed(seed)
    model = CLDyN(CLDyNConfig(with_rsc=with_rsc, **config))  # type: ignore[arg-type]
    if with_rsc and active:
        activate_rsc(model, seed)
    return model.eval()


def task_vectors(
    tasks: tuple[str, ...] = TASKS, dim: int = 256, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random task vectors of dimension ``dim``, one per name."""
    gen = torch.Generator().manual_seed(seed + 100)
    return {name: torch.randn(dim, generator=gen) for name in tasks}


def make_loaded(tasks: tuple[str, ...] = TASKS, seed: int = 0, **config: object) -> LoadedModel:
    """A :class:`LoadedModel` around :func:`make_model` with random task vectors."""
    model = make_model(seed, **config)
    vectors = task_vectors(tuple(tasks), model.config.task_dim, seed)
    return LoadedModel(model=model, task_vectors=vectors, metadata={"trained_on": "test"})


def random_pair(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A uint8 thermal ``h x w`` and a uint8 RGB ``h x w x 3`` frame.

    Smooth gradients plus noise, so the frames have both structure and texture.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = (xx / max(w - 1, 1) + yy / max(h - 1, 1)) * 0.5
    thermal = np.clip(ramp * 200 + rng.normal(0, 25, (h, w)), 0, 255).astype(np.uint8)
    base = np.stack([ramp, 1.0 - ramp, np.full_like(ramp, 0.5)], axis=-1) * 180
    color = np.clip(base + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)
    return thermal, color


def random_inputs(b: int, h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Network inputs ``ir, vis_y`` of shape ``(b, 1, h, w)`` in ``[0, 1]``."""
    gen = torch.Generator().manual_seed(seed + 200)
    return torch.rand(b, 1, h, w, generator=gen), torch.rand(b, 1, h, w, generator=gen)


def stop_process(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """Stop a child as Ctrl-C would (SIGINT), killing it if it is not gone in ``timeout`` s."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
