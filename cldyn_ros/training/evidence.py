"""Closed-loop evidence on real, unlabelled pairs with self-supervised tasks.

``prepare``: split RoadScene (train pairs minus a validation share; the published test split
held out), train one small task network per self-supervised task on VFN-fused images, freeze
them and write a ``tasks.yaml`` for ``cldyn train rsc``.

``report``: on the held-out pairs, per task: task loss on the plain VFN fusion and on the
compensated fusion with the task's own vector, with the other task's vector (cross-task), and
for each extra model given (e.g. trained without the penalty); plus fusion metrics (EN, SF,
AG, Q^AB/F) of the plain and compensated fusions at full resolution.

    python -m cldyn_ros.training.evidence prepare --vfn VFN.pt --out runs/closed_loop
    cldyn train rsc --tasks runs/closed_loop/tasks.yaml --vfn VFN.pt --out .../rsc.pt ...
    python -m cldyn_ros.training.evidence report --out runs/closed_loop \\
        --model loop=.../rsc.pt --model no_penalty=.../rsc_nopen.pt
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from ..inference.checkpoint import load_checkpoint
from ..metrics import fusion_metrics
from ..model import CLDyN, rgb_to_ycbcr
from ..model.color import fused_rgb
from .datasets import Item, TaskData, read_pairs, self_supervised, split_items
from .task_networks import SmallSegNet, TaskNetwork

TASKS = ("warm_objects", "visible_edges")
FACTORY = "cldyn_ros.training.task_networks:SmallSegNet"
NET_KWARGS = {"width": 16, "feature_channels": 32}
METRICS = ("EN", "SF", "AG", "Qabf")


def _split(data_root: Path, val_fraction: float = 0.1
           ) -> tuple[list[Item], list[Item], list[Item]]:
    test_names = set((data_root / "test_split.txt").read_text().split())
    test_names = {Path(n).stem for n in test_names}
    everything = read_pairs(data_root / "ir", data_root / "vi")
    test = [it for it in everything if it.name in test_names]
    rest = [it for it in everything if it.name not in test_names]
    train, val = split_items(rest, val_fraction, seed=0)
    return train, val, test


def train_task_network(vfn: CLDyN, data: TaskData, steps: int, crop: int, batch: int = 8,
                       lr: float = 2e-3, seed: int = 0) -> tuple[SmallSegNet, list[float]]:
    """Train a :class:`SmallSegNet` (BCE) on VFN-fused crops of ``data``."""
    torch.manual_seed(seed)
    net = SmallSegNet(**NET_KWARGS)
    optim = torch.optim.Adam(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    vfn.eval()
    net.train()
    for _ in range(steps):
        ir, rgb, target = data.batch(batch, crop, gen)
        with torch.no_grad():
            fused = vfn(ir, rgb_to_ycbcr(rgb)[:, :1])
        out = net(fused_rgb(fused, rgb))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out, target)
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(loss.item())
    return net.eval(), losses


def prepare(vfn_path: str, data_root: Path, out: Path, steps: int, crop: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    train, val, test = _split(data_root)
    for name, items in (("train", train), ("val", val), ("test", test)):
        (out / f"{name}_names.txt").write_text("\n".join(it.name for it in items) + "\n")
    vfn = load_checkpoint(vfn_path).model
    entries = []
    for task in TASKS:
        data = self_supervised(task, train)
        t0 = time.perf_counter()
        net, losses = train_task_network(vfn, data, steps, crop)
        torch.save(net.state_dict(), out / f"task_{task}.pt")
        print(f"{task}: {len(data)} pairs, loss {sum(losses[:20]) / 20:.4f} -> "
              f"{sum(losses[-20:]) / 20:.4f} in {time.perf_counter() - t0:.0f} s", flush=True)
        common = {"layout": "self-supervised", "labels": task, "ir": str(data_root / "ir"),
                  "vi": str(data_root / "vi")}
        entries.append({
            "name": task,
            "network": {"adapter": "import", "factory": FACTORY, "kwargs": dict(NET_KWARGS),
                        "weights": f"task_{task}.pt", "feature_layer": "body", "loss": "bce"},
            "data": {**common, "names": "train_names.txt"},
            "val": {**common, "names": "val_names.txt"},
        })
    (out / "tasks.yaml").write_text(yaml.safe_dump({"tasks": entries}, sort_keys=False))
    print(f"wrote {out / 'tasks.yaml'}")


def _task_net(out: Path, task: str) -> TaskNetwork:
    net = SmallSegNet(**NET_KWARGS)
    net.load_state_dict(torch.load(out / f"task_{task}.pt", weights_only=True))
    return TaskNetwork(task, net, "body", "bce")


@torch.no_grad()
def task_losses(model: CLDyN, vectors: dict[str, Tensor], nets: dict[str, TaskNetwork],
                data: dict[str, TaskData], crop: int) -> dict[str, dict[str, float]]:
    """Per task: mean loss on plain fusion and with every vector (own and cross-task)."""
    model.eval()
    names = list(vectors)
    stacked = torch.stack([vectors[n] for n in names])
    results = {}
    for task, net in nets.items():
        totals = {"plain": 0.0, **{f"vector:{n}": 0.0 for n in names}}
        batches = data[task].fixed_batches(crop, per_item=2)
        for ir, rgb, target in batches:
            y = rgb_to_ycbcr(rgb)[:, :1]
            plain = model.vfn(ir, y)
            out, _ = net.run(fused_rgb(plain, rgb))
            totals["plain"] += float(net.task_loss(out, target))
            comp = model.fuse_tasks(ir, y, stacked)
            for i, n in enumerate(names):
                out, _ = net.run(fused_rgb(comp[i], rgb))
                totals[f"vector:{n}"] += float(net.task_loss(out, target))
        results[task] = {k: v / len(batches) for k, v in totals.items()}
    return results


@torch.no_grad()
def metric_means(model: CLDyN, vectors: dict[str, Tensor], items: Sequence[Item]
                 ) -> dict[str, dict[str, float]]:
    """Mean EN, SF, AG, Q^AB/F over ``items`` at full resolution: plain and per vector."""
    model.eval()
    data = TaskData("metrics", list(items), label_fn=lambda a, b: a[:1, :1] * 0)
    names = list(vectors)
    stacked = torch.stack([vectors[n] for n in names])
    sums: dict[str, dict[str, float]] = {k: dict.fromkeys(METRICS, 0.0)
                                         for k in ["plain", *names]}
    for i in range(len(items)):
        ir, rgb, _ = data.load(i)
        ir, rgb = ir[None], rgb[None]
        y = rgb_to_ycbcr(rgb)[:, :1]
        outs = {"plain": model.vfn(ir, y)}
        comp = model.fuse_tasks(ir, y, stacked)
        outs.update({n: comp[j] for j, n in enumerate(names)})
        for key, fused in outs.items():
            m = fusion_metrics(fused, ir, y, METRICS)
            for k in METRICS:
                sums[key][k] += float(m[k].mean())
    return {k: {m: v / len(items) for m, v in d.items()} for k, d in sums.items()}


def report(out: Path, data_root: Path, models: Sequence[str], crop: int,
           metric_pairs: int | None) -> dict[str, Any]:
    _, _, test = _split(data_root)
    nets = {t: _task_net(out, t) for t in TASKS}
    data = {t: self_supervised(t, test) for t in TASKS}
    result: dict[str, Any] = {"test_pairs": {t: len(d) for t, d in data.items()},
                              "crop": crop, "models": {}}
    for spec in models:
        label, _, path = spec.partition("=")
        loaded = load_checkpoint(path)
        t0 = time.perf_counter()
        losses = task_losses(loaded.model, loaded.task_vectors, nets, data, crop)
        items = test if metric_pairs is None else test[:metric_pairs]
        metrics = metric_means(loaded.model, loaded.task_vectors, items)
        result["models"][label] = {"path": path, "task_losses": losses, "metrics": metrics,
                                   "metric_pairs": len(items),
                                   "training": loaded.metadata.get("training", {})
                                   .get("steps")}
        print(f"{label}: evaluated in {time.perf_counter() - t0:.0f} s", flush=True)
    (out / "report.json").write_text(json.dumps(result, indent=2))
    (out / "report.md").write_text(markdown(result))
    print(markdown(result))
    return result


def markdown(result: dict[str, Any]) -> str:
    lines = []
    for label, r in result["models"].items():
        lines.append(f"### {label} (`{r['path']}`)\n")
        names = list(next(iter(r["task_losses"].values())))
        vec_cols = [n for n in names if n != "plain"]
        lines.append("| task (test pairs) | plain VFN | " + " | ".join(
            c.replace("vector:", "vector ") for c in vec_cols) + " |")
        lines.append("|---" * (2 + len(vec_cols)) + "|")
        for task, row in r["task_losses"].items():
            cells = [f"{row['plain']:.4f}"] + [
                f"{row[c]:.4f} ({100 * (row[c] / row['plain'] - 1):+.1f}%)" for c in vec_cols]
            lines.append(f"| {task} ({result['test_pairs'][task]}) | " + " | ".join(cells)
                         + " |")
        lines.append("")
        lines.append(f"Fusion metrics, full resolution, {r['metric_pairs']} test pairs:\n")
        lines.append("| output | " + " | ".join(METRICS) + " |")
        lines.append("|---" * (1 + len(METRICS)) + "|")
        plain = r["metrics"]["plain"]
        for key, row in r["metrics"].items():
            cells = [f"{row[m]:.4f}" if key == "plain" else
                     f"{row[m]:.4f} ({100 * (row[m] / plain[m] - 1):+.1f}%)" for m in METRICS]
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("prepare")
    a.add_argument("--vfn", required=True)
    a.add_argument("--data", type=Path, default=Path("../shared/data/roadscene"))
    a.add_argument("--out", type=Path, required=True)
    a.add_argument("--steps", type=int, default=400)
    a.add_argument("--crop", type=int, default=96)
    b = sub.add_parser("report")
    b.add_argument("--data", type=Path, default=Path("../shared/data/roadscene"))
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--model", action="append", required=True, help="LABEL=checkpoint")
    b.add_argument("--crop", type=int, default=128)
    b.add_argument("--metric-pairs", type=int, default=None)
    for q in (a, b):
        q.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.cmd == "prepare":
        prepare(args.vfn, args.data, args.out, args.steps, args.crop)
    else:
        report(args.out, args.data, args.model, args.crop, args.metric_pairs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
