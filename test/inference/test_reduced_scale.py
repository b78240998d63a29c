"""Reduced internal resolution (the engine's ``internal_scale``): behaviour, not speed."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_loaded, make_model, random_pair

from cldyn_ros.inference.checkpoint import LoadedModel, load_checkpoint, save_checkpoint
from cldyn_ros.inference.engine import FusionEngine
from cldyn_ros.inference.reduced_scale import (
    MIN_INTERNAL_SIDE,
    ReducedScaleFusion,
    check_internal_scale,
    internal_size,
)
from cldyn_ros.model import CLDyN

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "cldyn_default.pt"


def corrected_model(with_rsc: bool = False, seed: int = 0) -> CLDyN:
    """A detail-prior model whose decoder output is not zero (a fresh prior model returns
    the prior itself, which would make every scale agree trivially)."""
    model = make_model(seed, with_rsc=with_rsc, prior="detail")
    last = model.vfn.decoder.tail[-1]
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        last.weight.copy_(torch.randn(last.weight.shape, generator=gen) * 0.3)
        last.bias.fill_(0.02)
    return model


def smooth_pair(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A warm blob and a slow visible pattern: no detail finer than about 1/8 of the frame."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    ir = 0.2 + 0.6 * torch.exp(-((xx - 0.6) ** 2 + (yy - 0.4) ** 2) / 0.05)
    vis = 0.5 + 0.3 * torch.sin(2 * math.pi * (xx + 0.5 * yy)) * torch.cos(math.pi * yy)
    return ir.view(1, 1, h, w), vis.view(1, 1, h, w)


# ------------------------------------------------------------------ scale 1 is today's model


def test_decoder_split_keeps_the_output_bit_identical():
    """``fuse_features`` = ``clamp(prior + tanh(decoder))`` exactly as computed before the
    decoder's residual was exposed for the reduced-scale composition."""
    model = corrected_model()
    ir, vis = smooth_pair(40, 56)
    vfn = model.vfn
    with torch.no_grad():
        d = vfn.decoder
        x = vfn.fusion(torch.cat([vfn.encoder_ir(ir), vfn.encoder_vis(vis)], dim=1))
        before = (vfn.prior_image(ir, vis) + torch.tanh(d.tail(d.blocks(d.head(x))))).clamp(0, 1)
        assert torch.equal(model(ir, vis), before)


def test_engine_at_scale_one_is_bit_identical_to_the_engine_without_the_option():
    loaded = LoadedModel(corrected_model(), {}, {})
    thermal, color = random_pair(37, 53)
    plain = FusionEngine(loaded, device="cpu").fuse(thermal, color)
    same = FusionEngine(loaded, device="cpu", internal_scale=1.0)
    assert same.runner.network is same.runner.model  # nothing wraps the model
    out = same.fuse(thermal, color)
    assert torch.equal(out.fused_y, plain.fused_y)
    assert np.array_equal(out.images["none"], plain.images["none"])


def test_tasks_at_scale_one_are_bit_identical():
    loaded = make_loaded(prior="detail")
    thermal, color = random_pair(31, 45)
    a = FusionEngine(loaded, device="cpu").fuse(thermal, color, ["none", "detection"])
    b = FusionEngine(loaded, device="cpu", internal_scale=1.0).fuse(
        thermal, color, ["none", "detection"])
    assert torch.equal(a.fused_y, b.fused_y)


# ------------------------------------------------------------------ reduced scale


@pytest.mark.parametrize("scale", [0.5, 0.25])
@pytest.mark.parametrize(("h", "w"), [(37, 53), (64, 80), (9, 12)])
def test_reduced_scale_output_has_the_frame_size_and_is_finite(scale, h, w):
    engine = FusionEngine(LoadedModel(corrected_model(), {}, {}), device="cpu",
                          internal_scale=scale)
    thermal, color = random_pair(h, w)
    result = engine.fuse(thermal, color)
    assert result.images["none"].shape == (h, w, 3)
    assert result.images["none"].dtype == np.uint8
    assert result.fused_y.shape == (1, 1, h, w)
    assert torch.isfinite(result.fused_y).all()
    assert 0.0 <= float(result.fused_y.min()) and float(result.fused_y.max()) <= 1.0


@pytest.mark.parametrize("scale", [0.5, 0.25])
def test_reduced_scale_is_close_to_full_scale_on_a_smooth_pair(scale):
    """On a pair without fine detail the decoder's correction varies slowly, so computing
    it from a 2x or 4x area-downsampled pair and upsampling it bilinearly must reproduce
    it: the output may differ from full scale by less than one 8-bit grey level on average
    (the output's own quantisation) and at most 6 levels anywhere (borders, where the
    reflect padding sees other pixels), and by far less than the correction itself
    (mean about 3 grey levels here), so the correction is really applied, in place."""
    model = corrected_model()
    ir, vis = smooth_pair(96, 128)
    with torch.no_grad():
        full = model(ir, vis)
        correction = (full - model.vfn.prior_image(ir, vis)).abs().mean()
        reduced = ReducedScaleFusion(model, scale)(ir, vis)
    diff = (reduced - full).abs()
    assert float(correction) > 2 / 255  # the test model corrects its prior visibly
    assert float(diff.mean()) < 1 / 255
    assert float(diff.max()) < 6 / 255
    assert float(diff.mean()) < 0.25 * float(correction)


def test_reduced_scale_keeps_the_full_resolution_prior():
    """The prior carries the fine structure: a one-pixel checkerboard in the visible
    image survives at scale 0.25 as it does at full scale (the network alone, at a
    quarter of the size, could not represent it)."""
    model = corrected_model()
    ir, vis = smooth_pair(64, 64)
    checker = (torch.arange(64).view(-1, 1) + torch.arange(64).view(1, -1)) % 2
    vis = (vis + 0.1 * checker.view(1, 1, 64, 64)).clamp(0, 1)
    with torch.no_grad():
        reduced = ReducedScaleFusion(model, 0.25)(ir, vis)
        full = model(ir, vis)

    def checker_energy(x: torch.Tensor) -> float:
        return float((x[..., 1:, :] - x[..., :-1, :]).abs().mean())

    assert checker_energy(reduced) > 0.9 * checker_energy(full) > 0.05


def test_reduced_scale_tasks_match_separate_plain_fusion_at_strength_zero():
    model = corrected_model(with_rsc=True)
    wrapped = ReducedScaleFusion(model, 0.5)
    ir, vis = smooth_pair(40, 48)
    vectors = torch.randn(2, model.config.task_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fused = wrapped.fuse_tasks(ir, vis, vectors, torch.tensor([0.0, 1.0]))
        plain = wrapped(ir, vis)
    assert fused.shape == (2, 1, 1, 40, 48)
    torch.testing.assert_close(fused[0], plain, atol=1e-6, rtol=0)
    assert not torch.allclose(fused[1], plain, atol=1e-4)  # compensation still acts


def test_engine_reduced_scale_serves_task_requests():
    engine = FusionEngine(make_loaded(prior="detail"), device="cpu", internal_scale=0.5)
    thermal, color = random_pair(33, 47)
    result = engine.fuse(thermal, color, ["none", "detection", "segmentation"])
    assert set(result.images) == {"none", "detection", "segmentation"}
    assert all(img.shape == (33, 47, 3) for img in result.images.values())
    assert torch.isfinite(result.fused_y).all()


def test_internal_size_rounds_and_keeps_a_minimum():
    assert internal_size(512, 640, 0.25) == (128, 160)
    assert internal_size(37, 53, 0.5) == (18, 26)
    assert internal_size(20, 6, 0.1) == (MIN_INTERNAL_SIDE, 6)


@pytest.mark.skipif(not SHIPPED.is_file(), reason="models/cldyn_default.pt is not here")
def test_the_shipped_model_runs_at_reduced_scale():
    engine = FusionEngine(SHIPPED, device="cpu", internal_scale=0.25)
    thermal, color = random_pair(48, 64)
    assert engine.fuse(thermal, color).images["none"].shape == (48, 64, 3)


# ------------------------------------------------------------------ the checkpoint's scale


def test_engine_takes_the_checkpoints_internal_scale_unless_told(tmp_path):
    path = tmp_path / "cpu.pt"
    save_checkpoint(path, corrected_model(), {}, {"internal_scale": 0.5})
    assert FusionEngine(path, device="cpu").internal_scale == 0.5
    assert FusionEngine(path, device="cpu", internal_scale=1.0).internal_scale == 1.0
    assert load_checkpoint(path).metadata["internal_scale"] == 0.5


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize("bad", [0, -0.5, 1.5, float("nan"), float("inf"), "half", None])
def test_bad_internal_scale_is_a_clear_value_error(bad):
    with pytest.raises(ValueError, match=r"internal_scale must be"):
        check_internal_scale(bad)


@pytest.mark.parametrize("bad", [0.0, 2.0, -1.0])
def test_engine_rejects_a_bad_internal_scale(bad):
    with pytest.raises(ValueError, match=r"internal_scale must be in \(0, 1\]"):
        FusionEngine(LoadedModel(corrected_model(), {}, {}), device="cpu", internal_scale=bad)


def test_reduced_scale_needs_a_model_with_a_prior():
    loaded = LoadedModel(make_model(with_rsc=False), {}, {})  # prior "none": the method
    with pytest.raises(ValueError, match=r"prior 'none'"):
        FusionEngine(loaded, device="cpu", internal_scale=0.5)
    FusionEngine(loaded, device="cpu", internal_scale=1.0)  # full scale is fine


def test_reduced_scale_is_not_offered_with_the_onnx_backend():
    with pytest.raises(ValueError, match=r"torch backend only"):
        FusionEngine(LoadedModel(corrected_model(), {}, {}), device="cpu", backend="onnx",
                     internal_scale=0.5)
