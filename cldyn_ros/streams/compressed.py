"""``sensor_msgs/CompressedImage`` <-> numpy, as image_transport's compressed plugins do it.

Duck-typed: anything with ``format`` (str) and ``data`` (bytes, ``array.array('B')``, uint8
ndarray) decodes, in particular rclpy and ``rosbags`` messages. No ROS, no cv_bridge.

Decoding follows the ``compressed`` subscriber plugin of image_transport_plugins:

- ``format`` is ``"<encoding>; <codec> compressed [<order>]"`` (``"rgb8; jpeg compressed
  bgr8"``, ``"mono16; png compressed "``), or just ``"jpeg"``/``"png"`` from old publishers.
- The data is decoded unchanged (OpenCV ``IMREAD_UNCHANGED``): a 16-bit PNG stays 16-bit.
- For a colour encoding, ``compressed bgr...`` means the encoder was given BGR, so the
  decoded BGR array is converted to the encoding's order (``rgb8``: swapped); without it the
  encoder was given the message's bytes as they were. Alpha is added (opaque) or dropped to
  match the encoding.
- A JPEG labelled with a 16-bit encoding was reduced to 8 bits by the publisher and is
  scaled back by 256.
- Without an encoding in ``format``: 1 channel is ``mono8`` (``mono16`` when 16-bit), 3 are
  ``bgr8``, 4 are ``bgra8``.
- ``"16UC1; compressedDepth png"`` (compressed_depth_image_transport) has a 12-byte header
  before the PNG; ``32FC1`` depth in that format stores quantised inverse values, which
  :func:`decode_compressed` inverts (0 -> NaN).

Empty, truncated or corrupt data, a format naming an unknown encoding, and a decoded image
whose channels or depth do not match the named encoding raise :class:`CompressedImageError`
with the reason. :func:`encode_compressed` writes what the compressed publisher writes
(JPEG for colour, PNG keeping 16 bits for thermal) for bags and tests.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

import numpy as np

from .image_msgs import RAW_ENCODINGS, ImageMessageError, as_bytes_array, encoding_info

__all__ = [
    "COMPRESSED_TYPE",
    "CompressedImageError",
    "DecodedImage",
    "decode_compressed",
    "encode_compressed",
    "parse_format",
]

COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
_COLOR = {"rgb8", "bgr8", "rgba8", "bgra8", "rgb16", "bgr16", "rgba16", "bgra16"}
_JPEG_MAGIC, _JPEG_END = b"\xff\xd8", b"\xff\xd9"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_DEPTH_HEADER = 12  # compressed_depth_image_transport: int32 format, float32 depthParam[2]


class CompressedImageError(ImageMessageError):
    """A compressed image that cannot be decoded or encoded; the message says why."""


class DecodedImage(NamedTuple):
    """A decoded compressed image: ``image`` in ``encoding``'s layout (as
    :func:`~cldyn_ros.streams.image_msgs.image_to_numpy` gives for a raw message)."""

    image: np.ndarray
    encoding: str


def parse_format(fmt: str) -> tuple[str | None, str]:
    """``(encoding or None, the rest)`` of a CompressedImage ``format`` string."""
    text = str(fmt).strip()
    encoding, sep, rest = text.partition(";")
    if not sep:
        return None, text.lower()
    return encoding.strip(), rest.strip().lower()


def _decode_bytes(data: bytes, fmt: str) -> np.ndarray:
    import cv2

    if data.startswith(_JPEG_MAGIC) and not data.rstrip(b"\0").endswith(_JPEG_END):
        raise CompressedImageError(
            f"JPEG data is truncated ({len(data)} bytes, no end marker; format '{fmt}')")
    if data.startswith(_PNG_MAGIC) and b"IEND" not in data[-12:]:
        raise CompressedImageError(
            f"PNG data is truncated ({len(data)} bytes, no IEND chunk; format '{fmt}')")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        kind = "JPEG" if data.startswith(_JPEG_MAGIC) else (
            "PNG" if data.startswith(_PNG_MAGIC) else "unrecognised")
        raise CompressedImageError(
            f"{kind} data cannot be decoded ({len(data)} bytes, format '{fmt}'): corrupt or "
            "truncated")
    return image


def _decode_depth(data: bytes, encoding: str, fmt: str) -> np.ndarray:
    if "png" not in fmt:
        raise CompressedImageError(f"compressedDepth format '{fmt}' is not supported (only "
                                   "png)")
    if len(data) <= _DEPTH_HEADER:
        raise CompressedImageError(f"compressedDepth data has {len(data)} bytes, no image "
                                   "after its 12-byte header")
    _, quant_a, quant_b = struct.unpack_from("<iff", data)
    image = _decode_bytes(data[_DEPTH_HEADER:], fmt)
    if image.ndim != 2 or image.dtype != np.uint16:
        raise CompressedImageError(f"compressedDepth image must be 16-bit single-channel, got "
                                   f"shape {image.shape} of {image.dtype}")
    if encoding in ("16UC1", "mono16"):
        return image
    if encoding == "32FC1":
        inv = image.astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            depth = np.float32(quant_a) / (inv - np.float32(quant_b))
        depth[image == 0] = np.nan
        return depth.astype(np.float32)
    raise CompressedImageError(f"compressedDepth with encoding {encoding!r} is not supported "
                               "(16UC1, mono16 or 32FC1)")


def _reorder(image: np.ndarray, encoding: str, compressed_bgr: bool) -> np.ndarray:
    """A decoded colour image (OpenCV channel order) -> the encoding's order and alpha."""
    want = 4 if encoding[3] == "a" else 3
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise CompressedImageError(f"format says {encoding!r} but the image decoded to "
                                   f"{1 if image.ndim == 2 else image.shape[2]} channel(s)")
    order = "bgr" if compressed_bgr else "rgb"
    out = image[:, :, :3]
    if order != encoding[:3]:
        out = out[:, :, ::-1]
    if want == 4:
        alpha = image[:, :, 3:] if image.shape[2] == 4 else np.full(
            out.shape[:2] + (1,), np.iinfo(image.dtype).max, image.dtype)
        out = np.concatenate([out, alpha], axis=2)
    return np.ascontiguousarray(out)


def decode_compressed(msg: Any) -> DecodedImage:
    """Decode a ``sensor_msgs/CompressedImage``-like message (see the module docstring)."""
    fmt = str(getattr(msg, "format", ""))
    data = as_bytes_array(msg.data).tobytes()
    if not data:
        raise CompressedImageError(f"compressed image has no data (format '{fmt}')")
    encoding, rest = parse_format(fmt)
    if encoding is not None and encoding not in RAW_ENCODINGS:
        raise CompressedImageError(
            f"compressed image format '{fmt}' names encoding {encoding!r}; supported: "
            f"{', '.join(RAW_ENCODINGS)}")
    if encoding is not None and "compresseddepth" in rest:
        return DecodedImage(_decode_depth(data, encoding, rest), encoding)
    image = _decode_bytes(data, fmt)
    if encoding is None:
        channels = 1 if image.ndim == 2 else image.shape[2]
        guess = {1: "mono", 3: "bgr", 4: "bgra"}.get(channels)
        if guess is None or image.dtype not in (np.uint8, np.uint16):
            raise CompressedImageError(f"compressed image decoded to {channels} channel(s) of "
                                       f"{image.dtype}, which no encoding describes")
        return DecodedImage(image, f"{guess}{16 if image.dtype == np.uint16 else 8}")
    dtype, channels = encoding_info(encoding)
    if dtype == np.uint16 and image.dtype == np.uint8 and "jpeg" in rest:
        image = image.astype(np.uint16) * np.uint16(256)  # the publisher kept the high byte
    if image.dtype != dtype:
        raise CompressedImageError(f"format says {encoding!r} ({dtype}) but the image decoded "
                                   f"to {image.dtype}")
    if encoding in _COLOR:
        image = _reorder(image, encoding, "compressed bgr" in rest)
    elif (1 if image.ndim == 2 else image.shape[2]) != channels:
        raise CompressedImageError(f"format says {encoding!r} ({channels} channel(s)) but the "
                                   f"image decoded to {image.shape[2]} channel(s)")
    return DecodedImage(image, encoding)


def encode_compressed(image: np.ndarray, encoding: str, codec: str = "jpeg",
                      quality: int = 90) -> tuple[str, bytes]:
    """``(format, data)`` of a CompressedImage holding ``image`` (in ``encoding``'s layout).

    Colour encodings are stored as BGR (``"<encoding>; <codec> compressed bgr8"``, 16-bit
    PNG as ``bgr16``; alpha dropped), single-channel ones as they are (``"mono16; png
    compressed "``: PNG keeps 16 bits). A JPEG keeps 8 bits: 16-bit data is reduced to its
    high byte (and scaled back when decoded). ``quality`` is the JPEG quality (1-100).

    Raises:
        CompressedImageError: an encoding the codec cannot hold (float, YUV) or a failed
            encode.
    """
    import cv2

    if codec not in ("jpeg", "png"):
        raise CompressedImageError(f"codec must be 'jpeg' or 'png', got {codec!r}")
    dtype, channels = encoding_info(encoding)
    image = np.asarray(image)
    if image.dtype != dtype:
        raise CompressedImageError(f"encoding {encoding!r} needs {dtype} pixels, got "
                                   f"{image.dtype}")
    if dtype == np.float32 or encoding.startswith("yuv"):
        raise CompressedImageError(f"encoding {encoding!r} cannot be stored as {codec} "
                                   "(use a raw Image)")
    if codec == "jpeg" and dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    suffix = ""
    if encoding in _COLOR:
        image = image[:, :, :3]
        if encoding[:3] == "rgb":
            image = image[:, :, ::-1]
        suffix = f"bgr{8 if image.dtype == np.uint8 else 16}"
    elif image.ndim == 3:
        image = image[:, :, 0]
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if codec == "jpeg" else []
    ok, buf = cv2.imencode(".jpg" if codec == "jpeg" else ".png",
                           np.ascontiguousarray(image), params)
    if not ok:
        raise CompressedImageError(f"{codec} encoding of a {encoding!r} image failed")
    return f"{encoding}; {codec} compressed {suffix}", buf.tobytes()
