"""Metric tables over folders of image pairs: this project's model, baselines, and the
outputs of other methods, all scored by the same metric code in one run.

No ROS import. Images are scored on their luminance in ``[0, 1]``: the infrared image as
the engine prepares it, the visible and fused images converted to BT.601 Y; fused outputs
are quantised to 8 bits like any fused image file.
"""

from __future__ import annotations

import csv
import inspect
import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from ..imaging.io import ImageReadError, PairListing, read_color, read_thermal
from ..imaging.registration import Registration
from ..imaging.thermal import ThermalNormalizer, thermal_to_unit
from ..inference.engine import FusionEngine, TaskRequest
from ..metrics import METRIC_NAMES, fusion_metrics
from ..model import rgb_to_ycbcr
from .baselines import BASELINES

#: A method turns one pair into a fused luminance ``(1, 1, H, W)`` in ``[0, 1]``.
#: Arguments: pair name, infrared ``(1, 1, H, W)``, visible YCbCr ``(1, 3, H, W)``.
Method = Callable[[str, Tensor, Tensor], Tensor]

#: Metrics where lower is better (all others: higher is better).
LOWER_IS_BETTER: frozenset[str] = frozenset()


@dataclass
class MetricTable:
    """Per-pair metric values per method: ``values[method][metric] -> list`` (pair order)."""

    pairs: list[str]
    metrics: list[str]
    values: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    failures: dict[str, list[str]] = field(default_factory=dict)  # method -> messages

    def mean(self, method: str, metric: str) -> float:
        vals = [v for v in self.values[method][metric] if math.isfinite(v)]
        return float(np.mean(vals)) if vals else float("nan")

    def std(self, method: str, metric: str) -> float:
        vals = [v for v in self.values[method][metric] if math.isfinite(v)]
        return float(np.std(vals)) if vals else float("nan")

    def ranks(self, metric: str) -> dict[str, int]:
        """Rank of each method on ``metric`` by its mean (1 = best)."""
        means = {m: self.mean(m, metric) for m in self.values}
        sign = 1.0 if metric in LOWER_IS_BETTER else -1.0
        order = sorted(means, key=lambda m: (not math.isfinite(means[m]), sign * means[m]))
        return {m: i + 1 for i, m in enumerate(order)}

    def summary(self) -> dict[str, dict[str, dict[str, float]]]:
        """``{method: {metric: {mean, std, rank}}}``."""
        ranks = {k: self.ranks(k) for k in self.metrics}
        return {
            m: {k: {"mean": self.mean(m, k), "std": self.std(m, k), "rank": ranks[k][m]}
                for k in self.metrics}
            for m in self.values
        }

    def to_json(self) -> str:
        return json.dumps({"pairs": self.pairs, "metrics": self.metrics,
                           "summary": self.summary(), "per_pair": self.values,
                           "failures": self.failures}, indent=2)

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["method", *(f"{k}_{s}" for k in self.metrics
                                     for s in ("mean", "std", "rank"))])
        for m, row in self.summary().items():
            writer.writerow([m, *(f"{row[k][s]:.6g}" for k in self.metrics
                                  for s in ("mean", "std", "rank"))])
        return buf.getvalue()

    def to_markdown(self, highlight: Sequence[str] = ()) -> str:
        """Mean +- std per metric, rank in brackets; ``highlight`` methods in bold."""
        summary = self.summary()
        lines = ["| method | " + " | ".join(self.metrics) + " |",
                 "|---|" + "---|" * len(self.metrics)]
        for m, row in summary.items():
            name = f"**{m}**" if m in highlight else m
            cells = [f"{row[k]['mean']:.4f} ± {row[k]['std']:.3f} ({row[k]['rank']})"
                     for k in self.metrics]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"


def load_pair(ir_file: Path, vi_file: Path) -> tuple[Tensor, Tensor]:
    """Infrared ``(1, 1, H, W)`` (engine preprocessing, resized to the visible size as the
    engine resizes: :class:`~cldyn_ros.imaging.registration.Registration`) and visible YCbCr
    ``(1, 3, H, W)``, float32 in ``[0, 1]``."""
    vis = read_color(vi_file)
    ir = thermal_to_unit(read_thermal(ir_file), ThermalNormalizer())
    if ir.shape != vis.shape[:2]:
        ir = Registration()(ir, vis.shape[:2])
    ir_t = torch.from_numpy(np.ascontiguousarray(ir, dtype=np.float32))[None, None]
    rgb = torch.from_numpy(vis).permute(2, 0, 1)[None].float() / 255.0
    return ir_t.clamp(0, 1), rgb_to_ycbcr(rgb)


def folder_method(folder: Path) -> Method:
    """A method whose outputs are image files ``<folder>/<pair name>.<any ext>``."""
    files = {p.stem: p for p in sorted(Path(folder).iterdir()) if p.is_file()}

    def run(name: str, ir: Tensor, ycbcr: Tensor) -> Tensor:
        if name not in files:
            raise ImageReadError(folder / name, "no fused image with this name")
        img = read_color(files[name])
        rgb = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0
        y = rgb_to_ycbcr(rgb)[:, :1]
        if y.shape[-2:] != ir.shape[-2:]:
            raise ImageReadError(files[name], f"size {tuple(y.shape[-2:])} differs from the "
                                 f"pair's {tuple(ir.shape[-2:])}")
        return y

    return run


def baseline_method(name: str) -> Method:
    fn = BASELINES[name]
    return lambda _name, ir, ycbcr: fn(ir, ycbcr[:, :1])


def engine_method(engine: FusionEngine, request: TaskRequest | str = "none") -> Method:
    """This project's fusion through the engine (the same path as the node and ``fuse``)."""
    req = engine.request(request) if isinstance(request, str) else request

    def run(_name: str, ir: Tensor, ycbcr: Tensor) -> Tensor:
        dev = engine.device
        return engine.fuse_luminance(ir.to(dev), ycbcr[:, :1].to(dev), [req]).cpu()

    return run


class ScoreCache:
    """Metric values of deterministic methods (baselines, other methods' output files),
    kept in a JSON file so that regenerating a table recomputes only what changed.

    An entry is keyed by the method's identity (``cache_ids`` of :func:`evaluate`), the pair
    and the size and modification time of every file involved; the whole cache is dropped
    when the metric or evaluation code changes (a hash of their source files).
    """

    def __init__(self, path: str | Path) -> None:
        import hashlib

        self.path = Path(path)
        here = Path(__file__).resolve().parent
        digest = hashlib.sha256()
        for source in ("metrics.py", "evaluation.py", "baselines.py", "imaging/io.py",
                       "imaging/thermal.py", "imaging/registration.py", "model/color.py"):
            file = here / source
            digest.update(file.read_bytes() if file.exists() else b"")
        # Of the engine only the thermal preparation matters (it changes for speed work).
        digest.update(inspect.getsource(thermal_to_unit).encode())
        self.version = digest.hexdigest()[:16]
        self.entries: dict[str, dict[str, float]] = {}
        self.hits = self.misses = 0
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
                if data.get("version") == self.version:
                    self.entries = data.get("entries", {})
            except (OSError, ValueError):
                self.entries = {}

    @staticmethod
    def key(method_id: str, name: str, files: Sequence[Path]) -> str:
        stats = []
        for f in files:
            try:
                st = Path(f).stat()
                stats.append(f"{st.st_size}:{st.st_mtime_ns}")
            except OSError:
                stats.append("missing")
        return "|".join([method_id, name, *stats])

    def get(self, key: str, metrics: Sequence[str]) -> dict[str, float] | None:
        entry = self.entries.get(key)
        if entry is None or any(k not in entry for k in metrics):
            self.misses += 1
            return None
        self.hits += 1
        return {k: float(entry[k]) for k in metrics}

    def put(self, key: str, scores: Mapping[str, float]) -> None:
        self.entries.setdefault(key, {}).update(scores)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"version": self.version, "entries": self.entries}))
        tmp.replace(self.path)


def evaluate(
    listing: PairListing,
    methods: Mapping[str, Method],
    metrics: Sequence[str] = METRIC_NAMES,
    progress: bool = True,
    batch_size: int = 8,
    cache: ScoreCache | None = None,
    cache_ids: Mapping[str, tuple[str, Callable[[str], Sequence[Path]]]] | None = None,
) -> MetricTable:
    """Score every method on every pair; a method failing on a pair is recorded, not fatal.

    The methods' outputs for one pair are scored together, ``batch_size`` at a time: the
    slow metrics (VIF, SSIM, Qabf take about a second per image on CPU) cost about half as
    much per image in a batch. With a ``cache``, the methods named in ``cache_ids``
    (``method -> (identity, pair name -> extra files it reads)``) are looked up first.
    """
    table = MetricTable(pairs=[n for n, _, _ in listing.pairs], metrics=list(metrics))
    for m in methods:
        table.values[m] = {k: [] for k in metrics}
    batch_size = max(1, int(batch_size))
    cache_ids = cache_ids or {}
    for name, ir_file, vi_file in tqdm(listing.pairs, desc="evaluate", unit="pair",
                                       disable=not progress):
        scores: dict[str, dict[str, float]] = {}
        keys: dict[str, str] = {}
        if cache is not None:
            for m, (ident, extra) in cache_ids.items():
                if m in methods:
                    keys[m] = cache.key(ident, name, [ir_file, vi_file, *extra(name)])
                    hit = cache.get(keys[m], metrics)
                    if hit is not None:
                        scores[m] = hit
        todo = [m for m in methods if m not in scores]
        if todo:
            ir, ycbcr = load_pair(ir_file, vi_file)
            vis_y = ycbcr[:, :1]
        outputs: dict[str, Tensor] = {}
        for m in todo:
            try:
                fused = methods[m](name, ir, ycbcr)
            except (ImageReadError, OSError) as e:
                table.failures.setdefault(m, []).append(str(e))
                continue
            # As an 8-bit image file.
            outputs[m] = torch.round(fused.float().cpu().clamp(0, 1) * 255.0) / 255.0
        names = list(outputs)
        for i in range(0, len(names), batch_size):
            chunk = names[i:i + batch_size]
            fused = torch.cat([outputs[m] for m in chunk])
            n = fused.shape[0]
            values = fusion_metrics(fused, ir.expand(n, -1, -1, -1),
                                    vis_y.expand(n, -1, -1, -1), metrics)
            for j, m in enumerate(chunk):
                scores[m] = {k: float(values[k][j]) for k in metrics}
                if cache is not None and m in keys:
                    cache.put(keys[m], scores[m])
        for m in methods:
            for k in metrics:
                table.values[m][k].append(scores[m][k] if m in scores else float("nan"))
        if cache is not None and todo and keys:
            cache.save()  # after every pair: an interrupted run keeps what it computed
    return table
