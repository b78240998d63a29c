"""Tests of cldyn_ros.imaging.thermal.ThermalNormalizer."""

from __future__ import annotations

import numpy as np
import pytest

from cldyn_ros.imaging.thermal import ThermalNormalizer


def _frame(seed: int = 0, shape: tuple[int, int] = (64, 80)) -> np.ndarray:
    """A 16-bit frame with a realistic raw count range."""
    rng = np.random.default_rng(seed)
    return rng.integers(7600, 8400, shape, dtype=np.uint16)


def test_uint8_min_max_stretch():
    rng = np.random.default_rng(0)
    img = rng.integers(20, 200, (30, 40), dtype=np.uint8)
    out = ThermalNormalizer(0.0, 100.0)(img)
    assert out.dtype == np.float32 and out.shape == img.shape
    vmin, vmax = float(img.min()), float(img.max())
    np.testing.assert_allclose(out, (img - vmin) / (vmax - vmin), atol=1e-6)
    assert out.min() == 0.0 and out.max() == 1.0


def test_uint16_percentiles_and_clipping():
    img = _frame()
    norm = ThermalNormalizer(1.0, 99.0)
    lo, hi = norm.limits(img)
    assert 7600 <= lo < hi <= 8400
    expected = np.percentile(img.astype(np.float64), [1.0, 99.0])
    np.testing.assert_allclose([lo, hi], expected)  # small frame: no subsampling
    out = norm.apply(img, lo, hi)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    # About 1 % of the pixels lie below the low limit and are clipped to 0.
    assert 0.002 < np.mean(out == 0.0) < 0.03


def test_large_frame_subsampled_limits_close_to_exact():
    img = _frame(1, (1024, 1280))
    img[500:520, 600:640] = 9500  # a small hot object
    lo, hi = ThermalNormalizer(1.0, 99.0).limits(img)
    exact = np.percentile(img, [1.0, 99.0])
    assert abs(lo - exact[0]) < 10 and abs(hi - exact[1]) < 10
    # (0, 100) must still find the single hottest pixel the subsample may skip.
    img[3, 5] = 12000
    assert ThermalNormalizer(0.0, 100.0).limits(img)[1] == 12000.0


def test_constant_image_gives_zeros_not_nan():
    for img in (np.full((10, 12), 7, np.uint8), np.full((10, 12), 8000, np.uint16)):
        out = ThermalNormalizer()(img)
        assert out.shape == img.shape and np.all(out == 0.0)
    assert np.all(ThermalNormalizer.apply(np.ones((3, 3)), 5.0, 5.0) == 0.0)
    assert np.all(ThermalNormalizer.apply(np.ones((3, 3)), 5.0, 1.0) == 0.0)


def test_float_input_with_nan_and_inf():
    img = np.linspace(20.0, 40.0, 100, dtype=np.float32).reshape(10, 10)
    img[0, 0] = np.nan
    img[1, 1] = np.inf
    img[2, 2] = -np.inf
    norm = ThermalNormalizer(0.0, 100.0)
    lo, hi = norm.limits(img)
    assert np.isfinite(lo) and np.isfinite(hi) and lo < hi
    out = norm.apply(img, lo, hi)
    assert np.all(np.isfinite(out)) and out.min() >= 0.0 and out.max() <= 1.0
    assert out[0, 0] == 0.0 and out[1, 1] == 1.0 and out[2, 2] == 0.0


def test_all_nan_frame():
    out = ThermalNormalizer()(np.full((4, 4), np.nan, np.float32))
    assert np.all(out == 0.0)


def _flash_limit_change(smoothing: float) -> float:
    """How far the high limit jumps when a hot object appears in a single frame."""
    norm = ThermalNormalizer(1.0, 99.0, smoothing=smoothing)
    base = _frame(2)
    for _ in range(5):
        norm.limits(base)
    before = norm.limits(base)[1]
    flash = base.copy()
    flash[:, :20] = 9800  # a hot object covering a quarter of the frame
    during = norm.limits(flash)[1]
    return during - before


def test_temporal_smoothing_suppresses_flicker():
    jump_raw = _flash_limit_change(0.0)
    jump_smooth = _flash_limit_change(0.9)
    assert jump_raw > 1000
    assert 0 < jump_smooth < 0.2 * jump_raw


def test_smoothing_converges_and_reset():
    norm = ThermalNormalizer(0.0, 100.0, smoothing=0.5)
    a = np.array([[0, 100]], dtype=np.uint8)
    b = np.array([[50, 150]], dtype=np.uint8)
    assert norm.limits(a) == (0.0, 100.0)  # the first frame initialises the state
    assert norm.limits(b) == (25.0, 125.0)
    for _ in range(40):
        lo, hi = norm.limits(b)
    assert lo == pytest.approx(50.0) and hi == pytest.approx(150.0)
    norm.reset()
    assert norm.limits(a) == (0.0, 100.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"low_percentile": -1.0},
        {"high_percentile": 101.0},
        {"low_percentile": 50.0, "high_percentile": 50.0},
        {"low_percentile": 90.0, "high_percentile": 10.0},
        {"smoothing": 1.0},
        {"smoothing": -0.1},
        {"smoothing": float("nan")},
        {"low_percentile": "1"},
    ],
)
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        ThermalNormalizer(**kwargs)
