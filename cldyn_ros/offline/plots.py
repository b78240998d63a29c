"""PNG plots of evaluation reports (matplotlib, headless ``Agg`` backend)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["latency_histogram", "metrics_over_time"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def metrics_over_time(path: str | Path, records: Sequence[Mapping[str, Any]],
                      tasks: Sequence[str], metrics: Sequence[str]) -> bool:
    """One panel per metric, one line per task, over the pair's time in the bag (s).

    Returns False (and writes nothing) when no pair has metric values.
    """
    metrics = [m for m in metrics
               if any(m in r["metrics"].get(t, {}) for r in records for t in tasks)]
    if not metrics:
        return False
    plt = _pyplot()
    cols = 2 if len(metrics) > 1 else 1
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 2.2 * rows), squeeze=False,
                             sharex=True)
    for ax, metric in zip(axes.flat, metrics, strict=False):
        for task in tasks:
            pts = [(r["t_s"], r["metrics"][task][metric]) for r in records
                   if metric in r["metrics"].get(task, {})]
            if pts:
                t, v = zip(*pts, strict=False)
                ax.plot(t, v, marker="." if len(pts) < 60 else None, linewidth=1, label=task)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(metrics):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("time in bag (s)")
    axes.flat[0].legend(loc="best", fontsize="small")
    fig.suptitle("Fusion metrics over time per task")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def latency_histogram(path: str | Path, records: Sequence[Mapping[str, Any]]) -> None:
    """One histogram per latency stage (``timings_ms`` of the records), in milliseconds."""
    stages: dict[str, list[float]] = {}
    for r in records:
        for k, v in r["timings_ms"].items():
            if v is not None and math.isfinite(v):
                stages.setdefault(k, []).append(v)
    plt = _pyplot()
    cols = min(3, max(1, len(stages)))
    rows = max(1, math.ceil(len(stages) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 2.6 * rows), squeeze=False)
    for ax, (stage, vals) in zip(axes.flat, stages.items(), strict=False):
        arr = np.asarray(vals)
        ax.hist(arr, bins=min(40, max(5, arr.size // 3)), color="tab:blue", alpha=0.8)
        ax.axvline(float(np.percentile(arr, 95)), color="tab:red", linestyle="--",
                   linewidth=1, label="p95")
        ax.set_title(f"{stage}: mean {arr.mean():.2f} ms", fontsize="medium")
        ax.set_xlabel("ms")
        ax.legend(fontsize="small")
    for ax in axes.flat[len(stages):]:
        ax.axis("off")
    fig.suptitle("Latency per stage")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_cost_curve(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """PNG of a :func:`~cldyn_ros.tools.bench.run_model_bench` report: total ms per frame
    (p50) against the internal scale, one line per frame size and (path, precision,
    threads) combination, the eager baselines left out. Log-scaled time axis."""
    plt = _pyplot()
    lines: dict[tuple, list[tuple[float, float]]] = {}
    for r in report["results"]:
        if "error" in r or r["path"] == "eager":
            continue
        key = (f"{r['width']}x{r['height']}", r["path"], r["precision"], r.get("threads", 0))
        lines.setdefault(key, []).append((r.get("internal_scale", 1.0),
                                          r["stages"]["total"]["p50"]))
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for (size, path_name, precision, threads), points in sorted(lines.items()):
        points.sort()
        label = f"{size} {path_name} {precision}" + (f" {threads} thr" if threads else "")
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.set_xlabel("internal scale (network resolution / frame resolution)")
    ax.set_ylabel("ms per frame (engine total, p50)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    load = report.get("machine", {}).get("load_average")
    ax.set_title(f"cldyn bench, CPU{f', load {load[0]:.1f}' if load else ''}", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
