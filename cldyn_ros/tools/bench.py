"""Speed benchmarks of the fusion engine and the model (no ROS import).

Two studies, both used by ``cldyn bench`` and ``scripts/gpu_bench.sh``:

- :func:`run_model_bench`: per-stage latency (p50/p90/p99), throughput and peak memory of
  the engine for every (resolution, device, precision, task count, path) combination, with
  the plain fp32 eager implementation measured in the same run as the baseline of every
  speed-up ratio.
- :func:`run_embed_study`: the effect of the reduced-resolution A2SI image embedding
  (``embed_max_side``) on the fused luminance and on fusion metrics, next to its saving.

Timings are wall-clock on whatever else the machine is doing: read them as ratios against
the baseline measured in the same run, never as absolute limits.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import resource
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..inference.checkpoint import LoadedModel
from ..model import CLDyN, CLDyNConfig

#: Stages reported per frame, in pipeline order.
STAGES = ("convert", "upload", "preprocess", "fuse", "metrics", "download", "total")
#: Execution paths of the model-level benchmark.
PATHS = ("eager", "fast", "compiled", "onnx")
SCHEMA_VERSION = 1


# ------------------------------------------------------------------ models and inputs


def bench_model(seed: int = 0, tasks: int = 3, active: bool = True) -> LoadedModel:
    """A default-architecture CLDyN with seeded random weights and ``tasks`` random task
    vectors (speed does not depend on the weights; ``active`` gives the A2SI output convs
    non-zero weights so compensation changes the image, as a trained model's does)."""
    torch.manual_seed(seed)
    model = CLDyN(CLDyNConfig())
    if active:
        gen = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for _, _, block in model.rsc.a2si_blocks():
                block.out.weight.copy_(torch.randn(block.out.weight.shape, generator=gen))
                block.out.bias.copy_(torch.randn(block.out.bias.shape, generator=gen) * 0.1)
    gen = torch.Generator().manual_seed(seed + 100)
    vectors = {f"task{i}": torch.randn(model.config.task_dim, generator=gen)
               for i in range(tasks)}
    return LoadedModel(model=model.eval(), task_vectors=vectors,
                       metadata={"trained_on": "random weights (benchmark)"})


def synthetic_frames(height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A uint16 thermal frame (raw-count-like, exercises the percentile stretch) and a
    uint8 RGB frame: smooth structure plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = (xx / max(width - 1, 1) + yy / max(height - 1, 1)) * 0.5
    blob = np.exp(-((xx - width * 0.6) ** 2 + (yy - height * 0.4) ** 2) / (0.02 * width**2))
    thermal = 7000 + 1500 * ramp + 800 * blob + rng.normal(0, 30, (height, width))
    base = np.stack([ramp, 1.0 - ramp, 0.5 + 0.3 * blob], axis=-1) * 200
    color = np.clip(base + rng.normal(0, 20, (height, width, 3)), 0, 255).astype(np.uint8)
    return thermal.astype(np.uint16), color


# ------------------------------------------------------------------ statistics


def percentiles(samples: Sequence[float]) -> dict[str, float]:
    """``p50``, ``p90``, ``p99``, ``mean`` and ``min`` of ``samples`` (milliseconds)."""
    a = np.asarray(samples, dtype=np.float64)
    if a.size == 0:
        return {"p50": float("nan"), "p90": float("nan"), "p99": float("nan"),
                "mean": float("nan"), "min": float("nan")}
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99),
            "mean": float(a.mean()), "min": float(a.min())}


def peak_host_memory_mb() -> float:
    """Peak resident set size of this process in MiB (Linux ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def machine_info() -> dict[str, Any]:
    """What the figures were measured on."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not on Linux
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
        info["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        pass
    return info


# ------------------------------------------------------------------ model-level benchmark


@dataclasses.dataclass
class BenchCase:
    """One measured configuration."""

    height: int
    width: int
    device: str
    precision: str
    tasks: int
    path: str
    embed_max_side: int = 0
    internal_scale: float = 1.0
    threads: int = 0  # torch threads while this case runs (0: the process's setting)

    @property
    def name(self) -> str:
        name = (f"{self.width}x{self.height} {self.device} {self.precision} "
                f"T={self.tasks} {self.path} emb={self.embed_max_side or 'full'}")
        if self.internal_scale != 1.0:
            name += f" scale={self.internal_scale:g}"
        if self.threads:
            name += f" thr={self.threads}"
        return name


def _engine_for(case: BenchCase, loaded: LoadedModel, threads: int | None,
                compile_backend: str | None = None):
    from ..inference.engine import FusionEngine

    kwargs: dict[str, Any] = {}
    if case.path == "eager":
        kwargs["optimize"] = False
    elif case.path == "fast":
        kwargs["optimize"] = True
    elif case.path == "compiled":
        kwargs["optimize"] = True
        kwargs["compile"] = True
        kwargs["compile_backend"] = compile_backend
    elif case.path == "onnx":
        import io

        from ..inference.export import export_onnx

        buf = io.BytesIO()  # a fixed-size export, as a deployment would use
        tasks = list(loaded.task_names[: case.tasks]) if case.tasks else ["none"]
        export_onnx(loaded, tasks, buf,
                    height=case.height, width=case.width, embed_max_side=case.embed_max_side)
        kwargs["backend"] = "onnx"
        kwargs["onnx_path"] = buf.getvalue()
    return FusionEngine(loaded, device=case.device, precision=case.precision,
                        threads=case.threads or threads, embed_max_side=case.embed_max_side,
                        internal_scale=case.internal_scale, **kwargs)


class _CaseRunner:
    """One case's engine, frames and samples; :meth:`frame` measures one frame."""

    def __init__(self, case: BenchCase, loaded: LoadedModel, threads: int | None,
                 with_metrics: bool, compile_backend: str | None) -> None:
        self.case = case
        self.engine = _engine_for(case, loaded, threads, compile_backend)
        self.engine.detailed_timings = True
        self.thermal, self.color = synthetic_frames(case.height, case.width)
        names = ["none"] if case.tasks == 0 else loaded.task_names[: case.tasks]
        self.reqs = [self.engine.request(n) for n in names]
        self.with_metrics = with_metrics
        self.samples: dict[str, list[float]] = {}
        self.setup_ms: list[float] = []
        self.peak_gpu_mb = 0.0
        self.cuda = self.engine.device.type == "cuda"

    def frame(self, warm: bool = False) -> float:
        if self.case.threads:  # interleaved cases with different thread counts
            torch.set_num_threads(self.case.threads)
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.engine.device)
        t0 = time.perf_counter()
        result = self.engine.fuse(self.thermal, self.color, self.reqs)
        timings = dict(result.timings)
        if self.with_metrics:
            from ..metrics import FAST_METRICS, fusion_metrics

            t1 = time.perf_counter()
            vals = fusion_metrics(result.fused_y[:1], result.ir, result.vis_y, FAST_METRICS)
            [float(v[0]) for v in vals.values()]
            timings["metrics"] = (time.perf_counter() - t1) * 1000.0
        timings["total"] = (time.perf_counter() - t0) * 1000.0
        if self.cuda:
            self.peak_gpu_mb = max(self.peak_gpu_mb,
                                   torch.cuda.max_memory_allocated(self.engine.device) / 2**20)
        if warm:
            self.setup_ms.append(timings["total"])
        else:
            for k, v in timings.items():
                self.samples.setdefault(k, []).append(v)
        return timings["total"]

    def result(self) -> dict[str, Any]:
        stages = {k: percentiles(self.samples[k]) for k in STAGES if k in self.samples}
        stages.update({k: percentiles(v) for k, v in self.samples.items() if k not in stages})
        total = stages["total"]["mean"]
        out: dict[str, Any] = {
            **dataclasses.asdict(self.case),
            "name": self.case.name,
            "iterations": len(self.samples.get("total", [])),
            "warmup_ms": self.setup_ms,
            "stages": stages,
            "fps": 1000.0 / total if total > 0 else float("nan"),
            "peak_host_mb": peak_host_memory_mb(),
        }
        if self.cuda:
            out["peak_gpu_mb"] = self.peak_gpu_mb
        return out


def measure_case(
    case: BenchCase,
    loaded: LoadedModel,
    iterations: int,
    warmup: int = 1,
    threads: int | None = None,
    with_metrics: bool = False,
    compile_backend: str | None = None,
) -> dict[str, Any]:
    """Run ``warmup + iterations`` frames of ``case`` through :meth:`FusionEngine.fuse` and
    return per-stage percentiles, throughput and peak memory (GPU: this case's peak;
    CPU: the process's peak resident memory so far)."""
    runner = _CaseRunner(case, loaded, threads, with_metrics, compile_backend)
    for i in range(warmup + iterations):
        runner.frame(warm=i < warmup)
    return runner.result()


def _measure_interleaved(cases, loaded, iterations, warmup, threads, with_metrics,
                         compile_backend, log) -> list[dict[str, Any] | Exception]:
    """All cases of a group set up first, then measured round-robin, one frame each per
    round, so a change in the machine's load hits every case alike."""
    runners: list[_CaseRunner | Exception] = []
    for case in cases:
        try:
            r = _CaseRunner(case, loaded, threads, with_metrics, compile_backend)
            for _ in range(warmup):
                r.frame(warm=True)
            runners.append(r)
        except Exception as e:  # a path this machine cannot run
            runners.append(e)
    for i in range(iterations):
        if log:
            log(f"  round {i + 1}/{iterations}")
        for k, r in enumerate(runners):
            if isinstance(r, Exception):
                continue
            try:
                r.frame()
            except Exception as e:
                runners[k] = e
    return [r if isinstance(r, Exception) else r.result() for r in runners]


def run_model_bench(
    resolutions: Sequence[tuple[int, int]] = ((512, 640), (1024, 1280)),
    devices: Sequence[str] = ("cpu",),
    precisions: Sequence[str] = ("fp32",),
    task_counts: Sequence[int] = (1,),
    paths: Sequence[str] = ("eager", "fast"),
    embed_max_sides: Sequence[int] = (0,),
    iterations: int = 5,
    warmup: int = 1,
    threads: int | Sequence[int] | None = None,
    with_metrics: bool = False,
    loaded: LoadedModel | None = None,
    log: Callable[[str], None] | None = None,
    compile_backend: str | None = None,
    interleave: bool = False,
    internal_scales: Sequence[float] = (1.0,),
) -> dict[str, Any]:
    """Measure every combination, with the baseline (eager, fp32, full-resolution
    embedding, internal scale 1, the first thread count) of each (resolution, device, task
    count) measured in the same run, first.

    ``threads`` is one torch thread count for the whole run, or several: each is then a
    case axis (set before each of the case's frames, so cases interleave).
    ``internal_scales`` are the engine's ``internal_scale`` values (reduced-resolution
    network; needs a model with a prior, e.g. the shipped default as ``loaded``).

    Returns a JSON-ready dict: ``machine``, ``settings``, ``results`` (one per case, each
    with ``speedup`` = baseline mean total / this mean total).
    """
    loaded = loaded or bench_model(tasks=max(max(task_counts), 1))
    thread_axis = [int(threads)] if isinstance(threads, int) else list(threads or [])
    per_case_threads = len(thread_axis) > 1
    if thread_axis:
        torch.set_num_threads(thread_axis[0])
    threads = thread_axis[0] if thread_axis else None
    case_threads = thread_axis if per_case_threads else [0]
    results: list[dict[str, Any]] = []
    for h, w in resolutions:
        for device in devices:
            for t in task_counts:
                base_case = BenchCase(h, w, device, "fp32", t, "eager", 0, 1.0, case_threads[0])
                cases = [base_case] + [
                    BenchCase(h, w, device, p, t, path, e, s, n)
                    for path in paths
                    # onnxruntime runs the exported fp32 graph (precision is the provider's)
                    for p in (["fp32"] if path == "onnx" else precisions)
                    for e in embed_max_sides
                    for s in internal_scales
                    for n in case_threads
                    if (path, p, e, s, n) != ("eager", "fp32", 0, 1.0, case_threads[0])
                    and not (device == "cpu" and p == "fp16")  # no fp16 kernels on CPU
                    and not (path == "onnx" and s != 1.0)  # the export is full resolution
                ]
                base = None
                if interleave:
                    if log:
                        log(f"measuring {len(cases)} cases interleaved: {w}x{h} {device} T={t}")
                    measured = _measure_interleaved(cases, loaded, iterations, warmup, threads,
                                                    with_metrics, compile_backend, log)
                for n, case in enumerate(cases):
                    if log and not interleave:
                        log(f"measuring {case.name} ...")
                    try:
                        if interleave:
                            r = measured[n]
                            if isinstance(r, Exception):
                                raise r
                        else:
                            r = measure_case(case, loaded, iterations, warmup, threads,
                                             with_metrics, compile_backend)
                    except Exception as e:  # a path this machine cannot run: record it
                        results.append({**dataclasses.asdict(case), "name": case.name,
                                        "error": f"{type(e).__name__}: {e}"})
                        if log:
                            log(f"  skipped {case.name}: {type(e).__name__}: {e}")
                        continue
                    if case is base_case:
                        base = r["stages"]["total"]["mean"]
                    r["baseline"] = base_case.name
                    r["speedup"] = (base / r["stages"]["total"]["mean"]) if base else None
                    results.append(r)
                    if log:
                        log(f"  {case.name}: total p50 {r['stages']['total']['p50']:.1f} ms, "
                            f"speed-up {r['speedup'] or float('nan'):.2f}x")
    return {
        "schema": SCHEMA_VERSION,
        "kind": "model",
        "machine": machine_info(),
        "settings": {
            "resolutions": [list(r) for r in resolutions], "devices": list(devices),
            "precisions": list(precisions), "tasks": list(task_counts), "paths": list(paths),
            "embed_max_sides": list(embed_max_sides), "iterations": iterations,
            "internal_scales": list(internal_scales),
            "warmup": warmup, "threads": thread_axis if per_case_threads else threads,
            "compile_backend": compile_backend,
            "interleave": interleave,
        },
        "results": results,
    }


def format_table(report: dict[str, Any]) -> str:
    """Readable markdown table of a :func:`run_model_bench` report."""
    lines = [
        "| case | convert | upload | preprocess | fuse p50 | fuse p99 | download | "
        "total p50 | total p90 | total p99 | fps | speed-up | peak MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def ms(r: dict[str, Any], stage: str, q: str = "p50") -> str:
        s = r["stages"].get(stage)
        return f"{s[q]:.1f}" if s else "-"

    for r in report["results"]:
        if "error" in r:
            lines.append(f"| {r['name']} | {r['error']} |" + " |" * 11)
            continue
        peak = r.get("peak_gpu_mb", r["peak_host_mb"])
        lines.append(
            f"| {r['name']} | {ms(r, 'convert')} | {ms(r, 'upload')} | {ms(r, 'preprocess')} "
            f"| {ms(r, 'fuse')} | {ms(r, 'fuse', 'p99')} | {ms(r, 'download')} "
            f"| {ms(r, 'total')} | {ms(r, 'total', 'p90')} | {ms(r, 'total', 'p99')} "
            f"| {r['fps']:.2f} | {r['speedup']:.2f}x | {peak:.0f} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------ embedding study


def _pairs_from_folder(root: Path, limit: int, size: tuple[int, int]):
    import cv2

    from ..imaging.io import find_pairs, read_color, read_thermal

    listing = find_pairs(root / "ir", root / "vi")
    h, w = size
    for _, ir_path, vi_path in listing.pairs[:limit]:
        ir = read_thermal(ir_path)
        vi = read_color(vi_path)
        ir = cv2.resize(ir, (w, h), interpolation=cv2.INTER_AREA)
        vi = cv2.resize(vi, (w, h), interpolation=cv2.INTER_AREA)
        yield Path(ir_path).stem, ir, vi


def run_embed_study(
    max_sides: Sequence[int] = (320, 256, 160, 128, 80),
    size: tuple[int, int] = (512, 640),
    data: str | os.PathLike | None = None,
    limit: int = 8,
    tasks: int = 2,
    loaded: LoadedModel | None = None,
    metrics: Sequence[str] = ("Qabf", "SSIM", "MI"),
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Compare compensated fusion with the image embedding at ``max_sides`` against the
    full-resolution embedding, on real pairs (``data`` with ``ir/`` and ``vi/``, resized to
    ``size``) or synthetic ones. Reports the max/mean absolute difference of the fused Y,
    the share of branch selections that changed, the metric differences and the time of
    one embedding."""
    from ..inference.engine import FusionEngine
    from ..metrics import fusion_metrics

    loaded = loaded or bench_model(tasks=tasks)
    names = loaded.task_names[:tasks]
    if data is not None and Path(data).is_dir():
        frames = list(_pairs_from_folder(Path(data), limit, size))
        source = str(data)
    else:
        frames = [(f"synthetic{i}", *synthetic_frames(*size, seed=i)) for i in range(limit)]
        source = "synthetic"
    engines = {m: FusionEngine(loaded, device="cpu", embed_max_side=m, optimize=False)
               for m in (0, *max_sides)}
    rows: dict[int, dict[str, list[float]]] = {m: {} for m in max_sides}
    ref_metrics: dict[str, list[float]] = {}
    for name, thermal, color in frames:
        if log:
            log(f"pair {name}")
        outs = {}
        for m, engine in engines.items():
            res = engine.fuse(thermal, color, [engine.request(n) for n in names])
            outs[m] = res
        ref = outs[0]
        ref_vals = fusion_metrics(ref.fused_y, ref.ir.expand_as(ref.fused_y),
                                  ref.vis_y.expand_as(ref.fused_y), metrics)
        for k, v in ref_vals.items():
            ref_metrics.setdefault(k, []).extend(v.tolist())
        for m in max_sides:
            d = (outs[m].fused_y - ref.fused_y).abs()
            r = rows[m]
            r.setdefault("max_abs", []).append(float(d.max()))
            r.setdefault("mean_abs", []).append(float(d.mean()))
            r.setdefault("pixels_over_1_255", []).append(float((d > 1 / 255).float().mean()))
            vals = fusion_metrics(outs[m].fused_y, ref.ir.expand_as(ref.fused_y),
                                  ref.vis_y.expand_as(ref.fused_y), metrics)
            for k, v in vals.items():
                r.setdefault(f"d{k}", []).extend((v - ref_vals[k]).abs().tolist())
    # time of one image embedding at 640x512 (per modality), full vs reduced
    block = loaded.model.rsc.block("ir", 0)
    feat = torch.rand(1, loaded.model.config.channels, *size)
    timing = {}
    with torch.inference_mode():
        for m in (0, *max_sides):
            block.embed_image(feat, m)
            t0 = time.perf_counter()
            reps = 2 if m == 0 else 5
            for _ in range(reps):
                block.embed_image(feat, m)
            timing[m] = (time.perf_counter() - t0) * 1000.0 / reps
    selections = _selection_changes(loaded, frames, names, max_sides)
    summary = []
    for m in max_sides:
        r = rows[m]
        summary.append({
            "embed_max_side": m,
            "max_abs_y": max(r["max_abs"]),
            "mean_abs_y": float(np.mean(r["mean_abs"])),
            "pixels_over_1_255": float(np.mean(r["pixels_over_1_255"])),
            **{k: float(np.max(v)) for k, v in r.items() if k.startswith("d")},
            "selections_changed": selections[m][0],
            "embedding_rel_error": selections[m][1],
            "embed_ms": timing[m],
            "embed_saving": timing[0] / timing[m] if timing[m] > 0 else None,
        })
    return {
        "schema": SCHEMA_VERSION,
        "kind": "embed_study",
        "machine": machine_info(),
        "source": source,
        "pairs": len(frames),
        "size": list(size),
        "tasks": names,
        "full_embed_ms": timing[0],
        "reference_metrics_mean": {k: float(np.mean(v)) for k, v in ref_metrics.items()},
        "rows": summary,
    }


def _selection_changes(loaded, frames, names, max_sides) -> dict[int, float]:
    """Share of (frame, task, block, branch) configuration choices that differ from the
    full-resolution embedding's."""
    from ..inference.engine import FusionEngine

    model = loaded.model
    vectors = torch.stack([loaded.task_vectors[n] for n in names])
    eng = FusionEngine(loaded, device="cpu", optimize=False)
    changed = {m: [] for m in max_sides}
    rel_err = {m: [] for m in max_sides}
    with torch.inference_mode():
        for _, thermal, color in frames:
            ir, ycbcr = eng._preprocess(thermal, color, "rgb")
            choices, embs = {}, {}
            for m in (0, *max_sides):
                picks, vecs = [], []
                for modality, encoder, x in (("ir", model.vfn.encoder_ir, ir),
                                             ("vis", model.vfn.encoder_vis, ycbcr[:, :1])):
                    block = model.rsc.block(modality, 0)
                    f = encoder.blocks[0](encoder.stem(x))
                    emb = block.embed_image(f, m).expand(len(names), -1)
                    vecs.append(emb[:1])
                    gates, _ = block.select(emb, block.task_embed(vectors), model.rsc.bank())
                    picks.append(gates.argmax(-1))
                choices[m] = torch.cat(picks)
                embs[m] = torch.cat(vecs)
            for m in max_sides:
                changed[m].append(float((choices[m] != choices[0]).float().mean()))
                rel_err[m].append(float((embs[m] - embs[0]).norm() / embs[0].norm()))
    return {m: (float(np.mean(changed[m])), float(np.mean(rel_err[m]))) for m in max_sides}


def format_embed_table(study: dict[str, Any]) -> str:
    metric_keys = [k for k in study["rows"][0] if k.startswith("d")] if study["rows"] else []
    head = ("| embed max side | embedding ms (per modality) | saving | embedding rel. error "
            "| max abs dY | mean abs dY | pixels > 1/255 | branch choices changed | "
            + " | ".join(f"max abs {k}" for k in metric_keys) + " |")
    lines = [head, "|" + "---|" * (8 + len(metric_keys))]
    lines.append(f"| full ({study['size'][1]}x{study['size'][0]}) | {study['full_embed_ms']:.0f} "
                 "| 1.0x | 0 | 0 | 0 | 0 | 0 | " + " | ".join("0" for _ in metric_keys) + " |")
    for r in study["rows"]:
        lines.append(
            f"| {r['embed_max_side']} | {r['embed_ms']:.0f} | {r['embed_saving']:.1f}x "
            f"| {r['embedding_rel_error']:.4f} | {r['max_abs_y']:.4f} | {r['mean_abs_y']:.5f} "
            f"| {100 * r['pixels_over_1_255']:.2f}% "
            f"| {100 * r['selections_changed']:.1f}% | "
            + " | ".join(f"{r[k]:.4f}" for k in metric_keys) + " |"
        )
    return "\n".join(lines)


def write_report(report: dict[str, Any], path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return path


def plot_cost_curve(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """PNG of a :func:`run_model_bench` report: total ms per frame (p50) against the
    internal scale, one line per frame size and (path, precision, threads) combination,
    the eager baselines left out. Log-scaled time axis."""
    from ..offline.plots import _pyplot

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
