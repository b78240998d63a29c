"""Speed paths (issue 6): every optimised path against the plain fp32 implementation.

CPU always; the CUDA checks run where a GPU is present and skip with the reason otherwise.
No test asserts a wall-clock limit.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from helpers import make_loaded, make_model, random_inputs, random_pair

from cldyn_ros.imaging.thermal import ThermalNormalizer
from cldyn_ros.inference.checkpoint import load_checkpoint, save_checkpoint
from cldyn_ros.inference.engine import (
    NATIVE_CPU_FEATURES,
    DeviceError,
    FusionEngine,
    is_device_failure,
    thermal_limits_torch,
    thermal_to_unit,
)
from cldyn_ros.inference.fast import FastAttentionFusion, inference_copy
from cldyn_ros.model import CLDyN, CLDyNConfig
from cldyn_ros.model.rsc import A2SI, dynamic_conv, dynamic_conv_unfolded, embed_pool_factor

H, W = 31, 45
TOL = dict(atol=2e-5, rtol=0)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")


def _tasks(t: int, seed: int = 3) -> torch.Tensor:
    return torch.randn(t, 256, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ fuse_for_inference


@pytest.mark.parametrize(("h", "w"), [(31, 45), (5, 6), (64, 80)])
def test_fuse_for_inference_equals_the_plain_model(h, w):
    model = make_model()
    fast = inference_copy(model)
    ir, vis = random_inputs(2, h, w)
    with torch.no_grad():
        torch.testing.assert_close(fast(ir, vis), model(ir, vis), **TOL)
        torch.testing.assert_close(fast.fuse_tasks(ir, vis, _tasks(3), torch.tensor(
            [1.0, 0.5, 0.0])), model.fuse_tasks(ir, vis, _tasks(3), torch.tensor(
                [1.0, 0.5, 0.0])), **TOL)


def test_fuse_for_inference_folds_every_batch_norm_and_leaves_the_original():
    model = make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = inference_copy(model)
    remaining = [n for n, m in fast.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    # only the A2SI norms after the dynamic convolutions remain (no conv to fold them into)
    assert all(n.endswith(".norm") for n in remaining)
    assert isinstance(fast.vfn.fusion, FastAttentionFusion)
    assert not any(p.requires_grad for p in fast.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training is False and not isinstance(model.vfn.fusion, FastAttentionFusion)


def test_fast_attention_with_trained_batch_norm_statistics():
    """Folding must use the running statistics, so give them non-trivial values."""
    model = make_model()
    gen = torch.Generator().manual_seed(5)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    ir, vis = random_inputs(1, H, W)
    with torch.no_grad():
        torch.testing.assert_close(inference_copy(model)(ir, vis), model(ir, vis), **TOL)


def test_channels_last_gives_the_same_output():
    model = inference_copy(make_model())
    ir, vis = random_inputs(1, H, W)
    cl = [x.contiguous(memory_format=torch.channels_last) for x in (ir, vis)]
    with torch.no_grad():
        torch.testing.assert_close(model(*cl), model(ir, vis), **TOL)
        torch.testing.assert_close(model.fuse_tasks(*cl, _tasks(2)),
                                   model.fuse_tasks(ir, vis, _tasks(2)), **TOL)


# ------------------------------------------------------------------ reduced-resolution embedding


def test_embed_pool_factor():
    assert embed_pool_factor(512, 640, 0) == 1
    assert embed_pool_factor(512, 640, 640) == 1
    assert embed_pool_factor(512, 640, 160) == 4
    assert embed_pool_factor(512, 640, 150) == 5
    assert embed_pool_factor(1024, 1280, 160) == 8


def test_embedding_at_full_resolution_is_the_method_and_small_frames_are_untouched():
    block = make_model().rsc.block("ir", 0)
    f = torch.randn(2, 8, H, W)
    with torch.no_grad():
        full = block.image_embed(f).mean(dim=(2, 3))
        assert torch.equal(block.embed_image(f, 0), full)
        assert torch.equal(block.embed_image(f, max(H, W)), full)  # already small enough
        reduced = block.embed_image(f, 16)
    assert reduced.shape == full.shape and not torch.equal(reduced, full)


def test_embed_max_side_zero_equals_the_default_model_exactly():
    """Frames within the default 160 px are embedded at full resolution either way."""
    model = make_model()
    ir, vis = random_inputs(1, 40, 52)
    with torch.no_grad():
        ref = model.fuse_tasks(ir, vis, _tasks(2))
        model.set_embed_max_side(0)
        assert torch.equal(model.fuse_tasks(ir, vis, _tasks(2)), ref)
        model.set_embed_max_side(16)
        reduced = model.fuse_tasks(ir, vis, _tasks(2))
    assert reduced.shape == ref.shape and torch.isfinite(reduced).all()
    assert model.embed_max_side == 16


def test_reduced_embedding_stays_close_on_a_smooth_frame():
    """Block-averaging a smooth frame changes the pooled embedding only a little."""
    thermal, color = random_pair(96, 128, seed=2)
    engine_full = FusionEngine(make_loaded(), device="cpu", embed_max_side=0)
    engine_red = FusionEngine(make_loaded(), device="cpu", embed_max_side=64)
    a = engine_full.fuse(thermal, color, ["detection"]).fused_y
    b = engine_red.fuse(thermal, color, ["detection"]).fused_y
    assert float((a - b).abs().mean()) < 0.05


def test_config_field_round_trips_and_old_checkpoints_load(tmp_path):
    config = CLDyNConfig(embed_max_side=160)
    assert CLDyNConfig.from_dict(config.to_dict()) == config
    old = CLDyNConfig().to_dict()
    del old["embed_max_side"]  # a checkpoint written before the field existed
    assert CLDyNConfig.from_dict(old).embed_max_side == CLDyNConfig().embed_max_side == 160
    with pytest.raises(ValueError, match="embed_max_side"):
        CLDyNConfig(embed_max_side=-1)
    model = CLDyN(config).eval()
    path = save_checkpoint(tmp_path / "m.pt", model, {})
    assert load_checkpoint(path).model.embed_max_side == 160


def test_engine_embed_max_side_does_not_change_the_callers_model():
    loaded = make_loaded()
    FusionEngine(loaded, device="cpu", optimize=False, embed_max_side=32)
    FusionEngine(loaded, device="cpu", embed_max_side=0)
    assert loaded.model.embed_max_side == 160


# ------------------------------------------------------------------ task embeddings


def test_precomputed_task_embeddings_give_the_same_output():
    model = make_model()
    ir, vis = random_inputs(2, H, W)
    vectors = _tasks(3)
    with torch.no_grad():
        embs = model.embed_tasks(vectors)
        assert set(embs) == {("ir", 0), ("vis", 0)}
        torch.testing.assert_close(model.fuse_tasks(ir, vis, vectors, 0.7, embs),
                                   model.fuse_tasks(ir, vis, vectors, 0.7), atol=0, rtol=0)


def test_engine_embeds_each_task_vector_once(monkeypatch):
    engine = FusionEngine(make_loaded(), device="cpu")
    calls = []
    embed = engine.model.embed_tasks
    monkeypatch.setattr(engine.model, "embed_tasks", lambda v: calls.append(1) or embed(v))
    pair = random_pair(H, W)
    first = engine.fuse(*pair, ["detection", "segmentation"]).fused_y
    again = engine.fuse(*pair, ["segmentation", "detection"]).fused_y
    assert len(calls) == 2  # one per task, not per frame
    torch.testing.assert_close(again.flip(0), first, atol=0, rtol=0)
    engine.fuse(*pair, [engine.request({"detection": 1, "segmentation": 1})])
    assert len(calls) == 3  # a blend is a new vector


# ------------------------------------------------------------------ static selection


def test_static_selection_equals_the_selected_path():
    model = make_model()
    ir, vis = random_inputs(2, H, W)
    with torch.no_grad():
        ref = model.fuse_tasks(ir, vis, _tasks(3))
        model.set_static_selection(True)
        torch.testing.assert_close(model.fuse_tasks(ir, vis, _tasks(3)), ref, **TOL)
        model.set_static_selection(True, unfold_conv=True)
        torch.testing.assert_close(model.fuse_tasks(ir, vis, _tasks(3)), ref, **TOL)


@pytest.mark.parametrize(("k", "d"), [(1, 1), (3, 1), (3, 2), (3, 3)])
def test_unfolded_dynamic_conv_equals_grouped_conv(k, d):
    gen = torch.Generator().manual_seed(k * 10 + d)
    x = torch.randn(3, 8, 13, 17, generator=gen)
    kernels = torch.randn(3, 4, 8, 8, k, k, generator=gen)
    torch.testing.assert_close(dynamic_conv_unfolded(x, kernels, d, (8, k)),
                               dynamic_conv(x, kernels, d), atol=1e-4, rtol=1e-5)


def test_static_selection_does_not_run_the_gather_path(monkeypatch):
    model = make_model().set_static_selection(True)
    monkeypatch.setattr(A2SI, "_selected", lambda *a: pytest.fail("data-dependent path"))
    with torch.no_grad():
        model.fuse_tasks(*random_inputs(1, H, W), _tasks(1))


# ------------------------------------------------------------------ engine paths


@pytest.fixture(scope="module")
def pair():
    return random_pair(H, W, seed=4)


def _engines(**kwargs):
    loaded = make_loaded()
    return (FusionEngine(loaded, device="cpu", optimize=False),
            FusionEngine(make_loaded(), device="cpu", **kwargs))


@pytest.mark.parametrize("kwargs", [
    {}, {"channels_last": True}, {"optimize": True, "channels_last": False},
])
def test_optimised_engine_equals_the_plain_engine(pair, kwargs):
    plain, fast = _engines(**kwargs)
    reqs = ["none", "detection", "segmentation"]
    a, b = plain.fuse(*pair, reqs), fast.fuse(*pair, reqs)
    torch.testing.assert_close(b.fused_y, a.fused_y, **TOL)
    for k in a.images:
        assert np.abs(a.images[k].astype(int) - b.images[k].astype(int)).max() <= 1


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_optimised_reduced_precision_is_close_to_plain_fp32(pair, precision):
    plain = FusionEngine(make_loaded(), device="cpu", optimize=False)
    # Declared native: the numerics are checked on every machine (emulated where it lacks it).
    fast = FusionEngine(make_loaded(), device="cpu", precision=precision,
                        cpu_features=NATIVE_CPU_FEATURES[precision][:1])
    reqs = ["none", "detection"]
    diff = (fast.fuse(*pair, reqs).fused_y - plain.fuse(*pair, reqs).fused_y).abs()
    assert float(diff.max()) < 0.05 and float(diff.mean()) < 0.01


def test_detailed_timings_cover_the_pipeline_stages(pair):
    engine = FusionEngine(make_loaded(), device="cpu")
    engine.detailed_timings = True
    timings = engine.fuse(*pair, ["none", "detection"]).timings
    assert {"convert", "upload", "normalise", "preprocess", "fuse", "render", "download",
            "postprocess"} <= set(timings)
    assert all(t >= 0 for t in timings.values())


def test_warm_up_runs_a_frame_and_keeps_the_normaliser_fresh():
    engine = FusionEngine(make_loaded(), device="cpu", warmup=(H, W),
                          normalizer=ThermalNormalizer(smoothing=0.5))
    assert engine.normalizer._state is None


# ------------------------------------------------------------------ device-side preprocessing


def _numpy_preprocess(engine, thermal, color):
    """The original numpy preprocessing (reference)."""
    unit = thermal_to_unit(thermal, engine.normalizer, engine.thermal_mode)
    ir = torch.from_numpy(np.ascontiguousarray(unit, dtype=np.float32))
    return ir.view(1, 1, *unit.shape).clamp(0, 1)


@pytest.mark.parametrize("kind", ["uint8", "uint16", "float", "float_nan", "uint16_big"])
@pytest.mark.parametrize("mode", ["auto", "percentile", "fixed"])
def test_torch_thermal_normalisation_equals_numpy(kind, mode):
    rng = np.random.default_rng(0)
    h, w = (600, 500) if kind == "uint16_big" else (H, W)  # > 2^17 pixels: subsampled
    if kind == "uint8":
        thermal = rng.integers(0, 256, (h, w), dtype=np.uint8)
    elif kind.startswith("uint16"):
        thermal = rng.integers(7000, 9000, (h, w)).astype(np.uint16)
    else:
        thermal = rng.normal(0.5, 0.3, (h, w)).astype(np.float32)
        if kind == "float_nan":
            thermal[3, 4], thermal[5, 6], thermal[7, 8] = np.nan, np.inf, -np.inf
    color = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    for smoothing in (0.0, 0.6):
        ref_norm = ThermalNormalizer(2.0, 98.0, smoothing)
        dev_norm = ThermalNormalizer(2.0, 98.0, smoothing)
        ref_engine = FusionEngine(make_loaded(), device="cpu", thermal_mode=mode,
                                  normalizer=ref_norm)
        engine = FusionEngine(make_loaded(), device="cpu", thermal_mode=mode,
                              normalizer=dev_norm)
        for frame in (thermal, thermal[::-1].copy()):
            ref = _numpy_preprocess(ref_engine, frame, color)
            ir, _ = engine._preprocess(frame, color, "rgb")
            torch.testing.assert_close(ir, ref, atol=1e-6, rtol=0)
        assert ref_norm._state == pytest.approx(dev_norm._state, abs=1e-6)


@pytest.mark.parametrize(("lo", "hi"), [(0.0, 100.0), (0.0, 99.0), (1.0, 100.0)])
def test_torch_limits_use_exact_extremes(lo, hi):
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 60000, (700, 400)).astype(np.uint16)
    frame[123, 45] = 65000  # a single hot pixel a subsample could miss
    ref = ThermalNormalizer(lo, hi)._frame_limits(frame)
    got = thermal_limits_torch(torch.from_numpy(frame.astype(np.int32)), lo, hi)
    assert [float(v) for v in got] == pytest.approx(ref)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32])
def test_torch_limits_of_integer_frames_equal_torch_quantile_bit_for_bit(dtype):
    """Integer frames are sorted as integers, then interpolated: the same numbers as
    ``torch.quantile`` on the float64 subsample, for small and subsampled frames."""
    rng = np.random.default_rng(3)
    top = np.iinfo(dtype).max if dtype != np.int32 else 1 << 20
    for shape, lo, hi in (((31, 17), 1.0, 99.0), ((512, 640), 1.0, 99.0),
                          ((700, 400), 12.5, 87.3), ((1, 1), 1.0, 99.0)):
        frame = torch.from_numpy(rng.integers(0, top, shape).astype(dtype))
        step = math.ceil(math.sqrt(frame.numel() / 2**17)) if frame.numel() > 2**17 else 1
        sample = frame[::step, ::step].reshape(-1).double()
        want = torch.quantile(sample, torch.tensor([lo / 100, hi / 100], dtype=torch.float64))
        got = thermal_limits_torch(frame, lo, hi)
        assert [float(v) for v in got] == [float(v) for v in want]


def test_constant_and_all_nan_thermal_on_device_are_zero():
    engine = FusionEngine(make_loaded(), device="cpu", thermal_mode="percentile")
    color = np.zeros((H, W, 3), np.uint8)
    for frame in (np.full((H, W), 7000, np.uint16), np.full((H, W), np.nan, np.float32)):
        ir, _ = engine._preprocess(frame, color, "rgb")
        assert torch.equal(ir, torch.zeros_like(ir))


# ------------------------------------------------------------------ compile per frame size


def test_compile_once_per_frame_size_and_task_count(pair):
    """torch.compile with the 'eager' backend (dynamo only: fast, no C++ compiler) checks
    the recompilation logic on CPU: one compilation per (size, task count), reused."""
    torch._dynamo.reset()
    plain = FusionEngine(make_loaded(), device="cpu", optimize=False)
    engine = FusionEngine(make_loaded(), device="cpu", compile=True, compile_backend="eager")
    reqs = ["detection", "segmentation"]
    a = engine.fuse(*pair, reqs)
    assert engine.runner.compile_count == 1
    engine.fuse(*pair, reqs)
    assert engine.runner.compile_count == 1  # same size: reused
    torch.testing.assert_close(a.fused_y, plain.fuse(*pair, reqs).fused_y, **TOL)
    other = random_pair(H + 6, W - 4, seed=5)
    b = engine.fuse(*other, reqs)
    assert engine.runner.compile_count == 2  # new size: compiled once more
    torch.testing.assert_close(b.fused_y, plain.fuse(*other, reqs).fused_y, **TOL)
    engine.fuse(*pair, reqs)
    engine.fuse(*other, reqs)
    assert engine.runner.compile_count == 2  # both sizes cached
    engine.fuse(*pair, ["none"])
    assert engine.runner.compile_count == 3  # plain fusion is its own graph
    assert set(engine.runner.compiled) == {
        ("tasks", 2, H, W), ("tasks", 2, H + 6, W - 4), ("plain", 0, H, W)}


# ------------------------------------------------------------------ device failures


def _inject_oom(monkeypatch, engine):
    def boom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(engine.runner, "tasks", boom)
    monkeypatch.setattr(engine.runner, "plain", boom)


def test_out_of_memory_raises_a_device_error_and_the_engine_recovers(monkeypatch, pair):
    engine = FusionEngine(make_loaded(), device="cpu")
    ref = engine.fuse(*pair, ["detection"]).fused_y
    with monkeypatch.context() as m:
        _inject_oom(m, engine)
        with pytest.raises(DeviceError, match="out of memory") as info:
            engine.fuse(*pair, ["detection"])
    assert isinstance(info.value, RuntimeError)  # callers catching RuntimeError still work
    assert "OutOfMemoryError" in engine.last_device_error
    torch.testing.assert_close(engine.fuse(*pair, ["detection"]).fused_y, ref, atol=0, rtol=0)


def test_out_of_memory_falls_back_to_the_cpu(monkeypatch, pair):
    engine = FusionEngine(make_loaded(), device="cpu", fallback_device="cpu")
    ref = FusionEngine(make_loaded(), device="cpu").fuse(*pair, ["none", "detection"])
    _inject_oom(monkeypatch, engine)
    result = engine.fuse(*pair, ["none", "detection"])
    assert engine.fallbacks == 1 and result.device == "cpu"
    assert "fallback" in result.timings
    torch.testing.assert_close(result.fused_y, ref.fused_y, **TOL)
    assert all(np.array_equal(result.images[k], ref.images[k]) for k in ref.images)


def test_other_errors_are_not_swallowed(monkeypatch, pair):
    engine = FusionEngine(make_loaded(), device="cpu", fallback_device="cpu")
    monkeypatch.setattr(engine.runner, "tasks",
                        lambda *a, **k: (_ for _ in ()).throw(KeyError("bug")))
    with pytest.raises(KeyError):
        engine.fuse(*pair, ["detection"])
    assert engine.fallbacks == 0


def test_device_failure_classification():
    assert is_device_failure(torch.cuda.OutOfMemoryError("x"))
    assert is_device_failure(RuntimeError("CUDA error: an illegal memory access"))
    assert not is_device_failure(RuntimeError("shape mismatch"))
    assert not is_device_failure(ValueError("CUDA"))


# ------------------------------------------------------------------ CUDA


@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_cuda_paths_match_plain_fp32_cpu(pair, precision):
    ref = FusionEngine(make_loaded(), device="cpu", optimize=False)
    gpu = FusionEngine(make_loaded(), device="cuda", precision=precision)
    reqs = ["none", "detection", "segmentation"]
    diff = (gpu.fuse(*pair, reqs).fused_y.cpu() - ref.fuse(*pair, reqs).fused_y).abs()
    assert float(diff.max()) < (1e-4 if precision == "fp32" else 0.05)


@needs_cuda
def test_cuda_compiled_graph_matches(pair):
    ref = FusionEngine(make_loaded(), device="cpu", optimize=False)
    gpu = FusionEngine(make_loaded(), device="cuda", compile=True)
    reqs = ["detection"]
    for _ in range(3):  # CUDA graphs record after warm-up runs
        out = gpu.fuse(*pair, reqs).fused_y.cpu()
    torch.testing.assert_close(out, ref.fuse(*pair, reqs).fused_y, atol=1e-4, rtol=0)


@needs_cuda
def test_cuda_preprocessing_equals_cpu():
    rng = np.random.default_rng(2)
    thermal = rng.integers(7000, 9000, (H, W)).astype(np.uint16)
    color = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    cpu = FusionEngine(make_loaded(), device="cpu")
    gpu = FusionEngine(make_loaded(), device="cuda")
    a = cpu._preprocess(thermal, color, "bgr")
    b = gpu._preprocess(thermal, color, "bgr")
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(y.cpu(), x, atol=1e-6, rtol=0)


def test_replace_keeps_dataclass_config_frozen():
    assert dataclasses.replace(CLDyNConfig(), embed_max_side=8).embed_max_side == 8


@pytest.mark.parametrize("dilation", [1, 2])
@pytest.mark.parametrize("size", [(4, 4), (5, 5), (6, 9), (31, 40)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_reflect_conv_without_padded_copy_equals_reflect_padding(dilation, size, channels_last):
    from cldyn_ros.inference.fast import ReflectConv2d

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(5, 7, 3, padding=dilation, dilation=dilation,
                           padding_mode="reflect")
    x = torch.rand(2, 5, *size)  # small sizes take the padded fallback
    fast = ReflectConv2d(conv)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), conv(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="reflect"):
        ReflectConv2d(torch.nn.Conv2d(5, 7, 3, padding=1))
