"""Stage 1: unsupervised training of the VFN backbone on infrared-visible pairs.

Resumable: a training-state file next to the output (``<out>.state.pt``) holds the model,
optimiser, step counter, random state and history; re-running the same command continues
from it. The final weights go to ``<out>`` as a normal checkpoint with provenance metadata.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor
from tqdm import tqdm

from ..imaging.io import find_pairs
from ..inference.checkpoint import load_checkpoint, save_checkpoint
from ..inference.reduced_scale import ReducedScaleFusion, check_internal_scale
from ..model import CLDyN, CLDyNConfig
from ..offline.evaluation import load_pair
from .history import write_history_csv
from .losses import FusionLoss


@dataclass
class VFNTrainConfig:
    """Settings of a stage-1 run (stored in the checkpoint metadata)."""

    ir_dir: str
    vi_dir: str
    out: str
    exclude: str | None = None  # text file of pair names never to train on (a test split)
    epochs: int = 100
    batch_size: int = 16
    crop: int = 256
    resize: int | None = 512  # pairs are resized to resize x resize before cropping
    lr: float = 1e-3
    intensity_weight: float = 0.2
    gradient_weight: float = 1.0
    qabf_weight: float = 0.0  # 1 - soft Q^AB/F (edge strength and orientation of both sources)
    ssim_weight: float = 0.0  # 1 - mean SSIM against both sources
    qabf_border: str = "valid"
    anchor_weight: float = 0.0  # low-frequency anchor of the output to the VFN prior
    init: str | None = None  # start from these weights (a checkpoint) instead of random ones
    # A recipe (YAML) trained first, resumably; its output is the init of this run. Makes a
    # two-stage recipe one command.
    init_recipe: str | None = None
    prior: str = "none"  # VFN output form: "none" (the method), "max" or "detail" (see VFN)
    # Train the network at this fraction of the crop size, with the prior and the loss at
    # full size (the engine's internal_scale; needs a prior). Stored in the checkpoint as
    # the scale the model is meant to run at.
    internal_scale: float = 1.0
    scale_range: tuple[float, float] | None = None  # random zoom of each crop, e.g. (0.5, 1.5)
    augment: tuple[str, ...] = ()  # of AUGMENTATIONS, each applied with augment_p
    augment_p: float = 0.3
    val_fraction: float = 0.1
    seed: int = 0
    max_minutes: float | None = None  # stop (and save) after this much training time
    checkpoint_every: int = 50  # steps between training-state saves
    threads: int | None = None
    device: str = "cpu"
    num_blocks: int = 2


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The settings of a recipe file (YAML, keys as :class:`VFNTrainConfig` fields)."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    unknown = set(data) - {f.name for f in fields(VFNTrainConfig)}
    if unknown:
        raise ValueError(f"unknown settings in {path}: {sorted(unknown)}")
    return data


def vfn_config(values: dict[str, Any]) -> VFNTrainConfig:
    """A :class:`VFNTrainConfig` from recipe/command-line values (``resize: 0`` keeps the
    sizes; YAML lists become tuples)."""
    values = dict(values)
    if values.get("resize") == 0:
        values["resize"] = None
    for key in ("scale_range", "augment"):
        if isinstance(values.get(key), list):
            values[key] = tuple(values[key])
    return VFNTrainConfig(**values)


@dataclass
class PairSet:
    """Pairs as float tensors ``(1, H, W)`` in ``[0, 1]``: infrared and visible luminance."""

    names: list[str]
    ir: list[Tensor] = field(default_factory=list)
    vis_y: list[Tensor] = field(default_factory=list)


def load_pairs(
    ir_dir: str | Path,
    vi_dir: str | Path,
    exclude: Sequence[str] = (),
    resize: int | None = None,
) -> PairSet:
    """Read matched pairs (by file stem), skipping names in ``exclude``.

    Each pair is prepared by :func:`~cldyn_ros.offline.evaluation.load_pair`, as evaluation does
    (infrared through the engine's ``thermal_to_unit``, visible as BT.601 luminance).
    """
    listing = find_pairs(Path(ir_dir), Path(vi_dir))
    excluded = {Path(n).stem for n in exclude}
    pairs = PairSet(names=[])
    for name, ir_file, vi_file in listing.pairs:
        if name in excluded:
            continue
        ir_t, ycbcr = load_pair(ir_file, vi_file)
        y = ycbcr[:, :1]
        if resize:
            size = (resize, resize)
            ir_t = F.interpolate(ir_t, size=size, mode="bilinear", align_corners=False)
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        pairs.names.append(name)
        pairs.ir.append(ir_t[0].clamp(0, 1))
        pairs.vis_y.append(y[0].clamp(0, 1))
    return pairs


#: Photometric augmentations of a training pair (names for ``VFNTrainConfig.augment``).
AUGMENTATIONS = ("low_light", "fog", "thermal_noise", "gamma")


def augment_pair(
    ir: Tensor, y: Tensor, names: Sequence[str], p: float, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Degrade a ``(1, H, W)`` pair as cameras do, each named effect with probability ``p``.

    - ``low_light``: visible scaled by 0.1-0.5 with sensor noise (sigma up to 0.02);
    - ``fog``: visible blended towards a bright airlight (transmission 0.4-0.8);
    - ``thermal_noise``: gaussian noise (sigma 0.005-0.03) plus column fixed-pattern noise;
    - ``gamma``: each modality through its own gamma in 0.6-1.6.
    The loss then asks the fusion to keep what is left of each source.
    """

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand(1, generator=generator))

    def chance() -> bool:
        return float(torch.rand(1, generator=generator)) < p

    for name in names:
        if name not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {name!r}; known: {AUGMENTATIONS}")
    if "gamma" in names and chance():
        ir = ir.clamp_min(0).pow(uniform(0.6, 1.6))
        y = y.clamp_min(0).pow(uniform(0.6, 1.6))
    if "low_light" in names and chance():
        noise = torch.randn(y.shape, generator=generator) * uniform(0.0, 0.02)
        y = y * uniform(0.1, 0.5) + noise
    if "fog" in names and chance():
        t = uniform(0.4, 0.8)
        y = y * t + uniform(0.7, 1.0) * (1 - t)
    if "thermal_noise" in names and chance():
        noise = torch.randn(ir.shape, generator=generator) * uniform(0.005, 0.03)
        columns = torch.randn((1, 1, ir.shape[-1]), generator=generator) * uniform(0.0, 0.02)
        ir = ir + noise + columns
    return ir.clamp(0, 1), y.clamp(0, 1)


def random_batch(
    pairs: PairSet,
    batch_size: int,
    crop: int,
    generator: torch.Generator,
    scale_range: tuple[float, float] | None = None,
    augment: Sequence[str] = (),
    augment_p: float = 0.3,
) -> tuple[Tensor, Tensor]:
    """Random crops with random flips and 90-degree rotations: two ``(B, 1, crop, crop)``.

    ``scale_range`` zooms each crop by a random factor (a ``crop / s`` window resized to
    ``crop``; ``s < 1`` shows more of the scene, as a higher-resolution camera would);
    ``augment`` applies :func:`augment_pair`.
    """
    irs, ys = [], []
    for _ in range(batch_size):
        i = int(torch.randint(len(pairs.names), (1,), generator=generator))
        ir, y = pairs.ir[i], pairs.vis_y[i]
        h, w = ir.shape[-2:]
        window = crop
        if scale_range is not None:
            low, high = scale_range
            window = round(crop / (low + (high - low) * float(torch.rand(1, generator=generator))))
        ch, cw = min(window, h), min(window, w)
        top = int(torch.randint(h - ch + 1, (1,), generator=generator))
        left = int(torch.randint(w - cw + 1, (1,), generator=generator))
        pair = torch.cat([ir, y])[:, top : top + ch, left : left + cw]
        if (ch, cw) != (crop, crop):
            pair = F.interpolate(pair[None], size=(crop, crop), mode="bilinear",
                                 antialias=ch > crop or cw > crop)[0]
        if torch.rand(1, generator=generator) < 0.5:
            pair = pair.flip(-1)
        if torch.rand(1, generator=generator) < 0.5:
            pair = pair.flip(-2)
        pair = torch.rot90(pair, int(torch.randint(4, (1,), generator=generator)), (-2, -1))
        ir_crop, y_crop = pair[:1], pair[1:]
        if augment:
            ir_crop, y_crop = augment_pair(ir_crop, y_crop, augment, augment_p, generator)
        irs.append(ir_crop)
        ys.append(y_crop)
    return torch.stack(irs), torch.stack(ys)


def validation_batches(pairs: PairSet, crop: int) -> list[tuple[Tensor, Tensor]]:
    """Fixed centre crops of the held-out pairs, one batch per pair."""
    out = []
    for ir, y in zip(pairs.ir, pairs.vis_y, strict=True):
        h, w = ir.shape[-2:]
        ch, cw = min(crop, h), min(crop, w)
        top, left = (h - ch) // 2, (w - cw) // 2
        out.append((ir[None, :, top : top + ch, left : left + cw],
                    y[None, :, top : top + ch, left : left + cw]))
    return out


def split_pairs(pairs: PairSet, val_fraction: float, seed: int) -> tuple[PairSet, PairSet]:
    """Deterministic train / validation split by name."""
    order = list(range(len(pairs.names)))
    random.Random(seed).shuffle(order)
    n_val = int(round(len(order) * val_fraction)) if len(order) > 1 else 0
    if val_fraction > 0 and len(order) > 1:
        n_val = max(1, n_val)
    picks = (sorted(order[n_val:]), sorted(order[:n_val]))
    return tuple(  # type: ignore[return-value]
        PairSet([pairs.names[i] for i in idx], [pairs.ir[i] for i in idx],
                [pairs.vis_y[i] for i in idx])
        for idx in picks
    )


def train_vfn(config: VFNTrainConfig, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) stage-1 training; returns a summary dict."""
    unknown = [a for a in config.augment if a not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown augmentation(s) {unknown}; known: {list(AUGMENTATIONS)}")
    if config.scale_range is not None:
        low, high = (float(v) for v in config.scale_range)
        if not 0 < low <= high:
            raise ValueError(f"scale_range needs 0 < low <= high, got {config.scale_range}")
    scale = check_internal_scale(config.internal_scale)
    if scale < 1.0 and config.prior == "none":
        raise ValueError("internal_scale < 1 needs a prior ('detail' or 'max'): the network "
                         "then computes a correction of the full-resolution prior")
    if config.threads:
        torch.set_num_threads(config.threads)
    out = Path(config.out)
    state_path = out.with_name(out.name + ".state.pt")
    if config.init_recipe and not state_path.exists():
        first = vfn_config(read_recipe(config.init_recipe))
        if progress:
            tqdm.write(f"stage 1 of 2: {config.init_recipe} -> {first.out}")
        train_vfn(first, progress)  # resumes, or returns at once if it has finished
        config.init = first.out
    log_path = out.with_name(out.stem + ".train.csv")
    exclude = []
    if config.exclude:
        exclude = Path(config.exclude).read_text().split()
    pairs = load_pairs(config.ir_dir, config.vi_dir, exclude, config.resize)
    if not pairs.names:
        raise ValueError(f"no image pairs found in {config.ir_dir} and {config.vi_dir}")
    train, val = split_pairs(pairs, config.val_fraction, config.seed)
    val_batches = validation_batches(val, config.crop)

    device = torch.device(config.device)
    torch.manual_seed(config.seed)
    model = CLDyN(CLDyNConfig(num_blocks=config.num_blocks, with_rsc=False,
                              prior=config.prior)).to(device)
    if config.init and not state_path.exists():
        init = load_checkpoint(config.init).model
        model.load_state_dict(init.state_dict())
        if init.config.prior != config.prior:
            # The old output layer made images, not corrections of the prior: start it at 0.
            model.vfn.reset_output()
    net = ReducedScaleFusion(model, scale) if scale < 1.0 else model
    optim = torch.optim.Adam(model.parameters(), lr=config.lr)
    loss_fn = FusionLoss(config.intensity_weight, config.gradient_weight, config.qabf_weight,
                         config.ssim_weight, config.qabf_border, config.anchor_weight)
    generator = torch.Generator().manual_seed(config.seed)
    steps_per_epoch = max(1, math.ceil(len(train.names) / config.batch_size))
    total_steps = config.epochs * steps_per_epoch
    step, elapsed, history = 0, 0.0, []
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optim.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        step, elapsed, history = state["step"], state["elapsed"], list(state["history"])

    def save_state() -> None:
        tmp = state_path.with_name(state_path.name + ".tmp")
        torch.save({"model": model.state_dict(), "optimizer": optim.state_dict(),
                    "generator": generator.get_state(), "step": step, "elapsed": elapsed,
                    "history": history}, tmp)
        tmp.replace(state_path)

    budget = None if config.max_minutes is None else config.max_minutes * 60.0
    bar = tqdm(total=total_steps, initial=step, disable=not progress, desc="train vfn",
               unit="step")
    running = 0.0
    model.train()
    while step < total_steps and (budget is None or elapsed < budget):
        t0 = time.perf_counter()
        ir, y = random_batch(train, config.batch_size, config.crop, generator,
                             config.scale_range, config.augment, config.augment_p)
        ir, y = ir.to(device), y.to(device)
        loss = loss_fn(net(ir, y), ir, y, model.vfn.prior_image(ir, y))
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        step += 1
        elapsed += time.perf_counter() - t0
        running += loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % steps_per_epoch == 0:
            val_loss = evaluate_loss(model, loss_fn, val_batches, device, net)
            history.append({"epoch": step // steps_per_epoch, "step": step,
                            "train_loss": running / steps_per_epoch, "val_loss": val_loss,
                            "minutes": elapsed / 60.0})
            running = 0.0
            write_history_csv(log_path, history)
            bar.write(f"epoch {history[-1]['epoch']}: train {history[-1]['train_loss']:.4f} "
                      f"val {val_loss:.4f}")
        if step % config.checkpoint_every == 0:
            save_state()
    bar.close()
    save_state()
    metadata: dict[str, Any] = {
        "trained_on": {"ir_dir": config.ir_dir, "vi_dir": config.vi_dir,
                       "train_pairs": len(train.names), "val_pairs": len(val.names),
                       "excluded": config.exclude},
        "training": {"stage": "vfn", **asdict(config), "steps": step,
                     "minutes": round(elapsed / 60.0, 1), "history": history[-5:]},
    }
    if scale < 1.0:
        metadata["internal_scale"] = scale  # the engine's default for this checkpoint
    save_checkpoint(out, model, {}, metadata)
    return {"steps": step, "minutes": elapsed / 60.0, "history": history, "out": str(out)}


@torch.no_grad()
def evaluate_loss(
    model: CLDyN,
    loss_fn: FusionLoss,
    batches: list[tuple[Tensor, Tensor]],
    device: torch.device,
    net: torch.nn.Module | None = None,
) -> float:
    """Mean loss over ``batches`` in eval mode (restores train mode afterwards); ``net`` is
    what computes the output (``model`` itself, or ``model`` at a reduced internal scale)."""
    if not batches:
        return float("nan")
    net = net or model
    model.eval()
    total = 0.0
    for ir, y in batches:
        ir, y = ir.to(device), y.to(device)
        total += loss_fn(net(ir, y), ir, y, model.vfn.prior_image(ir, y)).item()
    model.train()
    return total / len(batches)
