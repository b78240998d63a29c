"""Conversion between ``sensor_msgs/Image``-like messages and numpy arrays.

Duck-typed: any object with ``height``, ``width``, ``encoding``, ``is_bigendian``, ``step`` and
``data`` works, in particular rclpy messages (``data`` is an ``array.array('B')``) and
``rosbags`` messages (``data`` is a uint8 ``numpy.ndarray``). Nothing here imports rclpy or
sensor_msgs, so bag tools and tests run without ROS, and cv_bridge (not available from PyPI)
is not needed.

This module only maps the bytes of a message to an array of the encoding's layout (any
encoding of :data:`RAW_ENCODINGS`: mono, colour with or without alpha, 8 or 16 bits, 32-bit
float, packed YUV 4:2:2 as ``H x W x 2``, Bayer mosaics as ``H x W``); channel order is never
changed: a ``bgr8`` message gives a BGR array. Turning those arrays into fusion inputs
(demosaicing, YUV to BGR, 16 to 8 bits, colour-coded thermal to grey) is
:mod:`cldyn_ros.streams.image_convert`.

:data:`THERMAL_ENCODINGS` and :data:`COLOR_ENCODINGS` are the encodings whose array is a
fusion input as it is (no conversion).
"""

from __future__ import annotations

import array
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "COLOR_ENCODINGS",
    "RAW_ENCODINGS",
    "THERMAL_ENCODINGS",
    "ImageMessageError",
    "encoding_info",
    "image_to_numpy",
    "numpy_to_image",
    "stamp_to_ns",
]

THERMAL_ENCODINGS = ("mono8", "mono16", "16UC1", "8UC1")
COLOR_ENCODINGS = ("rgb8", "bgr8")

_U8, _U16, _F32 = np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32)
# encoding -> (dtype, channels), as sensor_msgs/image_encodings.hpp defines them. Byte order
# is applied separately (is_bigendian). yuv422 (UYVY) and yuv422_yuy2 (YUYV) pack two
# pixels in four bytes: two bytes per pixel, viewed as H x W x 2.
_ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "mono8": (_U8, 1),
    "8UC1": (_U8, 1),
    "mono16": (_U16, 1),
    "16UC1": (_U16, 1),
    "32FC1": (_F32, 1),
    "rgb8": (_U8, 3),
    "bgr8": (_U8, 3),
    "rgba8": (_U8, 4),
    "bgra8": (_U8, 4),
    "rgb16": (_U16, 3),
    "bgr16": (_U16, 3),
    "rgba16": (_U16, 4),
    "bgra16": (_U16, 4),
    "yuv422": (_U8, 2),
    "yuv422_yuy2": (_U8, 2),
    "bayer_rggb8": (_U8, 1),
    "bayer_bggr8": (_U8, 1),
    "bayer_gbrg8": (_U8, 1),
    "bayer_grbg8": (_U8, 1),
}
#: Every encoding :func:`image_to_numpy` and :func:`numpy_to_image` handle.
RAW_ENCODINGS = tuple(_ENCODINGS)

_HOST_IS_BIGENDIAN = sys.byteorder == "big"


class ImageMessageError(ValueError):
    """An image message (or array) that cannot be converted; the message says why and
    ``kind`` names the cause in one word (``encoding``, ``zero_size``, ``step``,
    ``short_data``, ``dtype``, ``shape``), for counting rejections by cause."""

    def __init__(self, message: str, kind: str = "invalid") -> None:
        super().__init__(message)
        self.kind = kind


def encoding_info(encoding: str) -> tuple[np.dtype, int]:
    """The numpy dtype and channel count of a supported encoding.

    Raises:
        ImageMessageError: if the encoding is not supported.
    """
    try:
        return _ENCODINGS[encoding]
    except (KeyError, TypeError):
        raise ImageMessageError(
            f"unsupported encoding {encoding!r}; supported: "
            f"{', '.join(RAW_ENCODINGS)}", "encoding"
        ) from None


def stamp_to_ns(stamp: Any) -> int:
    """Nanoseconds of a ``builtin_interfaces/Time`` (anything with ``sec`` and ``nanosec``),
    or of a message with a ``header``; for :class:`cldyn_ros.streams.pairing.Frame`."""
    if hasattr(stamp, "header"):
        stamp = stamp.header
    if hasattr(stamp, "stamp"):
        stamp = stamp.stamp
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def as_bytes_array(data: Any) -> np.ndarray:
    """A flat uint8 view of a message's ``data`` without copying where possible."""
    if isinstance(data, np.ndarray):
        if data.dtype == np.uint8 and data.ndim == 1:
            return data  # rosbags: already what we need (may be read-only)
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    try:
        # array.array('B') (rclpy), bytes, bytearray, memoryview: shares their memory.
        return np.frombuffer(data, dtype=np.uint8)
    except TypeError:
        # A plain sequence of ints (e.g. a list): there is no buffer to share.
        return np.asarray(data, dtype=np.uint8).reshape(-1)


def image_to_numpy(msg: Any) -> np.ndarray:
    """View an image message's pixels as a numpy array.

    Returns an ``H x W`` array (single-channel encodings) or ``H x W x C`` (C channels of
    the encoding; 2 for the YUV 4:2:2 encodings) of uint8, uint16 or float32. Whenever the
    layout allows, the array is a view on ``msg.data`` (no copy): it is read-only if the
    buffer is (rosbags), it is not contiguous if rows are padded (``step > width * bytes per
    pixel``), and it changes with the message.
    Copy it (``arr.copy()``) to keep or modify it independently. The only copy made is for
    multi-byte data whose byte order (``is_bigendian``) differs from the host's.

    Raises:
        ImageMessageError: on an unsupported encoding, a zero width or height, a step shorter
            than a row, or data shorter than ``height * step``.
    """
    dtype, channels = encoding_info(msg.encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageMessageError(f"image has zero size: {width}x{height} ({msg.encoding})",
                                "zero_size")
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ImageMessageError(
            f"step {step} is shorter than a row: width {width} x {channels * dtype.itemsize} "
            f"bytes per pixel = {row_bytes} ({msg.encoding})", "step"
        )
    buf = as_bytes_array(msg.data)
    if buf.size < height * step:
        raise ImageMessageError(
            f"data has {buf.size} bytes, shorter than height {height} x step {step} = "
            f"{height * step} ({msg.encoding})", "short_data"
        )
    # Rows of `step` bytes, cut to the pixels: a strided view when rows are padded. Extra
    # bytes after the last row are ignored.
    rows = buf[: height * step].reshape(height, step)[:, :row_bytes]
    if dtype.itemsize > 1:
        bigendian = bool(msg.is_bigendian)
        # A view with the message's byte order (numpy handles unaligned rows of odd steps).
        rows = rows.view(dtype.newbyteorder(">" if bigendian else "<"))
        if bigendian != _HOST_IS_BIGENDIAN:
            rows = rows.astype(dtype)  # the one unavoidable copy: swap to host order
        else:
            rows = rows.view(dtype)  # same bytes, native dtype object
    if channels == 1:
        return rows
    return rows.reshape(height, width, channels)


def numpy_to_image(
    arr: np.ndarray,
    encoding: str,
    msg: Any = None,
    *,
    factory: Callable[[], Any] | None = None,
    header: Any = None,
) -> Any:
    """Fill an image message with the pixels of ``arr``.

    Args:
        arr: ``H x W`` (or ``H x W x 1``) for single-channel encodings, ``H x W x C`` for
            C-channel ones, of the encoding's dtype; any strides. Values are not converted:
            a dtype that does not match the encoding is an error.
        encoding: one of :data:`RAW_ENCODINGS`.
        msg: the message to fill (e.g. ``sensor_msgs.msg.Image()``), or None to make one with
            ``factory``.
        factory: makes an empty message when ``msg`` is None, e.g. ``sensor_msgs.msg.Image``.
        header: if given, assigned to ``msg.header``; otherwise the header is left alone.

    Returns:
        The filled message: ``height``, ``width``, ``encoding``, ``step = width * bytes per
        pixel`` (no padding), ``is_bigendian = 0`` (multi-byte data is written little-endian)
        and ``data``, a copy of the pixels that never aliases ``arr``. ``data`` keeps the type
        the message uses: a uint8 ndarray if ``msg.data`` is one (rosbags), bytes if it is
        bytes/bytearray, else an ``array.array('B')``: rclpy stores that as is or with one
        ``memcpy``, while bytes would be checked byte by byte (about 1000x slower for a VGA
        image with field checks on) and a numpy array would be iterated element by element.

    Raises:
        ImageMessageError: on an unsupported encoding, a dtype or shape that does not match
            it, or a zero-size array.
        TypeError: if neither ``msg`` nor ``factory`` is given.
    """
    dtype, channels = encoding_info(encoding)
    arr = np.asarray(arr)
    if arr.dtype != dtype:
        raise ImageMessageError(f"encoding {encoding!r} needs {dtype} pixels, got {arr.dtype}",
                                "dtype")
    if channels == 1 and arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    expected = "H x W" if channels == 1 else f"H x W x {channels}"
    if arr.ndim != (2 if channels == 1 else 3) or (channels > 1 and arr.shape[2] != channels):
        raise ImageMessageError(
            f"encoding {encoding!r} needs an {expected} array, got shape {arr.shape}", "shape"
        )
    height, width = arr.shape[:2]
    if height == 0 or width == 0:
        raise ImageMessageError(f"image has zero size: shape {arr.shape}", "zero_size")
    if msg is None:
        if factory is None:
            raise TypeError("numpy_to_image needs a message to fill (msg) or a factory")
        msg = factory()

    # Little-endian on the wire, the common case and what is_bigendian = 0 promises; a
    # no-op on little-endian hosts. Then contiguous, so the pixels are one block of bytes.
    if dtype.itemsize > 1:
        arr = arr.astype(dtype.newbyteorder("<"), copy=False)
    arr = np.ascontiguousarray(arr)

    flat = arr.reshape(-1).view(np.uint8)  # a view: arr is contiguous
    current = getattr(msg, "data", None)
    if isinstance(current, np.ndarray):
        data: Any = flat.copy()
    elif isinstance(current, (bytes, bytearray)):
        data = flat.tobytes()
    else:
        data = array.array("B")
        data.frombytes(memoryview(flat))  # type: ignore[arg-type]  # ndarray is a buffer

    if header is not None:
        msg.header = header
    msg.height = height
    msg.width = width
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = width * channels * dtype.itemsize
    msg.data = data
    return msg
