"""Stage 2: closed-loop training of RSC against frozen task networks (reward-penalty loop).

For every step and every task ``n`` (one batch per task):

1. the frozen VFN fuses the batch (``I_f``, no gradient); the frozen task network runs on it,
   giving the task feature ``F_d`` (forward hook) and the "before" loss ``loss(I_f)``;
2. the pooled feature goes through the task's adapter (trainable ``Linear``) to a task
   vector; VFN + RSC fuse the batch with it (``I_fs``) and the task network runs again;
3. ``loss_n = l_r + delta * l_p`` with ``l_r = loss(I_fs)`` and
   ``l_p = max(0, loss(I_fs) - loss(I_f))`` (the penalty only bites when compensation hurts).

The per-task gradients of all trainable parameters (RSC, basis bank, adapters) are combined by
the CAGrad min-norm solve (:mod:`.mingrad`), clipped to norm 1 and applied with Adam.

Deployment vectors: the node has no task feature at run time, so each task's vector in the
final checkpoint is the mean adapter output over training batches of that task
(``vector_batches`` batches, fixed seed). Validation during training uses the running mean of
the adapter outputs (an exponential moving average over training batches), i.e. what the node
would get, and the best-checkpoint rule picks the step with the lowest mean over tasks of
``loss(compensated) / loss(uncompensated)`` on the validation batches.

Files: ``<out>`` (final checkpoint: best weights, task vectors, metadata),
``<out>.state.pt`` (resumable training state: re-run the same command to continue),
``<out>.train.csv`` (one row per evaluation) and, where TensorBoard is installed,
``<out>.tb/``.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from ..inference.checkpoint import load_checkpoint, save_checkpoint
from ..model import CLDyN, CLDyNConfig, rgb_to_ycbcr
from ..model.color import fused_rgb
from .datasets import (
    TaskData,
    read_fmb,
    read_m3fd,
    read_mask_folder,
    read_msrs_boxes,
    read_pairs,
    read_vt5000,
    read_yolo_folder,
    self_supervised,
)
from .history import write_history_csv
from .losses import FusionLoss
from .mingrad import cagrad
from .task_networks import (
    TaskAdapter,
    TaskNetwork,
    from_import_path,
    from_task_file,
    pool_feature,
    torchvision_segmentation,
    ultralytics_yolo,
)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


@dataclass
class RSCTrainConfig:
    """Settings of a stage-2 run (stored in the checkpoint metadata)."""

    vfn: str  # checkpoint with the trained VFN (its RSC, if any, is the starting point)
    out: str
    steps: int = 2000
    batch_size: int = 4
    crop: int = 256
    lr: float = 1e-2
    weight_decay: float = 1e-4
    penalty: float = 5.0  # delta: weight of l_p
    cagrad_c: float = 0.5  # c of the min-norm solve; 0 = plain averaging
    clip: float = 1.0
    precision: str = "fp32"
    eval_every: int = 100
    checkpoint_every: int = 50
    vector_batches: int = 16  # training batches per task averaged into the deployment vector
    ema: float = 0.98  # running mean of adapter outputs used for validation
    seed: int = 0
    max_minutes: float | None = None
    threads: int | None = None
    device: str = "cpu"
    rsc: dict[str, Any] = field(default_factory=dict)  # CLDyNConfig overrides (new RSC only)
    fresh_rsc: bool = False  # ignore an RSC already in the --vfn checkpoint
    # Fidelity: fidelity_weight x the VFN's own fusion loss on the compensated output, so
    # plain fusion quality is kept. The loss's weights come from the VFN checkpoint's
    # training metadata (the loss it was trained with); ``fidelity`` overrides them
    # (FusionLoss arguments: intensity_weight, gradient_weight, qabf_weight, ssim_weight,
    # qabf_border, anchor_weight).
    fidelity_weight: float = 0.0
    fidelity: dict[str, Any] = field(default_factory=dict)
    # Relative losses: each task's reward-penalty loss and its fidelity term are divided by
    # their values on the plain fusion of the same batch (constants), so tasks whose losses
    # differ in scale (a detection loss of ~7 beside a cross-entropy of ~0.4) weigh alike
    # in the min-norm solve and one fidelity_weight is the same trade for every task.
    relative: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}")
        if self.penalty < 0 or self.cagrad_c < 0 or self.fidelity_weight < 0:
            raise ValueError("penalty, cagrad_c and fidelity_weight must be >= 0")


@dataclass
class Task:
    """A frozen task network with its training (and optional validation) data."""

    network: TaskNetwork
    train: TaskData
    val: TaskData | None = None

    @property
    def name(self) -> str:
        return self.network.name


FUSION_LOSS_KEYS = ("intensity_weight", "gradient_weight", "qabf_weight", "ssim_weight",
                    "qabf_border", "anchor_weight")


def fidelity_loss(config: RSCTrainConfig) -> FusionLoss | None:
    """The fusion loss of the fidelity term: the VFN's training loss (from its checkpoint's
    metadata; the method's loss where none is recorded) with ``config.fidelity`` on top."""
    if not config.fidelity_weight:
        return None
    unknown = set(config.fidelity) - set(FUSION_LOSS_KEYS)
    if unknown:
        raise ValueError(f"unknown fidelity settings {sorted(unknown)}; "
                         f"use {', '.join(FUSION_LOSS_KEYS)}")
    recorded: dict[str, Any] = {}
    if config.vfn:
        training = load_checkpoint(config.vfn).metadata.get("training", {})
        if training.get("stage") == "vfn":
            recorded = {k: training[k] for k in FUSION_LOSS_KEYS if k in training}
    return FusionLoss(**{**recorded, **config.fidelity})


def build_model(config: RSCTrainConfig) -> CLDyN:
    """VFN from ``config.vfn`` (frozen later) with RSC: the checkpoint's own, or a new one."""
    loaded = load_checkpoint(config.vfn)
    base = loaded.model
    if base.rsc is not None and not config.fresh_rsc and not config.rsc:
        model = copy.deepcopy(base)
    else:
        settings = {**base.config.to_dict(), "with_rsc": True, **config.rsc}
        model = CLDyN(CLDyNConfig.from_dict(settings))
        model.vfn.load_state_dict(base.vfn.state_dict())
    return model


class Loop(nn.Module):
    """The closed-loop system: model (VFN frozen, RSC trainable) and per-task adapters."""

    def __init__(self, model: CLDyN, tasks: Sequence[Task], device: torch.device,
                 fidelity: FusionLoss | None = None) -> None:
        super().__init__()
        self.model = model.to(device)
        self.fidelity = fidelity
        self.tasks = list(tasks)
        self.device = device
        for t in self.tasks:
            t.network.to(device)
        self.model.vfn.requires_grad_(False)
        dims = {t.name: t.network.feature_dim(device=device) for t in self.tasks}
        task_dim = model.config.task_dim
        self.adapters = nn.ModuleDict({n: TaskAdapter(d, task_dim) for n, d in dims.items()})
        self.adapters.to(device)
        self.feature_dims = dims

    def train(self, mode: bool = True) -> Loop:
        super().train(mode)
        self.model.vfn.eval()  # frozen: batch-norm statistics stay as trained
        return self

    def trainable(self) -> list[nn.Parameter]:
        assert self.model.rsc is not None
        return [p for p in list(self.model.rsc.parameters()) + list(self.adapters.parameters())
                if p.requires_grad]

    @torch.no_grad()
    def before(self, task: Task, ir: Tensor, vis_rgb: Tensor, target: Any
               ) -> tuple[Tensor, Tensor, Tensor]:
        """Uncompensated fusion: ``(fused_y, pooled task feature, task loss)``."""
        vis_y = rgb_to_ycbcr(vis_rgb)[:, :1]
        fused = self.model.vfn(ir, vis_y)
        out, feature = task.network.run(fused_rgb(fused, vis_rgb))
        return fused, pool_feature(feature).float(), task.network.task_loss(out, target).float()

    def compensated_loss(self, task: Task, ir: Tensor, vis_rgb: Tensor, target: Any,
                         vectors: Tensor, per_sample: bool = True) -> Tensor:
        """Task loss on the compensated fusion with ``vectors`` ``(B, task_dim)`` (training,
        per sample) or one ``(task_dim,)`` vector (``per_sample=False``, eval-mode path the
        node uses)."""
        return self.compensated(task, ir, vis_rgb, target, vectors, per_sample)[0]

    def compensated(self, task: Task, ir: Tensor, vis_rgb: Tensor, target: Any,
                    vectors: Tensor, per_sample: bool = True) -> tuple[Tensor, Tensor]:
        """``(task loss, fused_y)`` of the compensated fusion (see :meth:`compensated_loss`)."""
        vis_y = rgb_to_ycbcr(vis_rgb)[:, :1]
        if per_sample:
            fused = self.model.fuse_per_sample(ir, vis_y, vectors)
        else:
            fused = self.model.fuse_tasks(ir, vis_y, vectors.view(1, -1))[0]
        out, _ = task.network.run(fused_rgb(fused, vis_rgb))
        return task.network.task_loss(out, target).float(), fused

    def fidelity_of(self, fused: Tensor, ir: Tensor, vis_rgb: Tensor) -> Tensor:
        """The fidelity loss (the VFN's fusion loss) of ``fused``; 0 without one."""
        if self.fidelity is None:
            return fused.new_zeros(())
        vis_y = rgb_to_ycbcr(vis_rgb)[:, :1]
        prior = self.model.vfn.prior_image(ir, vis_y)
        return self.fidelity(fused.float(), ir.float(), vis_y.float(),
                             None if prior is None else prior.float())


def reward_penalty(after: Tensor, before: Tensor, delta: float) -> tuple[Tensor, Tensor]:
    """``(l_r + delta * l_p, l_p)`` with ``l_r = after`` (task loss on the compensated
    fusion) and ``l_p = max(0, after - before)``; ``before`` is a constant (no gradient)."""
    l_p = torch.relu(after - before.detach())
    return after + delta * l_p, l_p


def _to(x: Any, device: torch.device) -> Any:
    if isinstance(x, Tensor):
        return x.to(device)
    if isinstance(x, Mapping):
        return {k: _to(v, device) for k, v in x.items()}
    return x


def train_step(loop: Loop, batches: Sequence[tuple[Tensor, Tensor, Any]],
               config: RSCTrainConfig, optim: torch.optim.Optimizer | None
               ) -> dict[str, Any]:
    """One closed-loop step: one batch per task; returns per-task figures.

    With ``optim=None`` the combined gradient is left in ``.grad`` and nothing is updated
    (used by the tests).
    """
    params = loop.trainable()
    rows: list[Tensor] = []
    stats: dict[str, Any] = {}
    autocast_dtype = PRECISIONS[config.precision]
    for task, (ir, vis_rgb, target) in zip(loop.tasks, batches, strict=True):
        ir, vis_rgb, target = (_to(v, loop.device) for v in (ir, vis_rgb, target))
        with torch.autocast(loop.device.type, dtype=autocast_dtype or torch.float32,
                            enabled=autocast_dtype is not None):
            plain, pooled, loss_before = loop.before(task, ir, vis_rgb, target)
            vectors = loop.adapters[task.name](pooled)
            l_r, fused = loop.compensated(task, ir, vis_rgb, target, vectors)
        loss, l_p = reward_penalty(l_r, loss_before, config.penalty)
        if config.relative:
            loss = loss / loss_before.detach().clamp_min(1e-8)
        l_f = loop.fidelity_of(fused, ir, vis_rgb)
        if loop.fidelity is not None:
            with torch.no_grad():
                plain_fidelity = loop.fidelity_of(plain, ir, vis_rgb)
            f_before = float(plain_fidelity)
            term = l_f / plain_fidelity.clamp_min(1e-8) if config.relative else l_f
            loss = loss + config.fidelity_weight * term
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        rows.append(torch.cat([
            (g if g is not None else torch.zeros_like(p)).reshape(-1).float()
            for g, p in zip(grads, params, strict=True)
        ]))
        stats[task.name] = {"before": float(loss_before), "after": float(l_r.detach()),
                            "penalty": float(l_p.detach()), "vector": vectors.detach().mean(0)}
        if loop.fidelity is not None:
            stats[task.name]["fidelity_before"] = f_before
            stats[task.name]["fidelity_after"] = float(l_f.detach())
    update, weights = cagrad(torch.stack(rows), config.cagrad_c)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = update[offset:offset + n].view_as(p).to(p.dtype).clone()
        offset += n
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.clip))
    if optim is not None:
        optim.step()
    stats["_weights"] = [float(w) for w in weights]
    stats["_grad_norm"] = grad_norm
    return stats


@torch.no_grad()
def evaluate_tasks(loop: Loop, tasks_batches: Mapping[str, list], vectors: Mapping[str, Tensor],
                   fidelity_weight: float = 0.0, relative: bool = False
                   ) -> dict[str, dict[str, float]]:
    """Mean task loss before / after compensation with one vector per task (eval mode).

    With a fidelity loss in ``loop``, also its mean before / after, and ``ratio`` is that of
    ``task loss + fidelity_weight x fidelity`` (the training objective); with ``relative``
    that of ``task loss / plain task loss + fidelity_weight x fidelity / plain fidelity``
    (1 for plain fusion).

    ``vectors`` may name a different task's vector for a task (cross-task evaluation): pass
    ``{task: vector}`` with the vector you want to apply to that task's data.
    """
    was_training = loop.training
    loop.eval()
    results = {}
    try:
        for task in loop.tasks:
            batches = tasks_batches.get(task.name)
            if not batches:
                continue
            vec = vectors[task.name].to(loop.device)
            before = after = fid_before = fid_after = 0.0
            for ir, vis_rgb, target in batches:
                ir, vis_rgb, target = (_to(v, loop.device) for v in (ir, vis_rgb, target))
                plain, _, lb = loop.before(task, ir, vis_rgb, target)
                la, fused = loop.compensated(task, ir, vis_rgb, target, vec, per_sample=False)
                before += float(lb)
                after += float(la)
                if loop.fidelity is not None:
                    fid_before += float(loop.fidelity_of(plain, ir, vis_rgb))
                    fid_after += float(loop.fidelity_of(fused, ir, vis_rgb))
            n = len(batches)
            results[task.name] = {"before": before / n, "after": after / n,
                                  "ratio": (after / n) / max(before / n, 1e-12)}
            if loop.fidelity is not None:
                # the ratio of the training objective (task loss + weighted fidelity)
                w = fidelity_weight
                if relative:
                    ratio = (after / max(before, 1e-12)
                             + w * fid_after / max(fid_before, 1e-12)) / (1 + w)
                else:
                    ratio = (after + w * fid_after) / max(before + w * fid_before, 1e-12)
                results[task.name].update({
                    "fidelity_before": fid_before / n, "fidelity_after": fid_after / n,
                    "ratio": ratio})
    finally:
        loop.train(was_training)
    return results


@torch.no_grad()
def deployment_vectors(loop: Loop, config: RSCTrainConfig) -> dict[str, Tensor]:
    """Mean adapter output over ``vector_batches`` training batches of each task."""
    was_training = loop.training
    loop.eval()
    out = {}
    try:
        gen = torch.Generator().manual_seed(config.seed + 7919)
        for task in loop.tasks:
            total = None
            count = 0
            for _ in range(config.vector_batches):
                ir, vis_rgb, target = task.train.batch(config.batch_size, config.crop, gen)
                ir, vis_rgb, target = (_to(v, loop.device) for v in (ir, vis_rgb, target))
                _, pooled, _ = loop.before(task, ir, vis_rgb, target)
                v = loop.adapters[task.name](pooled).float().sum(0)
                total = v if total is None else total + v
                count += pooled.shape[0]
            assert isinstance(total, Tensor), "no batch"
            out[task.name] = (total / count).cpu()
    finally:
        loop.train(was_training)
    return out


def _tensorboard(path: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415  (optional)
    except Exception:  # tensorboard not installed
        return None
    return SummaryWriter(str(path))


def train_rsc(config: RSCTrainConfig, tasks: Sequence[Task], progress: bool = True,
              model: CLDyN | None = None) -> dict[str, Any]:
    """Run (or resume) stage-2 training; returns a summary dict.

    ``model`` overrides loading ``config.vfn`` (tests pass tiny models).
    """
    if not tasks:
        raise ValueError("closed-loop training needs at least one task")
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"task names must be unique, got {names}")
    if config.threads:
        torch.set_num_threads(config.threads)
    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state_path = out.with_name(out.name + ".state.pt")
    log_path = out.with_name(out.stem + ".train.csv")
    device = torch.device(config.device)
    torch.manual_seed(config.seed)
    model = model if model is not None else build_model(config)
    if model.rsc is None:
        raise ValueError("the model has no RSC (build it with with_rsc=True)")
    loop = Loop(model, tasks, device, fidelity_loss(config))
    params = loop.trainable()
    optim = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    val_batches = {t.name: t.val.fixed_batches(config.crop) for t in tasks if t.val is not None}

    step, elapsed, history = 0, 0.0, []
    ema: dict[str, Tensor] = {}
    best: dict[str, Any] = {"score": math.inf, "step": 0, "state": None, "ema": None,
                            "val": None}
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state.get("tasks") != names:
            raise ValueError(f"{state_path} was written for tasks {state.get('tasks')}, "
                             f"not {names}: use another --out or delete the state file")
        loop.model.load_state_dict(state["model"])
        loop.adapters.load_state_dict(state["adapters"])
        optim.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        step, elapsed, history = state["step"], state["elapsed"], list(state["history"])
        ema = dict(state["ema"])
        best = dict(state["best"])

    def snapshot() -> dict[str, Any]:
        return {"model": {k: v.detach().cpu().clone() for k, v in loop.model.state_dict().items()},
                "adapters": {k: v.detach().cpu().clone()
                             for k, v in loop.adapters.state_dict().items()}}

    def save_state() -> None:
        tmp = state_path.with_name(state_path.name + ".tmp")
        torch.save({"tasks": names, "model": loop.model.state_dict(),
                    "adapters": loop.adapters.state_dict(), "optimizer": optim.state_dict(),
                    "generator": generator.get_state(), "step": step, "elapsed": elapsed,
                    "history": history, "ema": ema, "best": best}, tmp)
        tmp.replace(state_path)

    writer = _tensorboard(out.with_name(out.stem + ".tb"))
    budget = None if config.max_minutes is None else config.max_minutes * 60.0
    bar = tqdm(total=config.steps, initial=step, disable=not progress, desc="train rsc",
               unit="step")
    running: dict[str, list[float]] = {n: [0.0] * 5 for n in names}
    since = 0
    loop.train()
    while step < config.steps and (budget is None or elapsed < budget):
        t0 = time.perf_counter()
        batches = [t.train.batch(config.batch_size, config.crop, generator) for t in tasks]
        optim.zero_grad(set_to_none=True)
        stats = train_step(loop, batches, config, optim)
        step += 1
        since += 1
        elapsed += time.perf_counter() - t0
        for n in names:
            s = stats[n]
            r = running[n]
            r[0] += s["before"]
            r[1] += s["after"]
            r[2] += s["penalty"]
            r[3] += s.get("fidelity_before", 0.0)
            r[4] += s.get("fidelity_after", 0.0)
            v = s["vector"].cpu()
            ema[n] = v if n not in ema else config.ema * ema[n] + (1 - config.ema) * v
        bar.update(1)
        bar.set_postfix({n[:10]: f"{stats[n]['after'] / max(stats[n]['before'], 1e-12):.3f}"
                         for n in names})
        last = step >= config.steps or (budget is not None and elapsed >= budget)
        if step % config.eval_every == 0 or last:
            row: dict[str, Any] = {"step": step, "minutes": round(elapsed / 60.0, 2)}
            for n in names:
                r = running[n]
                row[f"{n}/train_before"] = r[0] / since
                row[f"{n}/train_after"] = r[1] / since
                row[f"{n}/train_penalty"] = r[2] / since
                if loop.fidelity is not None:
                    row[f"{n}/train_fidelity_before"] = r[3] / since
                    row[f"{n}/train_fidelity_after"] = r[4] / since
                running[n] = [0.0] * 5
            since = 0
            row["weights"] = " ".join(f"{w:.3f}" for w in stats["_weights"])
            row["grad_norm"] = stats["_grad_norm"]
            val = evaluate_tasks(loop, val_batches, ema, config.fidelity_weight,
                                 config.relative) \
                if val_batches else {}
            for n, v in val.items():
                row[f"{n}/val_before"] = v["before"]
                row[f"{n}/val_after"] = v["after"]
                if "fidelity_after" in v:
                    row[f"{n}/val_fidelity_before"] = v["fidelity_before"]
                    row[f"{n}/val_fidelity_after"] = v["fidelity_after"]
            # Without validation data the training ratio stands in.
            ratios = [v["ratio"] for v in val.values()] or [
                row[f"{n}/train_after"] / max(row[f"{n}/train_before"], 1e-12) for n in names]
            row["score"] = sum(ratios) / len(ratios)
            history.append(row)
            write_history_csv(log_path, history)
            if writer is not None:
                for k, v in row.items():
                    if isinstance(v, float):
                        writer.add_scalar(k, v, step)
            if row["score"] < best["score"]:
                best = {"score": row["score"], "step": step, "state": snapshot(),
                        "ema": {k: v.clone() for k, v in ema.items()}, "val": val}
            bar.write(f"step {step}: score {row['score']:.4f} "
                      + " ".join(f"{n} {v['before']:.4f}->{v['after']:.4f}"
                                 for n, v in val.items()))
        if step % config.checkpoint_every == 0:
            save_state()
    bar.close()
    save_state()
    if writer is not None:
        writer.close()

    if best["state"] is not None:
        loop.model.load_state_dict(best["state"]["model"])
        loop.adapters.load_state_dict(best["state"]["adapters"])
    vectors = deployment_vectors(loop, config)
    final_val = evaluate_tasks(loop, val_batches, vectors, config.fidelity_weight,
                                config.relative) \
        if val_batches else {}
    metadata = {
        "trained_on": {t.name: {"data": t.train.describe(),
                                "val": t.val.describe() if t.val else None} for t in tasks},
        "tasks": {t.name: {"network": t.network.description,
                           "feature_layer": t.network.feature_layer,
                           "feature_dim": loop.feature_dims[t.name],
                           "vector": "mean adapter output over "
                                     f"{config.vector_batches} training batches",
                           "data": t.train.describe()} for t in tasks},
        "training": {"stage": "rsc", **asdict(config), "steps": step,
                     "minutes": round(elapsed / 60.0, 1), "best_step": best["step"],
                     "best_score": best["score"], "validation": final_val,
                     "history": history[-5:]},
    }
    if model.config != loop.model.config:  # pragma: no cover - defensive
        raise RuntimeError("model configuration changed during training")
    loop.model.eval()
    save_checkpoint(out, loop.model, vectors, metadata)
    return {"steps": step, "minutes": elapsed / 60.0, "history": history, "out": str(out),
            "best_step": best["step"], "validation": final_val, "vectors": vectors,
            "loop": loop}


# ---------------------------------------------------------------------------------------
# Tasks from a configuration file
# ---------------------------------------------------------------------------------------


def _resolve(base: Path, value: Any) -> Any:
    if isinstance(value, str) and value and not Path(value).is_absolute():
        candidate = base / value
        if candidate.exists():
            return str(candidate)
    return value


def network_from_spec(name: str, spec: Mapping[str, Any], base: Path) -> TaskNetwork:
    """A task network from its configuration entry (``adapter: import|yolo|torchvision``)."""
    spec = dict(spec)
    kind = spec.pop("adapter", "import")
    for key in ("weights",):
        if key in spec:
            spec[key] = _resolve(base, spec[key])
    if kind == "import":
        return from_import_path(name, **spec)
    if kind in ("yolo", "ultralytics"):
        return ultralytics_yolo(name, **spec)
    if kind == "torchvision":
        return torchvision_segmentation(name, **spec)
    if kind == "task_file":
        return from_task_file(name, **spec)
    raise ValueError(f"task '{name}': unknown network adapter '{kind}' "
                     "(use import, yolo, torchvision or task_file)")


def data_from_spec(spec: Mapping[str, Any], base: Path) -> TaskData:
    """A dataset from its configuration entry (``layout: m3fd|fmb|vt5000|msrs|yolo|masks|
    self-supervised``)."""
    spec = dict(spec)
    layout = spec.pop("layout")  # a name, never a path (a folder of that name may exist)
    names_only = {k: spec.pop(k) for k in ("labels", "split") if k in spec
                  and layout in ("self-supervised", "fmb", "vt5000")}
    spec = {**{k: _resolve(base, v) for k, v in spec.items()}, **names_only}
    size = spec.pop("size", None) if layout in ("m3fd", "msrs") else None
    if layout in ("m3fd", "msrs"):
        data = read_m3fd(**spec) if layout == "m3fd" else read_msrs_boxes(**spec)
        data.frame_size = (int(size[0]), int(size[1])) if size else None
        return data
    if layout == "yolo":
        return read_yolo_folder(**spec)
    if layout == "masks":
        return read_mask_folder(**spec)
    if layout == "fmb":
        return read_fmb(**spec)
    if layout == "vt5000":
        return read_vt5000(**spec)
    if layout == "self-supervised":
        labels = spec.pop("labels")
        names = None
        if spec.get("names"):
            names = set(Path(spec["names"]).read_text().split())
        exclude = set(Path(spec["exclude"]).read_text().split()) if spec.get("exclude") \
            else None
        items = read_pairs(spec["ir"], spec["vi"], names=names, exclude=exclude)
        return self_supervised(labels, items, spec.get("min_light", 0.3),
                               source={"ir": spec["ir"], "vi": spec["vi"],
                                       "names": spec.get("names"),
                                       "exclude": spec.get("exclude")})
    raise ValueError(f"unknown data layout '{layout}' "
                     "(use m3fd, fmb, vt5000, msrs, yolo, masks or self-supervised)")


def tasks_from_spec(entries: Sequence[Mapping[str, Any]], base: Path) -> list[Task]:
    """Tasks from the ``tasks:`` list of a configuration file (paths relative to ``base``)."""
    tasks = []
    for i, entry in enumerate(entries):
        if "name" not in entry or "network" not in entry or "data" not in entry:
            raise ValueError(f"task entry {i} needs name, network and data")
        name = str(entry["name"])
        net = network_from_spec(name, entry["network"], base)
        train = data_from_spec(entry["data"], base)
        val = data_from_spec(entry["val"], base) if entry.get("val") else None
        tasks.append(Task(net, train, val))
    return tasks
