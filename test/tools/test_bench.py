"""``cldyn bench`` and scripts/gpu_bench.sh: output schema on tiny CPU settings.

No wall-clock assertion: only that every stage, statistic and ratio is reported.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cldyn_ros.cli import main
from cldyn_ros.tools.bench import (
    STAGES,
    bench_model,
    format_table,
    percentiles,
    run_model_bench,
    synthetic_frames,
)

ROOT = Path(__file__).resolve().parents[2]


def _check_result(r: dict) -> None:
    assert "error" not in r, r.get("error")
    for stage in ("convert", "upload", "normalise", "preprocess", "fuse", "render",
                  "download", "postprocess", "total"):
        stats = r["stages"][stage]
        assert set(stats) == {"p50", "p90", "p99", "mean", "min"}
        assert 0 <= stats["min"] <= stats["p50"] <= stats["p90"] <= stats["p99"]
    assert r["fps"] > 0 and r["speedup"] > 0 and r["peak_host_mb"] > 0
    assert r["iterations"] == 2 and len(r["warmup_ms"]) == 1


def test_model_bench_report_schema():
    report = run_model_bench(resolutions=[(24, 32)], task_counts=[0, 1],
                             paths=["eager", "fast", "onnx"], embed_max_sides=[0, 8],
                             precisions=["fp32", "fp16"], iterations=2, warmup=1,
                             loaded=bench_model(tasks=1), with_metrics=True)
    assert report["schema"] == 1 and report["kind"] == "model"
    assert {"torch", "cpu_count", "cuda"} <= set(report["machine"])
    results = report["results"]
    # baseline first per task count; fp16 skipped on CPU; onnx once per embedding size
    for t in (0, 1):
        rows = [r for r in results if r["tasks"] == t]
        assert (rows[0]["path"], rows[0]["precision"], rows[0]["embed_max_side"]) == (
            "eager", "fp32", 0)
        assert rows[0]["speedup"] == pytest.approx(1.0)
        assert all(r["baseline"] == rows[0]["name"] for r in rows)
        assert sorted((r["path"], r["precision"], r["embed_max_side"]) for r in rows) == sorted(
            [("eager", "fp32", 0), ("eager", "fp32", 8), ("fast", "fp32", 0),
             ("fast", "fp32", 8), ("onnx", "fp32", 0), ("onnx", "fp32", 8)])
    for r in results:
        _check_result(r)
        assert "metrics" in r["stages"]
    json.dumps(report)  # JSON-ready
    table = format_table(report)
    assert table.count("\n") == len(results) + 1 and "speed-up" in table


def test_a_failing_case_is_recorded_not_fatal(monkeypatch):
    import cldyn_ros.tools.bench as bench

    real = bench.measure_case

    def flaky(case, *args, **kwargs):
        if case.path == "fast":
            raise RuntimeError("no such kernel")
        return real(case, *args, **kwargs)

    monkeypatch.setattr(bench, "measure_case", flaky)
    report = run_model_bench(resolutions=[(24, 32)], paths=["eager", "fast"],
                             embed_max_sides=[0], iterations=2, loaded=bench_model(tasks=1))
    assert [r.get("error", "") for r in report["results"]] == [
        "", "RuntimeError: no such kernel"]
    assert "no such kernel" in format_table(report)


def test_interleaved_measurement_has_the_same_schema():
    report = run_model_bench(resolutions=[(24, 32)], task_counts=[1], paths=["eager", "fast"],
                             embed_max_sides=[0, 8], iterations=2, warmup=1, interleave=True,
                             loaded=bench_model(tasks=1))
    assert report["settings"]["interleave"] is True
    assert [(r["path"], r["embed_max_side"]) for r in report["results"]] == [
        ("eager", 0), ("eager", 8), ("fast", 0), ("fast", 8)]
    for r in report["results"]:
        _check_result(r)


def test_percentiles():
    stats = percentiles(list(range(1, 101)))
    assert stats["p50"] == pytest.approx(50.5) and stats["p99"] == pytest.approx(99.01)
    assert stats["min"] == 1


def test_synthetic_frames_are_raw_thermal_and_rgb():
    thermal, color = synthetic_frames(20, 30)
    assert thermal.dtype.name == "uint16" and thermal.shape == (20, 30)
    assert color.dtype.name == "uint8" and color.shape == (20, 30, 3)


def test_cli_bench_writes_json_and_markdown(tmp_path, capsys):
    out = tmp_path / "bench.json"
    md = tmp_path / "bench.md"
    code = main(["bench", "--sizes", "32x24", "--devices", "cpu", "--tasks", "1",
                 "--paths", "eager,fast,compiled", "--compile-backend", "eager",
                 "--embed-max-sides", "0", "--iterations", "2", "--threads", "1",
                 "--json", str(out), "--markdown", str(md), "--quiet"])
    assert code == 0
    report = json.loads(out.read_text())
    assert [r["path"] for r in report["results"]] == ["eager", "fast", "compiled"]
    for r in report["results"]:
        _check_result(r)
    assert "| case |" in md.read_text() and "| case |" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["--paths", "warp"], ["--sizes", "big"], ["--iterations", "0"],
])
def test_cli_bench_rejects_bad_arguments(argv, capsys):
    try:
        code = main(["bench", "--sizes", "32x24", "--quiet", *argv])
    except SystemExit as e:  # argparse type errors
        code = e.code
    assert code == 2


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_bench_script_runs_on_cpu_with_tiny_settings(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable,
               CLDYN_BENCH_DEVICE="cuda" if torch.cuda.is_available() else "cpu",
               CLDYN_BENCH_SIZES="32x24", CLDYN_BENCH_COMPILED_SIZES="32x24",
               CLDYN_BENCH_ITERATIONS="2", CLDYN_BENCH_PRECISIONS="fp32",
               CLDYN_BENCH_LOW="fp32", CLDYN_BENCH_SOAK_FRAMES="3",
               CLDYN_BENCH_SKIP_TESTS="1", CLDYN_BENCH_COMPILE_BACKEND="eager",
               CLDYN_BENCH_SKIP_NODE="1",  # the node level: test_node_bench_* below
               OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_bench.sh")], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("machine.txt", "bench_model.json", "bench_model.md", "bench_compiled.json",
                 "soak.json", "summary.md", "log.txt"):
        assert (tmp_path / name).is_file(), name
    model = json.loads((tmp_path / "bench_model.json").read_text())
    assert model["results"][0]["path"] == "eager" and len(model["results"]) > 1
    compiled = json.loads((tmp_path / "bench_compiled.json").read_text())
    assert {r["path"] for r in compiled["results"]} == {"eager", "compiled", "onnx"}
    assert all("error" not in r for r in compiled["results"])
    soak = json.loads((tmp_path / "soak.json").read_text())
    assert soak["frames"] == 3 and soak["memory_end_mb"] > 0
    assert "Model level" in (tmp_path / "summary.md").read_text()


@pytest.mark.ros
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_node_bench_report_schema_and_counts(tmp_path, capsys):
    """``cldyn bench node``: the real node over DDS, tiny frames; counts add up (no timing
    assertion: frames may be dropped on a busy machine, and that is reported); the internal
    scale reaches the node's engine; the node's per-frame times come back."""
    pytest.importorskip("rclpy")
    from cldyn_ros.paths import default_model_path

    out = tmp_path / "node"
    code = main(["bench", "node", "--frames", "20", "--size", "80x64", "--rgb-rate", "30",
                 "--thermal-rate", "60", "--model", str(default_model_path()), "--device",
                 "cpu", "--threads", "1", "--internal-scales", "0.5", "--warmup", "2",
                 "--out", str(out), "--quiet"])
    assert code == 0
    report = json.loads((out / "bench_node.json").read_text())
    assert report["schema"] == 1 and report["kind"] == "node"
    assert {"torch", "cpu_count", "cuda"} <= set(report["machine"])
    f = report["frames"]
    assert f["sent"] == 20 and f["thermal_sent"] >= 40
    assert f["received"] + f["dropped"] == f["sent"] and f["received"] > 0
    assert f["dropped_in_node"] >= 0 and f["dropped_elsewhere"] >= 0
    assert f["dropped_in_node"] + f["dropped_elsewhere"] >= f["dropped"]
    lat = report["latency_ms"]
    assert set(lat) == {"p50", "p90", "p99", "mean", "min"}
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= report["max_latency_ms"]
    counters = report["node_counters"]
    assert counters["end"]["worker_processed"] >= f["received"]
    assert counters["delta"]["worker_dropped"] >= 0
    for when in ("ready", "start", "end"):
        assert report["memory"][when]["rss_mb"] > 0
        assert report["memory"][when]["gpu_mb"] is None  # CPU node
    assert report["node"]["exit_code"] == 0 and report["cpu_percent"] >= 0
    assert report["settings"]["internal_scale"] == 0.5
    assert "internal_scale 0.5, threads 1" in (out / "node.log").read_text()
    times = report["node_ms"]
    assert set(times) == {"pairing_wait_ms", "queue_wait_ms", "processing_ms", "preprocess_ms",
                          "fuse_ms", "postprocess_ms"}
    assert times["processing_ms"]["p50"] >= times["fuse_ms"]["p50"] > 0
    assert "| case |" in (out / "bench_node.md").read_text()
    assert "80x64 cpu fp32" in capsys.readouterr().out


def test_stage_names_are_documented():
    assert STAGES[-1] == "total" and "fuse" in STAGES


@pytest.mark.ros
@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("load", ["flood", "soak"])
def test_node_load_report_accounts_for_every_frame(tmp_path, load):
    """``cldyn bench node --load flood|soak``: node, publisher and receiver in three processes,
    tiny frames; every colour frame the node received is published or counted as dropped, and
    the windows cover the run (no timing assertion). The soak also passes an internal scale
    (node and engine alone) and reliable QoS (node and publisher)."""
    pytest.importorskip("rclpy")
    from ros_helpers import write_checkpoint

    from cldyn_ros.paths import default_model_path

    if load == "soak":
        model, extra = default_model_path(), ["--internal-scales", "0.5", "--qos", "reliable"]
    else:
        model, extra = write_checkpoint(tmp_path / "model.pt", tasks=()), []
    out = tmp_path / load
    code = main(["bench", "node", "--load", load, "--seconds", "4", "--window", "2",
                 "--size", "80x64", "--model", str(model), "--device", "cpu",
                 "--threads", "1", "--engine-frames", "2", "--out", str(out), "--quiet",
                 *extra])
    assert code == 0
    report = json.loads((out / f"bench_node_{load}.json").read_text())
    assert report["kind"] == f"node-{load}" and report["node"]["exit_code"] == 0
    ready = next(line for line in (out / "node.log").read_text().splitlines() if "ready:" in line)
    if load == "soak":
        assert (report["settings"]["internal_scale"], report["settings"]["qos"]) == (
            0.5, "reliable")
        assert "internal_scale 0.5, threads 1" in ready
        assert "soak: 80x64" in (out / "bench_node_soak.md").read_text()
        assert "internal_scale 0.5 reliable" in (out / "bench_node_soak.md").read_text()
    else:
        assert "internal_scale 1, threads 1" in ready
    rates = (200.0, 200.0) if load == "flood" else (30.0, 60.0)
    assert (report["settings"]["rgb_rate"], report["settings"]["thermal_rate"]) == rates
    a = report["accounting"]
    assert a["colour_sent"] == report["sent"]["sent"]["rgb"] > 0
    assert 0 < a["colour_received_by_node"] <= a["colour_sent"]
    assert a["pairs_equal_processed_plus_dropped"]
    assert 0 < a["received_here"] <= a["published"]
    # the rest of the received colour frames: out of order, stale or overflow (counters of
    # both streams), give or take the frames in flight when the counters were read
    assert -2 <= a["dropped_other"] <= a["other_bound"] + 2
    assert len(report["windows"]) == 2
    assert sum(w["fused"] for w in report["windows"]) == report["fused"] == a["received_here"]
    assert len(report["engine_alone_ms"]["before"]) == len(report["engine_alone_ms"]["after"]) == 2
    assert report["rss_mb"]["start"] > 0 and report["rss_mb"]["end"] > 0
    assert "| window from s |" in (out / f"bench_node_{load}.md").read_text()


def test_internal_scale_and_thread_axes(tmp_path):
    from helpers import make_model

    from cldyn_ros.inference.checkpoint import LoadedModel
    from cldyn_ros.offline.plots import plot_cost_curve

    loaded = LoadedModel(make_model(with_rsc=False, prior="detail"), {}, {})
    report = run_model_bench(resolutions=[(24, 32)], task_counts=[0], paths=["fast"],
                             internal_scales=[1.0, 0.5], threads=[1, 2], iterations=2,
                             warmup=1, loaded=loaded, interleave=True)
    rows = report["results"]
    base = rows[0]
    assert (base["path"], base["internal_scale"], base["threads"]) == ("eager", 1.0, 1)
    assert sorted((r["path"], r["internal_scale"], r["threads"]) for r in rows) == [
        ("eager", 1.0, 1), ("fast", 0.5, 1), ("fast", 0.5, 2), ("fast", 1.0, 1),
        ("fast", 1.0, 2)]
    assert len({r["name"] for r in rows}) == len(rows)
    assert "scale=0.5" in rows[-1]["name"] and "thr=2" in rows[-1]["name"]
    for r in rows:
        _check_result(r)
    assert report["settings"]["threads"] == [1, 2]
    assert report["settings"]["internal_scales"] == [1.0, 0.5]
    png = plot_cost_curve(report, tmp_path / "cost.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reduced_scale_of_a_model_without_prior_is_recorded_not_fatal():
    report = run_model_bench(resolutions=[(24, 32)], task_counts=[0], paths=["fast"],
                             internal_scales=[0.5], iterations=1, warmup=0,
                             loaded=bench_model(tasks=1))
    bad = [r for r in report["results"] if r.get("internal_scale") == 0.5]
    assert len(bad) == 1 and "prior 'none'" in bad[0]["error"]
    assert "error" not in report["results"][0]  # the baseline still ran


def test_gpu_bench_script_names_test_files_that_exist():
    import re

    script = (ROOT / "scripts" / "gpu_bench.sh").read_text()
    files = re.findall(r"\btest/[\w/]+\.py\b", script)
    assert files, "the script runs the CUDA parity tests"
    assert all((ROOT / f).is_file() for f in files), files
