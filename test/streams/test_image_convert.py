"""Tests of cldyn_ros.streams.image_convert: driver encodings -> fusion inputs.

Every supported colour and thermal encoding, raw and with padded rows / big-endian data
where the encoding has more than one byte per sample; unsupported ones give an error that
names the encoding.
"""

from __future__ import annotations

import array
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import pytest

from cldyn_ros.streams.image_convert import (
    COLOR_INPUT_ENCODINGS,
    THERMAL_INPUT_ENCODINGS,
    color_from_array,
    color_from_message,
    thermal_from_array,
    thermal_from_message,
)
from cldyn_ros.streams.image_msgs import (
    COLOR_ENCODINGS,
    THERMAL_ENCODINGS,
    ImageMessageError,
    numpy_to_image,
)


@dataclass
class RawImage:
    """The fields of sensor_msgs/Image."""

    height: int = 0
    width: int = 0
    encoding: str = ""
    is_bigendian: int = 0
    step: int = 0
    data: Any = field(default_factory=lambda: array.array("B"))


def message(arr: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False) -> RawImage:
    """A message of ``arr``; rows padded with ``pad`` junk bytes, optionally big-endian."""
    height, width = arr.shape[:2]
    wire = arr.astype(arr.dtype.newbyteorder(">" if bigendian else "<"))
    rows = np.ascontiguousarray(wire).reshape(height, -1).view(np.uint8)
    data = np.concatenate([rows, np.full((height, pad), 0xAB, np.uint8)], axis=1).tobytes()
    return RawImage(height, width, encoding, int(bigendian), rows.shape[1] + pad,
                    array.array("B", data))


RGB = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)


def test_old_tuples_are_subsets():
    """The node's pass-through tuples stay valid; the input tuples extend them."""
    assert set(COLOR_ENCODINGS) <= set(COLOR_INPUT_ENCODINGS)
    assert set(THERMAL_ENCODINGS) <= set(THERMAL_INPUT_ENCODINGS)


# ---------------------------------------------------------------------------- colour
@pytest.mark.parametrize("pad", [0, 3])
def test_rgb8_bgr8_pass_through(pad):
    frame = color_from_message(message(RGB, "rgb8", pad))
    assert frame.order == "rgb"
    np.testing.assert_array_equal(frame.image, RGB)
    frame = color_from_message(message(RGB[..., ::-1], "bgr8", pad))
    assert frame.order == "bgr"
    np.testing.assert_array_equal(frame.image[..., ::-1], RGB)


@pytest.mark.parametrize("pad", [0, 5])
@pytest.mark.parametrize("encoding", ["rgba8", "bgra8"])
def test_alpha_is_dropped(encoding, pad):
    colour = RGB if encoding == "rgba8" else RGB[..., ::-1]
    alpha = np.full(RGB.shape[:2] + (1,), 77, np.uint8)
    frame = color_from_message(message(np.concatenate([colour, alpha], 2), encoding, pad))
    assert frame.order == encoding[:3] and frame.image.shape == RGB.shape
    np.testing.assert_array_equal(frame.image, colour)


@pytest.mark.parametrize("bigendian", [False, True])
@pytest.mark.parametrize("encoding", ["rgb16", "bgr16", "rgba16", "bgra16"])
def test_16bit_colour_keeps_the_high_byte(encoding, bigendian):
    colour = RGB if encoding.startswith("rgb") else RGB[..., ::-1]
    wide = colour.astype(np.uint16) * 257 + 3  # low byte junk
    if "a" in encoding[:4]:
        wide = np.concatenate([wide, np.full(RGB.shape[:2] + (1,), 9, np.uint16)], 2)
    frame = color_from_message(message(wide, encoding, pad=2, bigendian=bigendian))
    assert frame.order == encoding[:3] and frame.image.dtype == np.uint8
    np.testing.assert_array_equal(frame.image, colour)


def test_mono8_colour_is_grey():
    grey = RGB[..., 0]
    frame = color_from_message(message(grey, "mono8", pad=1))
    assert frame.image.shape == RGB.shape
    for c in range(3):
        np.testing.assert_array_equal(frame.image[..., c], grey)


def _yuv_of(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """BT.601 video-range Y, U (Cb), V (Cr) of an RGB colour."""
    r, g, b = rgb
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    u = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    v = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
    return round(y), round(u), round(v)


@pytest.mark.parametrize("encoding", ["yuv422", "yuv422_yuy2"])
def test_yuv422_byte_orders(encoding):
    """ROS yuv422 is U Y V Y; yuv422_yuy2 is Y U Y V. A swapped order gives other colours."""
    h, w = 4, 6
    colour = (200, 40, 90)
    y, u, v = _yuv_of(colour)
    pair = [u, y, v, y] if encoding == "yuv422" else [y, u, y, v]
    arr = np.tile(np.array(pair, np.uint8), (h, w // 2)).reshape(h, w, 2)
    frame = color_from_message(message(arr, encoding, pad=4))
    assert frame.order == "bgr" and frame.image.shape == (h, w, 3)
    assert np.abs(frame.image[..., ::-1].astype(int) - colour).max() <= 3
    # The other byte order gives a clearly different colour.
    other = "yuv422_yuy2" if encoding == "yuv422" else "yuv422"
    wrong = color_from_array(arr, other).image[..., ::-1].astype(int)
    assert np.abs(wrong - colour).max() > 40


def test_yuv422_odd_width_is_an_error():
    with pytest.raises(ImageMessageError, match="even width"):
        color_from_array(np.zeros((2, 3, 2), np.uint8), "yuv422")


def _mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """A Bayer mosaic as ROS names it: the pattern's first two letters are row 0."""
    index = {"r": 0, "g": 1, "b": 2}
    h, w = rgb.shape[:2]
    out = np.empty((h, w), np.uint8)
    for dy in range(2):
        for dx in range(2):
            out[dy::2, dx::2] = rgb[dy::2, dx::2, index[pattern[2 * dy + dx]]]
    return out


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
def test_bayer_patterns(pattern):
    """A mosaic of a uniform colour demosaics to that colour: a wrong pattern mapping (the
    OpenCV naming offset) would swap red and blue or mix in green."""
    colour = np.array([210, 120, 30], np.uint8)
    rgb = np.broadcast_to(colour, (12, 16, 3)).copy()
    msg = message(_mosaic(rgb, pattern), f"bayer_{pattern}8", pad=2)
    frame = color_from_message(msg)
    assert frame.order == "bgr"
    interior = frame.image[2:-2, 2:-2, ::-1].astype(int)
    assert np.abs(interior - colour.astype(int)).max() <= 2
    if hasattr(cv2, f"COLOR_Bayer{pattern.upper()}2BGR"):  # OpenCV's unambiguous aliases
        direct = cv2.cvtColor(msg_array := _mosaic(rgb, pattern),
                              getattr(cv2, f"COLOR_Bayer{pattern.upper()}2BGR"))
        np.testing.assert_array_equal(color_from_array(msg_array, f"bayer_{pattern}8").image,
                                      direct)


@pytest.mark.parametrize("encoding", ["mono16", "32FC1", "nv12", "16UC1", "bayer_rggb16"])
def test_unsupported_colour_encodings(encoding):
    arr = np.zeros((4, 4), np.uint16)
    msg = RawImage(4, 4, encoding, 0, 8, array.array("B", bytes(32)))
    with pytest.raises(ImageMessageError, match=f"colour encoding '{encoding}' is not supported"):
        color_from_message(msg)
    with pytest.raises(ImageMessageError, match=f"'{encoding}'"):
        color_from_array(arr, encoding)


# --------------------------------------------------------------------------- thermal
COUNTS = np.random.default_rng(1).integers(7000, 9000, (6, 8), dtype=np.uint16)


@pytest.mark.parametrize("pad", [0, 3])
@pytest.mark.parametrize("encoding", ["mono8", "8UC1"])
def test_8bit_thermal(encoding, pad):
    img = (COUNTS % 256).astype(np.uint8)
    out = thermal_from_message(message(img, encoding, pad))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, img)


@pytest.mark.parametrize("bigendian", [False, True])
@pytest.mark.parametrize("encoding", ["mono16", "16UC1"])
def test_16bit_thermal(encoding, bigendian):
    out = thermal_from_message(message(COUNTS, encoding, pad=3, bigendian=bigendian))
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, COUNTS)


@pytest.mark.parametrize("bigendian", [False, True])
def test_32fc1_temperatures_mask_nan_and_inf(bigendian):
    temps = np.linspace(280.0, 320.0, 48, dtype=np.float32).reshape(6, 8)
    temps[0, 0], temps[1, 1], temps[2, 2] = np.nan, np.inf, -np.inf
    msg = message(temps, "32FC1", pad=5, bigendian=bigendian)
    out = thermal_from_message(msg)
    assert out.dtype == np.float32 and out.flags.writeable
    assert np.isnan(out[0, 0]) and np.isnan(out[1, 1]) and np.isnan(out[2, 2])
    finite = np.isfinite(temps)
    np.testing.assert_array_equal(out[finite], temps[finite])


def test_32fc1_is_stretched_like_counts_by_the_engine():
    """The engine's thermal path stretches temperatures between percentiles as it does 16-bit
    counts; masked pixels leave the limits alone and come out 0."""
    from cldyn_ros.imaging.thermal import ThermalNormalizer
    from cldyn_ros.inference.engine import thermal_to_unit

    temps = np.linspace(280.0, 320.0, 48, dtype=np.float32).reshape(6, 8)
    masked = temps.copy()
    masked[1, 1], masked[2, 2] = np.inf, -np.inf
    out = thermal_to_unit(thermal_from_array(masked, "32FC1"), ThermalNormalizer(0.0, 100.0))
    ref = thermal_to_unit(temps, ThermalNormalizer(0.0, 100.0))
    assert out[1, 1] == 0.0 and out[2, 2] == 0.0
    keep = np.ones_like(temps, bool)
    keep[1, 1] = keep[2, 2] = False
    np.testing.assert_allclose(out[keep], ref[keep], atol=1e-6)
    assert out.min() == 0.0 and out.max() == 1.0


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
def test_colour_coded_thermal_becomes_grey(encoding):
    colour = RGB if encoding.startswith("rgb") else RGB[..., ::-1]
    if encoding.endswith("a8"):
        colour = np.concatenate([colour, np.zeros(RGB.shape[:2] + (1,), np.uint8)], 2)
    out = thermal_from_message(message(colour, encoding, pad=2))
    r, g, b = (RGB[..., i].astype(float) for i in range(3))
    luma = 0.299 * r + 0.587 * g + 0.114 * b
    assert out.dtype == np.uint8 and out.shape == RGB.shape[:2]
    assert np.abs(out - luma).max() <= 1.0


@pytest.mark.parametrize("encoding", ["rgb16", "bgr16"])
def test_16bit_colour_coded_thermal_stays_16bit(encoding):
    wide = RGB.astype(np.uint16) * 257
    colour = wide if encoding == "rgb16" else wide[..., ::-1]
    out = thermal_from_message(message(colour, encoding, bigendian=True))
    r, g, b = (wide[..., i].astype(float) for i in range(3))
    assert out.dtype == np.uint16
    assert np.abs(out - (0.299 * r + 0.587 * g + 0.114 * b)).max() <= 2.0


@pytest.mark.parametrize(("encoding", "luma_byte"), [("yuv422", 1), ("yuv422_yuy2", 0)])
def test_yuv_thermal_is_the_y_plane(encoding, luma_byte):
    arr = np.random.default_rng(2).integers(0, 256, (4, 6, 2), dtype=np.uint8)
    out = thermal_from_message(message(arr, encoding, pad=2))
    np.testing.assert_array_equal(out, arr[..., luma_byte])


@pytest.mark.parametrize("encoding", ["bayer_rggb8", "16SC1", "nv12", "64FC1"])
def test_unsupported_thermal_encodings(encoding):
    msg = RawImage(4, 4, encoding, 0, 4, array.array("B", bytes(16)))
    with pytest.raises(ImageMessageError, match=f"thermal encoding '{encoding}' is not "
                       "supported; supported: mono8"):
        thermal_from_message(msg)


def test_layout_mismatch_is_an_error():
    with pytest.raises(ImageMessageError, match="'mono16' image must be 1-channel uint16"):
        thermal_from_array(np.zeros((4, 4), np.uint8), "mono16")
    with pytest.raises(ImageMessageError, match="'rgb8' image must be 3-channel uint8"):
        color_from_array(np.zeros((4, 4), np.uint8), "rgb8")


def test_rclpy_like_round_trip_through_numpy_to_image():
    """numpy_to_image writes every raw layout the conversions read."""
    rgba = np.concatenate([RGB, np.full(RGB.shape[:2] + (1,), 255, np.uint8)], 2)
    msg = numpy_to_image(rgba, "rgba8", RawImage())
    np.testing.assert_array_equal(color_from_message(msg).image, RGB)
    temps = np.full((3, 4), 300.5, np.float32)
    msg = numpy_to_image(temps, "32FC1", RawImage())
    np.testing.assert_array_equal(thermal_from_message(msg), temps)
