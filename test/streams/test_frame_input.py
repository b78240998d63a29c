"""Received images: raw ones checked on arrival, compressed ones decoded after pairing."""

from __future__ import annotations

import array
from types import SimpleNamespace

import numpy as np
import pytest

from cldyn_ros.streams.compressed import encode_compressed
from cldyn_ros.streams.frame_input import FrameConversionError, convert, convert_pair, receive
from cldyn_ros.streams.image_msgs import numpy_to_image
from cldyn_ros.streams.pairing import Frame, Pair

rng = np.random.default_rng(0)
THERMAL16 = rng.integers(0, 65535, (12, 16), dtype=np.uint16)
COLOUR = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)


def raw(arr: np.ndarray, encoding: str) -> SimpleNamespace:
    msg = SimpleNamespace(header="h", height=0, width=0, encoding="", is_bigendian=0, step=0,
                          data=array.array("B"))
    return numpy_to_image(arr, encoding, msg)


def compressed(arr: np.ndarray, encoding: str, codec: str) -> SimpleNamespace:
    fmt, data = encode_compressed(arr, encoding, codec)
    return SimpleNamespace(header="h", format=fmt, data=data)


def test_raw_images_are_checked_on_arrival_and_kept_as_views() -> None:
    got = receive("thermal", raw(THERMAL16, "mono16"))
    assert got.encoding == "mono16" and got.header == "h"
    assert np.array_equal(got.source, THERMAL16)
    with pytest.raises(FrameConversionError) as info:
        receive("color", raw(THERMAL16, "16UC1"))
    assert info.value.cause == "colour_encoding" and "16UC1" in str(info.value)
    short = raw(COLOUR, "rgb8")
    short.data = short.data[:10]
    with pytest.raises(FrameConversionError) as info:
        receive("color", short)
    assert info.value.cause == "colour_short_data"
    assert str(info.value).startswith("colour image rejected: ")


def test_compressed_images_are_decoded_only_by_convert() -> None:
    thermal = compressed(THERMAL16, "mono16", "png")
    got = receive("thermal", thermal)
    assert got.source is thermal and got.encoding == ""
    image = convert("thermal", got)
    assert image.array.dtype == np.uint16 and np.array_equal(image.array, THERMAL16)
    assert image.encoding == "mono16"
    colour = convert("color", receive("color", compressed(COLOUR, "rgb8", "png")))
    assert colour.encoding in ("rgb8", "bgr8")
    rgb = colour.array if colour.encoding == "rgb8" else colour.array[:, :, ::-1]
    assert np.array_equal(rgb, COLOUR)  # PNG: lossless, channel order restored


def test_conversion_errors_name_stream_and_cause() -> None:
    corrupt = compressed(COLOUR, "rgb8", "jpeg")
    corrupt.data = corrupt.data[: len(corrupt.data) // 2]
    with pytest.raises(FrameConversionError) as info:
        convert("color", receive("color", corrupt))
    assert info.value.cause.startswith("colour_") and "truncated" in str(info.value)
    rgba16 = np.concatenate([COLOUR, COLOUR[:, :, :1]], axis=2).astype(np.uint16)
    with pytest.raises(FrameConversionError) as info:  # a thermal stream takes no rgba16
        convert("thermal", receive("thermal", compressed(rgba16, "rgba16", "png")))
    assert info.value.cause == "thermal_encoding" and "rgba16" in str(info.value)


def test_converted_inputs_keep_layout_and_float_temperatures() -> None:
    temperatures = THERMAL16.astype(np.float32)
    temperatures[0, 0] = np.inf
    image = convert("thermal", receive("thermal", raw(temperatures, "32FC1")))
    assert image.encoding == "32FC1" and np.isnan(image.array[0, 0])
    bgra = np.concatenate([COLOUR[:, :, ::-1], np.full((12, 16, 1), 255, np.uint8)], axis=2)
    colour = convert("color", receive("color", raw(bgra, "bgra8")))
    assert colour.encoding == "bgr8" and np.array_equal(colour.array[:, :, ::-1], COLOUR)
    pair = Pair(Frame(5, receive("color", raw(COLOUR, "rgb8")), "cam"),
                Frame(4, receive("thermal", raw(THERMAL16, "16UC1")), "ir"), 1)
    out = convert_pair(pair)
    assert (out.color.stamp_ns, out.thermal.frame_id, out.gap_ns) == (5, "ir", 1)
    assert out.color.data.encoding == "rgb8" and out.thermal.data.array.dtype == np.uint16
