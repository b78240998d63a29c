"""Received camera images, checked cheaply on arrival and converted after pairing.

Pairing needs only a frame's stamp, so the node keeps what it received in the pairing
:class:`~cldyn_ros.streams.pairing.Frame` as a :class:`ReceivedImage` and converts it to the
engine's :class:`~cldyn_ros.streams.pipeline.InputImage` on the worker thread, once the
frame is paired (:func:`convert_pair`): a compressed frame costs milliseconds to decode,
which the executor thread must not spend, and only paired frames are decoded at all.

A raw ``sensor_msgs/Image`` is checked on arrival (:func:`receive`: encoding and layout,
giving a zero-copy view), so a malformed one is rejected at once even when it would never
be paired; a ``CompressedImage`` is only decoded after pairing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .image_convert import (
    COLOR_INPUT_ENCODINGS,
    THERMAL_INPUT_ENCODINGS,
    color_from_array,
    is_compressed,
    thermal_from_array,
)
from .image_msgs import ImageMessageError, image_to_numpy
from .pairing import Pair

__all__ = ["ROLE_NAMES", "FrameConversionError", "InputImage", "ReceivedImage", "convert",
           "convert_pair", "receive"]

_THERMAL_ENCODING_OF = {"uint8": "mono8", "uint16": "mono16", "float32": "32FC1"}
#: Stream role -> the word used in messages and rejection causes.
ROLE_NAMES = {"thermal": "thermal", "color": "colour"}


@dataclass(frozen=True)
class InputImage:
    """Payload of a pairing :class:`~cldyn_ros.streams.pairing.Frame`: the pixels, their
    encoding and an opaque header carried to the output (a ROS header in the node)."""

    array: np.ndarray
    encoding: str
    header: Any = None
    decode_ms: float = 0.0


@dataclass(frozen=True)
class ReceivedImage:
    """What arrived on one stream: a raw image as a view in its ``encoding``'s layout, or a
    compressed message (``encoding`` empty) still to decode; ``header`` goes to the output."""

    source: Any
    encoding: str
    header: Any = None


class FrameConversionError(ImageMessageError):
    """A received image that cannot be used; ``role`` is ``thermal`` or ``color`` and
    ``cause`` the rejection cause (``<stream>_<kind>``, e.g. ``thermal_encoding``)."""

    def __init__(self, role: str, error: ImageMessageError) -> None:
        name = ROLE_NAMES[role]
        super().__init__(f"{name} image rejected: {error}", error.kind)
        self.role = role
        self.cause = f"{name}_{error.kind}"


def _allowed(role: str) -> tuple[str, ...]:
    return THERMAL_INPUT_ENCODINGS if role == "thermal" else COLOR_INPUT_ENCODINGS


def receive(role: str, msg: Any) -> ReceivedImage:
    """Check an arriving ``thermal`` or ``color`` message (a raw one fully, a compressed one
    not at all); :class:`FrameConversionError` with the reason if it cannot be used."""
    header = getattr(msg, "header", None)
    if is_compressed(msg):
        return ReceivedImage(msg, "", header)
    allowed = _allowed(role)
    try:
        if msg.encoding not in allowed:
            raise ImageMessageError(f"encoding '{msg.encoding}' is not one of {list(allowed)}",
                                    "encoding")
        return ReceivedImage(image_to_numpy(msg), str(msg.encoding), header)
    except ImageMessageError as e:
        raise FrameConversionError(role, e) from None


def convert(role: str, image: ReceivedImage) -> InputImage:
    """The fusion input of a received image: colour as ``rgb8``/``bgr8``, thermal as
    uint8, uint16 or float32 counts (see :mod:`cldyn_ros.streams.image_convert`)."""
    try:
        array, encoding = image.source, image.encoding
        if not encoding:  # compressed: decode now
            from .compressed import decode_compressed

            decoded = decode_compressed(image.source)
            array, encoding = decoded.image, decoded.encoding
            if encoding not in _allowed(role):
                raise ImageMessageError(
                    f"compressed image holds encoding '{encoding}', not one of "
                    f"{list(_allowed(role))}", "encoding")
        if role == "thermal":
            pixels = thermal_from_array(np.asarray(array), encoding)
            return InputImage(pixels, _THERMAL_ENCODING_OF[pixels.dtype.name], image.header)
        frame = color_from_array(np.asarray(array), encoding)
        return InputImage(frame.image, f"{frame.order}8", image.header)
    except ImageMessageError as e:
        raise FrameConversionError(role, e) from None


def convert_pair(pair: Pair) -> Pair:
    """``pair`` with both frames' :class:`ReceivedImage` converted to
    :class:`~cldyn_ros.streams.pipeline.InputImage` (thermal first);
    :class:`FrameConversionError` for the first that cannot be used."""
    thermal = replace(pair.thermal, data=convert("thermal", pair.thermal.data))
    color = replace(pair.color, data=convert("color", pair.color.data))
    return replace(pair, thermal=thermal, color=color)
