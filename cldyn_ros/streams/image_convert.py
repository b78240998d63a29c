"""Camera images in the encodings drivers publish -> the engine's fusion inputs.

The engine takes a colour frame as ``H x W x 3`` uint8 in RGB or BGR order and a thermal
frame as ``H x W`` uint8 counts, uint16 counts or float32 (temperatures). This module turns
what a driver or a bag delivers into those, for raw ``sensor_msgs/Image`` and (through
:mod:`cldyn_ros.streams.compressed`) ``sensor_msgs/CompressedImage`` messages, duck-typed and
without ROS:

colour (:data:`COLOR_INPUT_ENCODINGS`)
    ``rgb8``/``bgr8`` as they are; ``rgba8``/``bgra8`` without alpha; ``rgb16``/``bgr16``
    (and the 16-bit alpha variants) reduced to their high byte; ``mono8`` repeated to three
    channels; ``yuv422`` (UYVY byte order, as ROS defines it) and ``yuv422_yuy2`` (YUYV)
    converted to BGR; ``bayer_rggb8``/``bggr8``/``gbrg8``/``grbg8`` demosaiced to BGR.
thermal (:data:`THERMAL_INPUT_ENCODINGS`)
    ``mono8``/``8UC1`` and ``mono16``/``16UC1`` counts as they are; ``32FC1`` temperatures as
    float32 with every NaN or infinite pixel set to NaN, so the engine leaves them out of the
    stretch limits and maps them to 0 (its 16-bit path: percentile stretch, in
    ``thermal_mode`` ``auto``); colour-coded thermal (``rgb8``, ``bgr8``, ``rgba8``,
    ``bgra8``, ``rgb16``, ``bgr16``: an AGC or palette image) converted to grey (BT.601
    luma, as OpenCV's ``*2GRAY``); ``yuv422``/``yuv422_yuy2`` reduced to their Y plane.

Anything else raises :class:`~cldyn_ros.streams.image_msgs.ImageMessageError` naming the
encoding and the supported ones. Pass-through encodings give a view on the message's data
(see :func:`~cldyn_ros.streams.image_msgs.image_to_numpy`); converted ones a new array.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from .image_msgs import ImageMessageError, image_to_numpy

__all__ = [
    "COLOR_INPUT_ENCODINGS",
    "THERMAL_INPUT_ENCODINGS",
    "ColorFrame",
    "color_from_array",
    "color_from_message",
    "is_compressed",
    "message_array",
    "thermal_from_array",
    "thermal_from_message",
]

COLOR_INPUT_ENCODINGS = (
    "rgb8", "bgr8", "rgba8", "bgra8", "rgb16", "bgr16", "rgba16", "bgra16", "mono8",
    "yuv422", "yuv422_yuy2", "bayer_rggb8", "bayer_bggr8", "bayer_gbrg8", "bayer_grbg8",
)
THERMAL_INPUT_ENCODINGS = (
    "mono8", "8UC1", "mono16", "16UC1", "32FC1",
    "rgb8", "bgr8", "rgba8", "bgra8", "rgb16", "bgr16", "yuv422", "yuv422_yuy2",
)

# ROS names a Bayer pattern by its first row (rggb: R G / G B). OpenCV's old constants name
# it by the second row's second and third pixels, so ROS rggb is OpenCV "BayerBG". These
# names exist in every OpenCV 4 (the unambiguous COLOR_BayerRGGB2BGR aliases only in newer
# releases).
_BAYER_TO_BGR = {
    "bayer_rggb8": "COLOR_BayerBG2BGR",
    "bayer_bggr8": "COLOR_BayerRG2BGR",
    "bayer_gbrg8": "COLOR_BayerGR2BGR",
    "bayer_grbg8": "COLOR_BayerGB2BGR",
}
# Byte of the Y sample in each 2-byte pixel: UYVY has it second, YUYV first.
_YUV_LUMA_BYTE = {"yuv422": 1, "yuv422_yuy2": 0}
_YUV_TO_BGR = {"yuv422": "COLOR_YUV2BGR_UYVY", "yuv422_yuy2": "COLOR_YUV2BGR_YUYV"}


class ColorFrame(NamedTuple):
    """A colour fusion input: ``image`` ``H x W x 3`` uint8 in ``order`` (``rgb``/``bgr``)."""

    image: np.ndarray
    order: str


def _unsupported(role: str, encoding: str, supported: tuple[str, ...]) -> ImageMessageError:
    return ImageMessageError(
        f"{role} encoding {encoding!r} is not supported; supported: {', '.join(supported)}"
    )


def _check_layout(arr: np.ndarray, encoding: str, dtype: type, channels: int) -> None:
    got = 1 if arr.ndim == 2 else (arr.shape[2] if arr.ndim == 3 else -1)
    if arr.dtype != dtype or got != channels:
        raise ImageMessageError(
            f"a {encoding!r} image must be {channels}-channel {np.dtype(dtype)}, got shape "
            f"{arr.shape} of {arr.dtype}"
        )


def _high_byte(arr: np.ndarray) -> np.ndarray:
    return (arr >> 8).astype(np.uint8)


def _cv2_convert(arr: np.ndarray, code_name: str) -> np.ndarray:
    import cv2

    return cv2.cvtColor(np.ascontiguousarray(arr), getattr(cv2, code_name))


def color_from_array(arr: np.ndarray, encoding: str) -> ColorFrame:
    """A colour fusion input from an array in ``encoding``'s layout (what
    :func:`~cldyn_ros.streams.image_msgs.image_to_numpy` or
    :func:`~cldyn_ros.streams.compressed.decode_compressed` give)."""
    if encoding in ("rgb8", "bgr8"):
        _check_layout(arr, encoding, np.uint8, 3)
        return ColorFrame(arr, encoding[:3])
    if encoding in ("rgba8", "bgra8"):
        _check_layout(arr, encoding, np.uint8, 4)
        return ColorFrame(np.ascontiguousarray(arr[:, :, :3]), encoding[:3])
    if encoding in ("rgb16", "bgr16", "rgba16", "bgra16"):
        _check_layout(arr, encoding, np.uint16, 4 if "a" in encoding[:4] else 3)
        return ColorFrame(_high_byte(arr[:, :, :3]), encoding[:3])
    if encoding == "mono8":
        _check_layout(arr, encoding, np.uint8, 1)
        return ColorFrame(np.repeat(arr[:, :, None], 3, axis=2), "rgb")
    if encoding in _YUV_TO_BGR:
        _check_layout(arr, encoding, np.uint8, 2)
        if arr.shape[1] % 2:
            raise ImageMessageError(
                f"a {encoding!r} image needs an even width (two pixels share U and V), got "
                f"{arr.shape[1]}"
            )
        return ColorFrame(_cv2_convert(arr, _YUV_TO_BGR[encoding]), "bgr")
    if encoding in _BAYER_TO_BGR:
        _check_layout(arr, encoding, np.uint8, 1)
        if arr.shape[0] < 2 or arr.shape[1] < 2:
            raise ImageMessageError(f"a {encoding!r} image needs at least 2 x 2 pixels, got "
                                    f"{arr.shape[1]}x{arr.shape[0]}")
        return ColorFrame(_cv2_convert(arr, _BAYER_TO_BGR[encoding]), "bgr")
    raise _unsupported("colour", encoding, COLOR_INPUT_ENCODINGS)


def thermal_from_array(arr: np.ndarray, encoding: str) -> np.ndarray:
    """A thermal fusion input (``H x W`` uint8, uint16 or float32) from an array in
    ``encoding``'s layout."""
    if encoding in ("mono8", "8UC1"):
        _check_layout(arr, encoding, np.uint8, 1)
        return arr
    if encoding in ("mono16", "16UC1"):
        _check_layout(arr, encoding, np.uint16, 1)
        return arr
    if encoding == "32FC1":
        _check_layout(arr, encoding, np.float32, 1)
        out = np.array(arr, dtype=np.float32, copy=True)
        out[~np.isfinite(out)] = np.nan  # +-inf: no valid reading, masked like NaN
        return out
    if encoding in ("rgb8", "bgr8", "rgba8", "bgra8", "rgb16", "bgr16"):
        channels = 4 if encoding.endswith("a8") else 3
        dtype = np.uint16 if encoding.endswith("16") else np.uint8
        _check_layout(arr, encoding, dtype, channels)
        code = f"COLOR_{encoding[:3].upper()}2GRAY"
        return _cv2_convert(arr[:, :, :3], code)
    if encoding in _YUV_LUMA_BYTE:
        _check_layout(arr, encoding, np.uint8, 2)
        return np.ascontiguousarray(arr[:, :, _YUV_LUMA_BYTE[encoding]])
    raise _unsupported("thermal", encoding, THERMAL_INPUT_ENCODINGS)


def is_compressed(msg: Any) -> bool:
    """Whether ``msg`` looks like a ``sensor_msgs/CompressedImage`` (``format`` and ``data``,
    no ``encoding``)."""
    return hasattr(msg, "format") and not hasattr(msg, "encoding")


def message_array(msg: Any) -> tuple[np.ndarray, str]:
    """``(array, encoding)`` of a raw or compressed image message, the array in the
    encoding's layout."""
    if is_compressed(msg):
        from .compressed import decode_compressed

        decoded = decode_compressed(msg)
        return decoded.image, decoded.encoding
    return image_to_numpy(msg), str(msg.encoding)


def color_from_message(msg: Any) -> ColorFrame:
    """A colour fusion input from a ``sensor_msgs/Image`` or ``CompressedImage``-like
    message (:class:`ImageMessageError` with the reason if it cannot be used)."""
    if not is_compressed(msg) and msg.encoding not in COLOR_INPUT_ENCODINGS:
        raise _unsupported("colour", msg.encoding, COLOR_INPUT_ENCODINGS)
    return color_from_array(*message_array(msg))


def thermal_from_message(msg: Any) -> np.ndarray:
    """A thermal fusion input from a ``sensor_msgs/Image`` or ``CompressedImage``-like
    message (:class:`ImageMessageError` with the reason if it cannot be used)."""
    if not is_compressed(msg) and msg.encoding not in THERMAL_INPUT_ENCODINGS:
        raise _unsupported("thermal", msg.encoding, THERMAL_INPUT_ENCODINGS)
    return thermal_from_array(*message_array(msg))
