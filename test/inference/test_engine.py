"""FusionEngine: task requests, frame validation, pre/post-processing, precision, timings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import make_loaded, random_pair

from cldyn_ros.imaging.thermal import ThermalNormalizer
from cldyn_ros.inference.checkpoint import CheckpointError, save_checkpoint
from cldyn_ros.inference.engine import (
    NATIVE_CPU_FEATURES,
    FusionEngine,
    FusionResult,
    InputError,
    PrecisionError,
    TaskError,
    TaskRequest,
    check_precision,
    cpu_features,
    select_device,
    thermal_to_unit,
)

H, W = 31, 45  # odd on purpose


@pytest.fixture(scope="module")
def engine() -> FusionEngine:
    return FusionEngine(make_loaded(), device="cpu")


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    return random_pair(H, W, seed=1)


def _diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int16) - b.astype(np.int16))


# ------------------------------------------------------------------ construction


def test_loads_a_checkpoint_file(tmp_path, pair):
    loaded = make_loaded()
    path = save_checkpoint(tmp_path / "m.pt", loaded.model, loaded.task_vectors)
    from_file = FusionEngine(path, device="cpu")
    in_memory = FusionEngine(loaded, device="cpu")
    assert from_file.task_names == in_memory.task_names
    a = from_file.fuse(*pair, ["none", "detection"]).images
    b = in_memory.fuse(*pair, ["none", "detection"]).images
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_bad_checkpoint_file_raises_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError):
        FusionEngine(tmp_path / "missing.pt", device="cpu")


def test_invalid_precision_is_a_value_error():
    with pytest.raises(ValueError, match="precision"):
        FusionEngine(make_loaded(), device="cpu", precision="int8")


def test_invalid_thermal_mode_is_a_value_error():
    with pytest.raises(ValueError, match="thermal_mode"):
        FusionEngine(make_loaded(), device="cpu", thermal_mode="magic")


def test_cuda_when_unavailable_is_a_value_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA"):
        FusionEngine(make_loaded(), device="cuda")
    with pytest.raises(ValueError, match="CUDA"):
        select_device("cuda:1")


def test_auto_device_falls_back_to_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device("auto") == torch.device("cpu")


# ------------------------------------------------------------------ task requests


def test_task_names_include_none(engine):
    assert engine.task_names == ["none", "detection", "segmentation"]


def test_request_none_is_plain_fusion(engine):
    req = engine.request("none")
    assert req.label == "none" and req.vector is None and req.is_plain


def test_request_by_name_uses_the_task_vector(engine):
    req = engine.request("detection", strength=0.5)
    assert req.label == "detection" and req.strength == 0.5 and not req.is_plain
    assert torch.equal(req.vector, engine.task_vectors["detection"])


def test_request_with_strength_zero_is_plain(engine):
    assert engine.request("detection", strength=0.0).is_plain


def test_request_custom_label(engine):
    assert engine.request("segmentation", label="seg").label == "seg"


def test_blend_normalises_its_weights(engine):
    req = engine.request({"detection": 3.0, "segmentation": 1.0})
    expected = 0.75 * engine.task_vectors["detection"] + 0.25 * engine.task_vectors["segmentation"]
    torch.testing.assert_close(req.vector, expected)
    assert req.label == "detection:0.75+segmentation:0.25"


def test_blend_is_invariant_to_weight_scale(engine):
    a = engine.request({"detection": 1.0, "segmentation": 1.0})
    b = engine.request({"detection": 10.0, "segmentation": 10.0})
    torch.testing.assert_close(a.vector, b.vector)


@pytest.mark.parametrize("weight", [1.0, 0.3, 7.0])
def test_blend_of_a_single_task_equals_that_task(engine, weight):
    req = engine.request({"detection": weight})
    assert torch.equal(req.vector, engine.task_vectors["detection"])


def test_blend_ignores_zero_weights(engine):
    req = engine.request({"detection": 1.0, "segmentation": 0.0})
    assert torch.equal(req.vector, engine.task_vectors["detection"])


def test_unknown_task_names_the_task(engine):
    with pytest.raises(TaskError, match="'tracking'"):
        engine.request("tracking")


def test_unknown_task_in_blend_names_the_task(engine):
    with pytest.raises(TaskError, match="tracking"):
        engine.request({"detection": 1.0, "tracking": 1.0})


@pytest.mark.parametrize(
    "blend",
    [{}, {"detection": 0.0}, {"detection": -1.0, "segmentation": 2.0}, {"detection": np.nan}],
    ids=["empty", "all-zero", "negative", "nan"],
)
def test_bad_blend_weights_are_task_errors(engine, blend):
    with pytest.raises(TaskError):
        engine.request(blend)


@pytest.mark.parametrize("strength", [-0.1, 1.01, 5.0, float("nan")])
def test_strength_outside_unit_interval_is_a_task_error(engine, strength):
    with pytest.raises(TaskError, match="strength"):
        engine.request("detection", strength=strength)


def test_unknown_task_in_fuse_is_a_task_error(engine, pair):
    with pytest.raises(TaskError, match="tracking"):
        engine.fuse(*pair, ["none", "tracking"])


def test_fuse_without_requests_is_a_task_error(engine, pair):
    with pytest.raises(TaskError):
        engine.fuse(*pair, [])


# ------------------------------------------------------------------ fusion outputs


@pytest.mark.parametrize(("h", "w"), [(17, 23), (31, 45), (24, 32)])
def test_one_uint8_colour_image_per_request(engine, h, w):
    thermal, color = random_pair(h, w, seed=2)
    result = engine.fuse(thermal, color, ["none", "detection", "segmentation"])
    assert isinstance(result, FusionResult)
    assert list(result.images) == ["none", "detection", "segmentation"]
    for image in result.images.values():
        assert image.dtype == np.uint8 and image.shape == (h, w, 3)
    assert result.fused_y.shape == (3, 1, h, w)
    assert result.ir.shape == result.vis_y.shape == (1, 1, h, w)


def test_default_request_is_plain_fusion(engine, pair):
    assert list(engine.fuse(*pair).images) == ["none"]


def test_strength_zero_equals_none_exactly(engine, pair):
    together = engine.fuse(*pair, ["none", engine.request("detection", 0.0, label="zero")])
    assert np.array_equal(together.images["zero"], together.images["none"])
    alone = engine.fuse(*pair, [engine.request("detection", 0.0)]).images["detection"]
    assert np.array_equal(alone, together.images["none"])


def test_compensated_task_differs_from_none(engine, pair):
    images = engine.fuse(*pair, ["none", "detection", "segmentation"]).images
    assert _diff(images["detection"], images["none"]).mean() > 0
    assert _diff(images["segmentation"], images["none"]).mean() > 0
    assert _diff(images["detection"], images["segmentation"]).mean() > 0


def test_half_strength_lies_between(engine, pair):
    reqs = ["none", engine.request("detection", 0.5, label="half"), "detection"]
    y = engine.fuse(*pair, reqs).fused_y
    assert 0 < (y[1] - y[0]).abs().mean() < (y[2] - y[0]).abs().mean()


def test_several_requests_equal_separate_calls(engine, pair):
    blend = engine.request({"detection": 1.0, "segmentation": 1.0}, label="blend")
    reqs = ["none", "detection", engine.request("segmentation", 0.5), blend]
    together = engine.fuse(*pair, reqs).images
    for req in reqs:
        label = req if isinstance(req, str) else req.label
        alone = engine.fuse(*pair, [req]).images[label]
        assert _diff(together[label], alone).max() <= 1, label


def test_requests_with_the_same_label_are_rejected(engine, pair):
    # Images are keyed by label: two requests under one label would silently collapse.
    with pytest.raises(TaskError, match="distinct labels"):
        engine.fuse(*pair, ["detection", engine.request("detection", 0.5)])
    result = engine.fuse(*pair, ["detection", engine.request("detection", 0.5, label="half")])
    assert result.fused_y.shape[0] == 2
    assert set(result.images) == {"detection", "half"}


def test_fuse_is_deterministic(engine, pair):
    a = engine.fuse(*pair, ["none", "detection"]).images
    b = engine.fuse(*pair, ["none", "detection"]).images
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_bgr_order_gives_the_swapped_rgb_result(engine, pair):
    thermal, rgb = pair
    from_rgb = engine.fuse(thermal, rgb, ["none", "detection"]).images
    from_bgr = engine.fuse(thermal, rgb[:, :, ::-1], ["none", "detection"], "bgr").images
    for label in from_rgb:
        assert np.array_equal(from_bgr[label], from_rgb[label][:, :, ::-1]), label


def test_plain_fusion_keeps_the_visible_chroma(engine):
    """Fused Y with the visible Cb, Cr: a grey colour frame gives a grey output."""
    thermal, _ = random_pair(H, W, seed=3)
    grey = np.full((H, W, 3), 120, np.uint8)
    image = engine.fuse(thermal, grey).images["none"].astype(np.int16)
    assert np.abs(image[:, :, 0] - image[:, :, 1]).max() <= 1
    assert np.abs(image[:, :, 1] - image[:, :, 2]).max() <= 1


def test_result_luminance_matches_network_inputs(engine, pair):
    thermal, color = pair
    result = engine.fuse(thermal, color)
    expected_ir = torch.from_numpy(thermal.astype(np.float32) / 255.0)
    torch.testing.assert_close(result.ir[0, 0], expected_ir)
    rgb = color.astype(np.float32) / 255.0
    y = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    torch.testing.assert_close(result.vis_y[0, 0], torch.from_numpy(y), atol=1e-5, rtol=0)


# ------------------------------------------------------------------ thermal variants


def test_sixteen_bit_thermal_counts(engine, pair):
    thermal8, color = pair
    counts = (7000 + thermal8.astype(np.uint16) * 8).astype(np.uint16)  # 7000..9040
    result = engine.fuse(counts, color, ["none", "detection"])
    assert result.ir.min() == 0.0 and result.ir.max() == 1.0  # stretched, not /65535
    for image in result.images.values():
        assert image.shape == (H, W, 3) and image.dtype == np.uint8
        assert image.std() > 1.0
    plain8 = engine.fuse(thermal8, color).images["none"]
    assert _diff(result.images["none"], plain8).mean() < 40  # same scene, similar image


def test_thermal_with_a_channel_axis(engine, pair):
    thermal, color = pair
    a = engine.fuse(thermal[:, :, None], color).images["none"]
    b = engine.fuse(thermal, color).images["none"]
    assert np.array_equal(a, b)


def test_float_thermal_with_nan_gives_finite_output(engine, pair):
    thermal, color = pair
    hot = thermal.astype(np.float32) * 0.1 + 20.0  # degrees Celsius
    hot[3:6, 4:9] = np.nan
    result = engine.fuse(hot, color, ["none", "detection"])
    assert torch.isfinite(result.fused_y).all()


@pytest.mark.parametrize("thermal_shape", [(20, 30), (62, 90), (31, 20)])
def test_thermal_of_another_size_is_registered_to_the_colour_frame(engine, pair, thermal_shape):
    _, color = pair
    thermal, _ = random_pair(*thermal_shape, seed=4)
    result = engine.fuse(thermal, color, ["none", "detection"])
    assert result.ir.shape == (1, 1, H, W)
    assert all(image.shape == (H, W, 3) for image in result.images.values())


def test_constant_frames_give_finite_output(engine):
    thermal = np.full((20, 30), 100, np.uint8)
    color = np.full((H, W, 3), 128, np.uint8)
    result = engine.fuse(thermal, color, ["none", "detection", "segmentation"])
    assert torch.isfinite(result.fused_y).all()
    assert result.fused_y.min() >= 0.0 and result.fused_y.max() <= 1.0


def test_constant_sixteen_bit_thermal_gives_finite_output(engine, pair):
    thermal = np.full((H, W), 8000, np.uint16)
    result = engine.fuse(thermal, pair[1], ["none", "detection"])
    assert torch.isfinite(result.fused_y).all()


# ------------------------------------------------------------------ input validation


@pytest.mark.parametrize(
    ("thermal", "color"),
    [
        (np.zeros((H, W, 3), np.uint8), np.zeros((H, W, 3), np.uint8)),
        (np.zeros((H, W), np.uint8), np.zeros((H, W), np.uint8)),
        (np.zeros((H, W), np.uint8), np.zeros((H, W, 4), np.uint8)),
        (np.zeros((0, W), np.uint8), np.zeros((H, W, 3), np.uint8)),
        (np.zeros((H, W), np.uint8), np.zeros((0, 0, 3), np.uint8)),
        (np.zeros((H, W), np.uint8), np.zeros((H, W, 3), np.uint16)),
        (np.zeros((H, W), np.uint8), np.zeros((H, W, 3), np.float32)),
        (np.zeros((H, W), np.int32), np.zeros((H, W, 3), np.uint8)),
        (np.zeros((H, W), bool), np.zeros((H, W, 3), np.uint8)),
        (np.zeros(W, np.uint8), np.zeros((H, W, 3), np.uint8)),
        ([[0, 1], [2, 3]], np.zeros((H, W, 3), np.uint8)),
    ],
    ids=[
        "3-channel-thermal",
        "2d-colour",
        "4-channel-colour",
        "empty-thermal",
        "empty-colour",
        "uint16-colour",
        "float-colour",
        "int32-thermal",
        "bool-thermal",
        "1d-thermal",
        "list-thermal",
    ],
)
def test_malformed_frames_are_input_errors(engine, thermal, color):
    with pytest.raises(InputError):
        engine.fuse(thermal, color)


@pytest.mark.parametrize("order", ["RGB", "rgba", "", "yuv"])
def test_wrong_colour_order_is_an_input_error(engine, pair, order):
    with pytest.raises(InputError, match="order"):
        engine.fuse(*pair, color_order=order)


def test_input_error_is_a_value_error():
    assert issubclass(InputError, ValueError) and issubclass(TaskError, ValueError)


# ------------------------------------------------------------------ precision and timing


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_on_cpu_is_close_to_fp32(pair, precision):
    loaded = make_loaded()
    fp32 = FusionEngine(loaded, device="cpu").fuse(*pair, ["none", "detection"])
    # Declared native, so the numerics are checked on every machine (emulated where it lacks it).
    low_engine = FusionEngine(loaded, device="cpu", precision=precision,
                              cpu_features=NATIVE_CPU_FEATURES[precision][:1])
    low = low_engine.fuse(*pair, ["none", "detection"])
    assert low.fused_y.dtype == torch.float32
    assert next(loaded.model.parameters()).dtype == torch.float32  # autocast only
    for label, image in fp32.images.items():
        assert _diff(low.images[label], image).mean() < 3, label


AVX2_ONLY = ("sse4_2", "avx", "avx2", "fma3", "f16c")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_is_refused_on_a_cpu_without_native_support(precision):
    with pytest.raises(PrecisionError) as info:
        FusionEngine(make_loaded(), device="cpu", precision=precision, cpu_features=AVX2_ONLY)
    text = str(info.value)
    assert isinstance(info.value, ValueError)  # callers reporting bad settings still work
    assert f"'{precision}'" in text and "use precision fp32" in text
    assert all(flag in text for flag in NATIVE_CPU_FEATURES[precision])  # says why
    assert "\n" not in text


@pytest.mark.parametrize(("precision", "flag"), [
    ("bf16", "avx512_bf16"), ("bf16", "amx_bf16"), ("fp16", "avx512_fp16"),
    ("fp16", "amx_fp16")])
def test_reduced_precision_is_accepted_with_native_support(precision, flag):
    engine = FusionEngine(make_loaded(), device="cpu", precision=precision,
                          cpu_features=(*AVX2_ONLY, flag))
    assert engine.precision == precision


def test_fp32_runs_on_any_cpu_and_the_check_is_cpu_only():
    assert FusionEngine(make_loaded(), device="cpu", cpu_features=()).precision == "fp32"
    check_precision("bf16", torch.device("cuda"), AVX2_ONLY)  # GPUs: torch's business
    with pytest.raises(PrecisionError):
        check_precision("bf16", torch.device("cpu"), ())


def test_cpu_features_agree_with_proc_cpuinfo():
    try:
        with open("/proc/cpuinfo") as fh:
            lines = [line for line in fh if line.startswith("flags")]
    except OSError:
        pytest.skip("no /proc/cpuinfo on this machine")
    if not lines:
        pytest.skip("/proc/cpuinfo has no flags line (not x86)")
    flags = set(lines[0].split(":", 1)[1].split())
    have = cpu_features()
    for names in NATIVE_CPU_FEATURES.values():
        for name in names:
            assert (name in have) == (name in flags), name
    assert ("avx2" in have) == ("avx2" in flags)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_this_machine_gets_what_its_cpu_supports(precision):
    native = bool(cpu_features() & set(NATIVE_CPU_FEATURES[precision]))
    if native:
        assert FusionEngine(make_loaded(), device="cpu", precision=precision).precision \
            == precision
    else:
        with pytest.raises(PrecisionError):
            FusionEngine(make_loaded(), device="cpu", precision=precision)


def test_timings_cover_every_stage(engine, pair):
    timings = engine.fuse(*pair, ["none", "detection"]).timings
    assert set(timings) == {"preprocess", "fuse", "postprocess"}
    assert all(t > 0 for t in timings.values())


# ------------------------------------------------------------------ thermal_to_unit


def test_thermal_fixed_mode_scales_by_dtype_range():
    norm = ThermalNormalizer()
    u8 = np.array([[0, 51, 255]], np.uint8)
    u16 = np.array([[0, 13107, 65535]], np.uint16)
    np.testing.assert_allclose(thermal_to_unit(u8, norm, "fixed"), [[0.0, 0.2, 1.0]], atol=1e-6)
    np.testing.assert_allclose(thermal_to_unit(u16, norm, "fixed"), [[0.0, 0.2, 1.0]], atol=1e-6)


def test_thermal_fixed_mode_clips_floats_and_zeroes_nan():
    out = thermal_to_unit(np.array([[-0.5, 0.25, 2.0, np.nan]]), ThermalNormalizer(), "fixed")
    np.testing.assert_allclose(out, [[0.0, 0.25, 1.0, 0.0]])
    assert out.dtype == np.float32


def test_thermal_auto_mode_is_fixed_for_8_bit():
    thermal = np.array([[10, 20], [30, 40]], np.uint8)
    np.testing.assert_allclose(
        thermal_to_unit(thermal, ThermalNormalizer(), "auto"), thermal / 255.0, atol=1e-7
    )


def test_thermal_auto_mode_stretches_16_bit():
    thermal = np.linspace(7000, 9000, 100).astype(np.uint16).reshape(10, 10)
    out = thermal_to_unit(thermal, ThermalNormalizer(0.0, 100.0), "auto")
    assert out.min() == 0.0 and out.max() == 1.0
    assert out.dtype == np.float32


def test_thermal_percentile_mode_stretches_8_bit_too():
    thermal = np.array([[100, 110], [120, 130]], np.uint8)
    out = thermal_to_unit(thermal, ThermalNormalizer(0.0, 100.0), "percentile")
    np.testing.assert_allclose(out, [[0.0, 1 / 3], [2 / 3, 1.0]], atol=1e-6)


def test_thermal_unknown_mode_is_a_value_error():
    with pytest.raises(ValueError, match="mode"):
        thermal_to_unit(np.zeros((2, 2), np.uint8), ThermalNormalizer(), "linear")


def test_engine_fixed_thermal_mode_keeps_16_bit_counts_dim(pair):
    engine = FusionEngine(make_loaded(), device="cpu", thermal_mode="fixed")
    counts = np.full((H, W), 8000, np.uint16)
    result = engine.fuse(counts, pair[1])
    torch.testing.assert_close(result.ir, torch.full((1, 1, H, W), 8000 / 65535))


def test_task_request_defaults():
    req = TaskRequest("x")
    assert req.vector is None and req.strength == 1.0 and req.is_plain
