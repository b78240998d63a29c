"""Tests of cldyn_ros.streams.compressed: CompressedImage decoding/encoding like
image_transport's compressed plugins (format string decides the channel order, 16-bit PNG
stays 16-bit, corrupt data is an error)."""

from __future__ import annotations

import array
import struct
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import pytest

from cldyn_ros.streams.compressed import (
    CompressedImageError,
    decode_compressed,
    encode_compressed,
    parse_format,
)
from cldyn_ros.streams.image_convert import color_from_message, thermal_from_message
from cldyn_ros.streams.image_msgs import ImageMessageError


@dataclass
class Compressed:
    """The fields of sensor_msgs/CompressedImage (header left out)."""

    format: str
    data: Any


def _smooth_rgb(h: int = 32, w: int = 48) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // w, y * 255 // h, np.full_like(x, 60)], 2).astype(np.uint8)


RGB = _smooth_rgb()


def _png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


def _jpeg(image: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


def test_parse_format():
    assert parse_format("rgb8; jpeg compressed bgr8") == ("rgb8", "jpeg compressed bgr8")
    assert parse_format("mono16; png compressed ") == ("mono16", "png compressed")
    assert parse_format("jpeg") == (None, "jpeg")


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8"])
def test_compressed_bgr_is_converted_to_the_encodings_order(encoding):
    """The publisher converts to BGR before encoding ("compressed bgr8"); the subscriber
    hands back the message's encoding (rgb8: swapped back)."""
    msg = Compressed(f"{encoding}; png compressed bgr8", _png(RGB[..., ::-1]))
    decoded = decode_compressed(msg)
    assert decoded.encoding == encoding
    np.testing.assert_array_equal(decoded.image, RGB if encoding == "rgb8" else RGB[..., ::-1])
    frame = color_from_message(msg)
    np.testing.assert_array_equal(frame.image if frame.order == "rgb" else
                                  frame.image[..., ::-1], RGB)


def test_without_compressed_bgr_the_bytes_were_encoded_as_they_were():
    """Old publishers encoded an rgb8 image's bytes unchanged: the decoded 'BGR' array is
    really RGB, so rgb8 needs no swap."""
    msg = Compressed("rgb8; png compressed", _png(RGB))
    np.testing.assert_array_equal(decode_compressed(msg).image, RGB)
    msg = Compressed("bgr8; png compressed", _png(RGB))
    np.testing.assert_array_equal(decode_compressed(msg).image, RGB[..., ::-1])


def test_jpeg_colour_round_trip():
    fmt, data = encode_compressed(RGB, "rgb8", "jpeg", quality=95)
    assert fmt == "rgb8; jpeg compressed bgr8" and data[:2] == b"\xff\xd8"
    frame = color_from_message(Compressed(fmt, array.array("B", data)))  # rclpy's data type
    assert frame.order == "rgb"
    assert np.abs(frame.image.astype(int) - RGB).mean() < 3


def test_rgba_alpha_is_added_back_opaque():
    msg = Compressed("rgba8; png compressed bgr8", _png(RGB[..., ::-1]))
    decoded = decode_compressed(msg)
    assert decoded.image.shape == RGB.shape[:2] + (4,)
    np.testing.assert_array_equal(decoded.image[..., :3], RGB)
    assert np.all(decoded.image[..., 3] == 255)


def test_16bit_png_stays_16bit():
    counts = np.random.default_rng(0).integers(7000, 9000, (24, 32), dtype=np.uint16)
    fmt, data = encode_compressed(counts, "mono16", "png")
    assert fmt.startswith("mono16; png compressed")
    msg = Compressed(fmt, np.frombuffer(data, np.uint8))  # rosbags' data type
    decoded = decode_compressed(msg)
    assert decoded.encoding == "mono16" and decoded.image.dtype == np.uint16
    np.testing.assert_array_equal(decoded.image, counts)
    np.testing.assert_array_equal(thermal_from_message(msg), counts)


def test_16bit_colour_png_stays_16bit():
    wide = RGB.astype(np.uint16) * 257
    fmt, data = encode_compressed(wide, "rgb16", "png")
    assert fmt == "rgb16; png compressed bgr16"
    decoded = decode_compressed(Compressed(fmt, data))
    np.testing.assert_array_equal(decoded.image, wide)


def test_16bit_jpeg_is_scaled_back_by_256():
    counts = np.full((16, 16), 0x3456, np.uint16)
    fmt, data = encode_compressed(counts, "mono16", "jpeg", quality=100)
    decoded = decode_compressed(Compressed(fmt, data))
    assert decoded.image.dtype == np.uint16
    assert np.all(decoded.image == 0x3400)


def test_plain_format_strings_guess_from_channels():
    assert decode_compressed(Compressed("jpeg", _jpeg(RGB))).encoding == "bgr8"
    assert decode_compressed(Compressed("png", _png(RGB[..., 0]))).encoding == "mono8"
    counts = np.full((4, 4), 40000, np.uint16)
    decoded = decode_compressed(Compressed("png", _png(counts)))
    assert decoded.encoding == "mono16" and decoded.image.dtype == np.uint16


def test_colour_coded_thermal_jpeg_becomes_grey():
    msg = Compressed("bgr8; jpeg compressed bgr8", _jpeg(RGB[..., ::-1]))
    grey = thermal_from_message(msg)
    assert grey.shape == RGB.shape[:2] and grey.dtype == np.uint8


def test_bayer_mosaic_in_a_png():
    mosaic = np.random.default_rng(3).integers(0, 256, (8, 8), dtype=np.uint8)
    fmt, data = encode_compressed(mosaic, "bayer_rggb8", "png")
    decoded = decode_compressed(Compressed(fmt, data))
    np.testing.assert_array_equal(decoded.image, mosaic)
    assert color_from_message(Compressed(fmt, data)).image.shape == (8, 8, 3)


def test_compressed_depth_16uc1_and_32fc1():
    counts = np.arange(1, 17, dtype=np.uint16).reshape(4, 4) * 1000
    header = struct.pack("<iff", 0, 0.0, 0.0)
    msg = Compressed("16UC1; compressedDepth png", header + _png(counts))
    np.testing.assert_array_equal(decode_compressed(msg).image, counts)
    # 32FC1: quantised inverse depth, depth = a / (q - b); q = 0 means no value.
    a, b = 100.0, -10.0
    q = np.array([[0, 30], [90, 190]], np.uint16)
    msg = Compressed("32FC1; compressedDepth png", struct.pack("<iff", 0, a, b) + _png(q))
    out = decode_compressed(msg).image
    assert out.dtype == np.float32 and np.isnan(out[0, 0])
    np.testing.assert_allclose(out[q > 0], a / (q[q > 0].astype(np.float32) - b), rtol=1e-6)


@pytest.mark.parametrize(
    ("msg", "reason"),
    [
        (Compressed("rgb8; jpeg compressed bgr8", b""), "has no data"),
        (Compressed("rgb8; jpeg compressed bgr8", b"not an image at all"), "cannot be decoded"),
        (Compressed("rgb8; jpeg compressed bgr8", _jpeg(RGB)[:400]), "JPEG data is truncated"),
        (Compressed("mono16; png compressed ", _png(np.zeros((9, 9), np.uint16))[:60]),
         "PNG data is truncated"),
        # headers destroyed (damage libjpeg can skip over decodes, as with cv_bridge)
        (Compressed("rgb8; jpeg compressed bgr8", _jpeg(RGB)[:2] + b"\x00" * 100 +
                    _jpeg(RGB)[102:]), "JPEG data cannot be decoded"),
        (Compressed("nv12; jpeg compressed", _jpeg(RGB)), "names encoding 'nv12'"),
        (Compressed("mono16; png compressed ", _png(RGB[..., 0])), "decoded to uint8"),
        (Compressed("rgb8; png compressed bgr8", _png(RGB[..., 0])), "decoded to 1 channel"),
        (Compressed("mono8; png compressed ", _png(RGB)), "decoded to 3 channel"),
        (Compressed("16UC1; compressedDepth png", b"\x00" * 8), "no image after"),
        (Compressed("16UC1; compressedDepth rvl", b"\x00" * 40), "not supported"),
    ],
)
def test_bad_compressed_images(msg, reason):
    with pytest.raises(CompressedImageError, match=reason):
        decode_compressed(msg)
    assert issubclass(CompressedImageError, ImageMessageError)


def test_encode_errors():
    with pytest.raises(CompressedImageError, match="cannot be stored"):
        encode_compressed(np.zeros((4, 4), np.float32), "32FC1", "png")
    with pytest.raises(CompressedImageError, match="needs uint8"):
        encode_compressed(np.zeros((4, 4), np.uint16), "mono8", "png")
    with pytest.raises(CompressedImageError, match="codec"):
        encode_compressed(np.zeros((4, 4), np.uint8), "mono8", "webp")


def test_rclpy_compressed_image_decodes():
    """A real sensor_msgs/CompressedImage from rclpy (where importable)."""
    sensor_msgs = pytest.importorskip("sensor_msgs.msg", reason="rclpy messages not installed")
    fmt, data = encode_compressed(RGB, "rgb8", "png")
    msg = sensor_msgs.CompressedImage(format=fmt, data=array.array("B", data))
    np.testing.assert_array_equal(decode_compressed(msg).image, RGB)
