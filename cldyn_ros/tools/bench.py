"""Speed benchmarks of the fusion engine and the model (no ROS import).

:func:`run_model_bench` (used by ``cldyn bench`` and ``scripts/gpu_bench.sh``): per-stage
latency (p50/p90/p99), throughput and peak memory of the engine for every (resolution,
device, precision, task count, path) combination, with the plain fp32 eager implementation
measured in the same run as the baseline of every speed-up ratio.

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
        assert model.rsc is not None
        with torch.no_grad():
            for _, _, block in model.rsc.a2si_blocks():
                bias = block.out.bias
                assert bias is not None
                block.out.weight.copy_(torch.randn(block.out.weight.shape, generator=gen))
                bias.copy_(torch.randn(bias.shape, generator=gen) * 0.1)
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
        for k, runner in enumerate(runners):
            if isinstance(runner, Exception):
                continue
            try:
                runner.frame()
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


def write_report(report: dict[str, Any], path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return path
