"""Tests of cldyn_ros.imaging.registration.Registration."""

from __future__ import annotations

import numpy as np
import pytest

from cldyn_ros.imaging.registration import Registration


def _thermal(dtype=np.uint16, shape=(48, 64), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random(shape) * 9000).astype(dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64])
def test_identity_homography_equals_plain_resize_same_size(dtype):
    img = _thermal(dtype)
    plain = Registration()(img, img.shape)
    warped = Registration(np.eye(3))(img, img.shape)
    assert plain.dtype == warped.dtype == img.dtype
    np.testing.assert_array_equal(plain, img)
    np.testing.assert_array_equal(warped, plain)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("size", [(24, 32), (97, 131), (31, 17), (48, 200)])
def test_resize_keeps_dtype_and_odd_sizes(dtype, size):
    out = Registration()(_thermal(dtype), size)
    assert out.shape == size and out.dtype == dtype


def test_resize_preserves_values_of_a_smooth_image():
    ramp = np.tile(np.linspace(7000, 9000, 64, dtype=np.float32), (48, 1))
    down = Registration()(ramp, (24, 32))
    up = Registration()(ramp, (96, 128))
    assert down.min() >= 7000 and down.max() <= 9000
    assert up.min() >= 7000 and up.max() <= 9000
    assert np.all(np.diff(up, axis=1) >= 0)  # still a ramp: no ringing


def test_translation_shifts_content():
    img = _thermal(np.uint16)
    dx, dy = 5, 3
    out = Registration([1, 0, dx, 0, 1, dy, 0, 0, 1])(img, img.shape)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out[dy:, dx:], img[:-dy, :-dx])
    assert np.all(out[:dy] == 0) and np.all(out[:, :dx] == 0)  # constant-0 border


def test_homography_combined_with_size_change():
    # Thermal at half the colour resolution: a scale-2 homography maps it onto the colour grid.
    img = np.zeros((40, 50), np.float32)
    img[10:20, 20:30] = 1.0
    out = Registration(np.diag([2.0, 2.0, 1.0]))(img, (80, 100))
    assert out.shape == (80, 100)
    ys, xs = np.nonzero(out > 0.5)
    assert 19 <= ys.min() <= 21 and 37 <= ys.max() <= 40
    assert 39 <= xs.min() <= 41 and 57 <= xs.max() <= 60


def test_homography_property_and_repr():
    reg = Registration([[1, 0, 2], [0, 1, 3], [0, 0, 1]])
    h = reg.homography
    assert h.shape == (3, 3) and h.dtype == np.float64
    h[0, 0] = 99.0  # a copy: the registration must not change
    assert reg.homography[0, 0] == 1.0
    assert "homography=" in repr(reg)
    assert Registration().homography is None


@pytest.mark.parametrize(
    ("homography", "message"),
    [
        ([1, 0, 0, 0, 1, 0], "9 numbers"),
        (np.eye(4), "9 numbers"),
        ([1, 0, 0, 0, 1, 0, 0, 0, float("nan")], "non-finite"),
        ([1, 0, float("inf"), 0, 1, 0, 0, 0, 1], "non-finite"),
        (np.zeros((3, 3)), "singular"),
        ([1, 2, 3, 2, 4, 6, 0, 0, 1], "singular"),
        (["a"] * 9, "9 numbers"),
    ],
)
def test_bad_homographies(homography, message):
    with pytest.raises(ValueError, match=message):
        Registration(homography)


def test_bad_size_and_input():
    reg = Registration()
    with pytest.raises(ValueError):
        reg(_thermal(), (0, 10))
    with pytest.raises(ValueError):
        reg(np.zeros((2, 3, 4, 5), np.uint8), (4, 4))
