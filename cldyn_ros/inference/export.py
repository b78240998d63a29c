"""ONNX export of the fusion network and an onnxruntime backend for the engine.

The exported graph is the inference form of CLDyN (:func:`.fast.inference_copy`)
with *static selection*: every A2SI branch runs all four convolution configurations
weighted by its one-hot gate. The forward value equals the per-configuration gather the
PyTorch path uses (``A2SI._selected``), whose data-dependent shapes (``nonzero``, index
puts) do not export; the price is about four times the (small) dynamic-convolution work.

Inputs and outputs of an exported model (all float32):

- ``ir``, ``vis_y``: ``(1, 1, H, W)`` in ``[0, 1]``;
- ``strength``: ``(T,)`` compensation strengths in ``[0, 1]`` (``0`` gives the plain VFN
  fusion exactly);
- ``weights`` (only with ``blend_input``): ``(T, K)`` non-negative blend weights over the
  ``K`` baked task vectors (normalised inside);
- output ``fused``: ``(T, 1, H, W)`` fused luminance in ``[0, 1]``.

Exporting the task ``none`` alone gives the plain VFN graph (inputs ``ir``, ``vis_y``;
output ``(1, 1, H, W)``): the only export of a model without RSC.

Without ``blend_input`` ``T = K`` and output ``i`` is baked task ``i``. The task names,
``T``, ``K``, the frame size (or ``dynamic``) and the embedding size are stored in the
model's metadata (``cldyn_ros`` key, JSON). With ``dynamic`` height and width are free;
the block-average factor of the reduced-resolution embedding stays the one of the export
size (other sizes then embed at a proportionally different resolution), and the dynamic
convolutions are exported as im2col matrix products (the TorchScript exporter cannot
export a convolution with a data-dependent weight once the sizes are symbolic); this uses
about nine times the memory of those layers. Fixed-size exports keep real convolutions.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..model import CLDyN
from .backend import TaskError, TaskRequest
from .checkpoint import NO_TASK, LoadedModel
from .fast import inference_copy

META_KEY = "cldyn_ros"
OPSET = 17


class ExportError(ValueError):
    """The export cannot be done as asked (unknown task, bad size, exporter failure)."""


class FusionGraph(nn.Module):
    """The exportable network: baked task vectors ``(K, D)``, strengths per output, and
    optional blend weights (see the module docstring)."""

    def __init__(self, model: CLDyN, vectors: Tensor, blend_input: bool,
                 unfold_conv: bool = False) -> None:
        super().__init__()
        if model.rsc is None:
            raise ExportError("this model has no RSC: export it without tasks is not supported")
        self.model = inference_copy(model).set_static_selection(True, unfold_conv)
        self.vectors: Tensor
        self.register_buffer("vectors", vectors.float().clone())
        self.blend_input = blend_input

    def forward(self, ir: Tensor, vis_y: Tensor, strength: Tensor,
                weights: Tensor | None = None) -> Tensor:
        if self.blend_input:
            assert weights is not None, "a blend-input graph needs weights"
            w = weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-12)
            vectors = w @ self.vectors
        else:
            vectors = self.vectors
        fused = self.model.fuse_tasks(ir, vis_y, vectors, strength)  # (T, 1, 1, H, W)
        return fused.reshape(vectors.shape[0], 1, ir.shape[-2], ir.shape[-1])


class PlainGraph(nn.Module):
    """Plain VFN fusion (the task ``none``): ``ir, vis_y -> fused (1, 1, H, W)``."""

    def __init__(self, model: CLDyN) -> None:
        super().__init__()
        self.model = inference_copy(model)

    def forward(self, ir: Tensor, vis_y: Tensor) -> Tensor:
        return self.model(ir, vis_y)


def export_onnx(
    loaded: LoadedModel,
    tasks: Sequence[str],
    out: str | os.PathLike | io.BytesIO,
    height: int = 512,
    width: int = 640,
    dynamic: bool = False,
    blend_input: bool = False,
    outputs: int = 1,
    embed_max_side: int | None = None,
) -> dict[str, Any]:
    """Export ``loaded``'s network with the task vectors of ``tasks`` baked in.

    Args:
        tasks: task names of the checkpoint (at least one; ``none`` is not a task: any
            output with strength 0 is the plain fusion).
        out: file path or a binary buffer.
        height, width: frame size of the graph (the trace size with ``dynamic``).
        dynamic: free height and width.
        blend_input: take ``weights (T, K)`` as an input; ``outputs`` is then ``T``.
        embed_max_side: A2SI embedding size (``None``: the checkpoint's setting).

    Returns:
        The metadata stored in the model.
    """
    tasks = list(tasks)
    plain = tasks == [NO_TASK]
    if not tasks:
        raise ExportError("name at least one task to bake in (--task NAME or --tasks a,b), "
                          f"or '{NO_TASK}' for plain fusion")
    bad = [t for t in tasks if t not in loaded.task_vectors]
    if bad and not plain:
        raise ExportError(f"unknown task(s) {bad}; this model has {loaded.task_names}"
                          + (f" ('{NO_TASK}' is strength 0 of any task)" if NO_TASK in bad
                             else ""))
    if len(set(tasks)) != len(tasks):
        raise ExportError(f"tasks must be distinct, got {tasks}")
    if height < 8 or width < 8:
        raise ExportError(f"frame size must be at least 8x8, got {height}x{width}")
    model = loaded.model.cpu().eval()
    if embed_max_side is None:
        embed_max_side = model.embed_max_side
    if plain:
        graph: nn.Module = PlainGraph(model).eval()
        blend_input = False
        k = t = 1
    else:
        vectors = torch.stack([loaded.task_vectors[t].float().cpu() for t in tasks])
        graph = FusionGraph(model, vectors, blend_input, unfold_conv=dynamic).eval()
        graph.model.set_embed_max_side(embed_max_side)
        k = len(tasks)
        t = outputs if blend_input else k
    if t < 1:
        raise ExportError(f"outputs must be >= 1, got {t}")
    gen = torch.Generator().manual_seed(0)
    ir = torch.rand(1, 1, height, width, generator=gen)
    vis = torch.rand(1, 1, height, width, generator=gen)
    args: tuple = (ir, vis) if plain else (ir, vis, torch.ones(t))
    names = ["ir", "vis_y"] if plain else ["ir", "vis_y", "strength"]
    if blend_input:
        args = (*args, torch.full((t, k), 1.0 / k))
        names.append("weights")
    dynamic_axes = None
    if dynamic:
        dynamic_axes = {"ir": {2: "height", 3: "width"}, "vis_y": {2: "height", 3: "width"},
                        "fused": {2: "height", 3: "width"}}
    meta = {
        "format": 1,
        "plain": plain,
        "tasks": [] if plain else tasks,
        "outputs": t,
        "blend_input": blend_input,
        "height": None if dynamic else height,
        "width": None if dynamic else width,
        "trace_size": [height, width],
        "dynamic": dynamic,
        "embed_max_side": embed_max_side,
        "config": model.config.to_dict(),
        "selection": "static (gated mixture of all configurations)",
    }
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(graph, args, buffer,  # type: ignore[arg-type]  # a file object
                              input_names=names, output_names=["fused"],
                              opset_version=OPSET, dynamic_axes=dynamic_axes, dynamo=False)
    except Exception as e:  # exporter failures are many types
        raise ExportError(f"ONNX export failed: {type(e).__name__}: {e}") from e
    import onnx

    proto = onnx.load_from_string(buffer.getvalue())
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta)
    data = proto.SerializeToString()
    if isinstance(out, io.BytesIO):
        out.write(data)
    else:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return meta


def default_providers() -> list[str]:
    """TensorRT, CUDA, then CPU, as far as this onnxruntime build has them."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    order = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    return [p for p in order if p in available] or available


class OnnxRunner:
    """A :class:`~cldyn_ros.inference.backend.FusionBackend` running an exported model for
    :class:`~cldyn_ros.inference.engine.FusionEngine`
    (``backend="onnx"``): maps the engine's task requests onto the model's baked tasks
    (blends through the ``weights`` input when the model has one)."""

    def __init__(self, model: bytes | str | os.PathLike, vectors: dict[str, Tensor],
                 providers: Sequence[str] | None = None, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        source = model if isinstance(model, bytes) else str(model)
        try:
            self.session = ort.InferenceSession(source, options,
                                                providers=list(providers or default_providers()))
        except Exception as e:
            raise ExportError(f"cannot load ONNX model: {type(e).__name__}: {e}") from e
        raw = self.session.get_modelmeta().custom_metadata_map.get(META_KEY)
        if raw is None:
            raise ExportError("not a cldyn_ros ONNX model (no cldyn_ros metadata)")
        self.meta = json.loads(raw)
        self.plain = bool(self.meta.get("plain", False))
        self.tasks: list[str] = self.meta["tasks"]
        missing = [t for t in self.tasks if t not in vectors]
        if missing:
            raise ExportError(f"the ONNX model's tasks {missing} are not in the loaded model")
        self.basis = (torch.zeros(1, 1) if self.plain else
                      torch.stack([vectors[t].float().cpu() for t in self.tasks]))  # (K, D)
        self.outputs = int(self.meta["outputs"])
        self.blend = bool(self.meta["blend_input"])

    @classmethod
    def create(cls, loaded: LoadedModel, embed_max_side: int,
               path: str | os.PathLike | None, tasks: Sequence[str] | None,
               providers: Sequence[str] | None) -> OnnxRunner:
        """From the file at ``path``, or exported on the fly for ``tasks``."""
        vectors = loaded.task_vectors
        threads = torch.get_num_threads()
        if path is not None:
            return cls(path, vectors, providers, threads)
        tasks = list(tasks or loaded.task_names) or [NO_TASK]
        buf = io.BytesIO()
        export_onnx(loaded, tasks, buf, dynamic=True, embed_max_side=embed_max_side)
        return cls(buf.getvalue(), vectors, providers, threads)

    def weights_for(self, vector: Tensor) -> np.ndarray:
        """Blend weights over the baked tasks reproducing ``vector`` (least squares);
        raises :class:`~cldyn_ros.inference.backend.TaskError` when no blend does."""
        v = vector.detach().float().cpu()
        sol = torch.linalg.lstsq(self.basis.t(), v.unsqueeze(1)).solution[:, 0]
        err = (self.basis.t() @ sol - v).abs().max()
        if err > 1e-4 * max(1.0, float(v.abs().max())) or bool((sol < -1e-5).any()):
            raise TaskError(f"this ONNX model only has the tasks {self.tasks} "
                            "(and their blends when exported with blend weights)")
        return sol.clamp_min(0).numpy()

    def fuse_luminance(self, ir: Tensor, vis_y: Tensor, reqs: Sequence[TaskRequest]) -> Tensor:
        h, w = ir.shape[-2:]
        if self.meta["height"] is not None and (h, w) != (self.meta["height"],
                                                           self.meta["width"]):
            raise TaskError(f"this ONNX model is for {self.meta['height']}x"
                            f"{self.meta['width']} frames, got {h}x{w} (export with --dynamic)")
        feeds_base = {"ir": ir.detach().float().cpu().numpy(),
                      "vis_y": vis_y.detach().float().cpu().numpy()}
        if self.plain:
            if any(not r.is_plain for r in reqs):
                raise TaskError("this ONNX model does plain fusion only (exported with "
                                f"--task {NO_TASK})")
            fused = torch.from_numpy(self.session.run(["fused"], feeds_base)[0])
            return fused.expand(len(reqs), -1, -1, -1).contiguous().to(ir.device)
        k = len(self.tasks)
        out: list[Tensor | None] = [None] * len(reqs)
        pending = list(range(len(reqs)))
        while pending:
            strength = np.zeros(self.outputs, np.float32)
            weights = np.full((self.outputs, k), 1.0 / k, np.float32)
            slots: dict[int, int] = {}
            used: set[int] = set()
            rest = []
            for i in pending:
                r = reqs[i]
                slot = None
                if self.blend:
                    slot = next((s for s in range(self.outputs) if s not in used), None)
                    if slot is not None and r.vector is not None and not r.is_plain:
                        weights[slot] = self.weights_for(r.vector)
                else:
                    if r.is_plain or r.vector is None:
                        slot = next((s for s in range(self.outputs) if s not in used), None)
                    else:
                        wts = self.weights_for(r.vector)
                        if np.count_nonzero(wts > 1e-6) != 1:
                            raise TaskError("task blends need an ONNX model exported with "
                                            "blend weights as an input (--blend-input)")
                        idx = int(wts.argmax())
                        slot = idx if idx not in used else None
                if slot is None:
                    rest.append(i)
                    continue
                used.add(slot)
                slots[i] = slot
                strength[slot] = 0.0 if r.is_plain else r.strength
            feeds = dict(feeds_base, strength=strength)
            if self.blend:
                feeds["weights"] = weights
            fused = torch.from_numpy(self.session.run(["fused"], feeds)[0])
            for i, slot in slots.items():
                out[i] = fused[slot]
            pending = rest
        return torch.stack(out).to(ir.device)  # type: ignore[arg-type]
