"""``sensor_msgs/CameraInfo`` content as plain data, without ROS.

:class:`CameraInfoData` holds what a CameraInfo message holds (size, distortion, K, R, P,
binning, ROI). It reads from and fills any CameraInfo-like object (rclpy or ``rosbags``
messages: ROS 2 field names ``d``, ``k``, ``r``, ``p``), so the node, the bag tools and the
tests share one implementation:

- :func:`fused_camera_info`: the camera_info of the fused image, from the colour camera's
  (the fused image is in the colour camera's frame): the same calibration when the fused
  image has the colour image's size, otherwise the intrinsics scaled to the fused size;
- :func:`pinhole_camera_info`: a simple pinhole model from an image size (bag tools, tests);
- :func:`camera_info_from_yaml`: a camera_calibration_parsers YAML file
  (``camera_calibrator`` output);
- :func:`camera_info_topic`: the camera_info topic that belongs to an image topic, as
  image_transport names it (a sibling of the image topic).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

__all__ = [
    "CameraInfoData",
    "camera_info_from_yaml",
    "camera_info_topic",
    "fused_camera_info",
    "pinhole_camera_info",
]


def _floats(values: Any, n: int | None, name: str) -> tuple[float, ...]:
    out = tuple(float(v) for v in (values if values is not None else ()))
    if n is not None and len(out) != n:
        raise ValueError(f"camera_info {name} must have {n} numbers, got {len(out)}")
    return out


_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass(frozen=True)
class CameraInfoData:
    """The content of a ``sensor_msgs/CameraInfo`` (no header).

    ``k`` (3x3), ``r`` (3x3) and ``p`` (3x4) are row-major; ``roi`` is ``(x_offset,
    y_offset, height, width, do_rectify)``; zero ROI size and binning 0 mean "full image"
    and "no binning", as in the message.
    """

    height: int
    width: int
    distortion_model: str = "plumb_bob"
    d: tuple[float, ...] = ()
    k: tuple[float, ...] = (0.0,) * 9
    r: tuple[float, ...] = _IDENTITY
    p: tuple[float, ...] = (0.0,) * 12
    binning_x: int = 0
    binning_y: int = 0
    roi: tuple[int, int, int, int, bool] = field(default=(0, 0, 0, 0, False))

    def __post_init__(self) -> None:
        for name, n in (("k", 9), ("r", 9), ("p", 12), ("d", None)):
            object.__setattr__(self, name, _floats(getattr(self, name), n, name))
        if self.height < 0 or self.width < 0:
            raise ValueError(f"camera_info size must not be negative, got "
                             f"{self.width}x{self.height}")

    @classmethod
    def from_message(cls, msg: Any) -> CameraInfoData:
        """Read a CameraInfo-like message (``ValueError`` if K, R or P have a wrong size)."""
        roi = msg.roi
        return cls(int(msg.height), int(msg.width), str(msg.distortion_model), msg.d, msg.k,
                   msg.r, msg.p, int(msg.binning_x), int(msg.binning_y),
                   (int(roi.x_offset), int(roi.y_offset), int(roi.height), int(roi.width),
                    bool(roi.do_rectify)))

    def fill(self, msg: Any, header: Any = None) -> Any:
        """Write this content into a CameraInfo-like message (and ``header`` if given).

        ``d``/``k``/``r``/``p`` are assigned as the type the message holds (a numpy array
        for ``rosbags``, a list for rclpy, which converts it)."""
        def like(current: Any, values: tuple[float, ...]) -> Any:
            try:
                import numpy as np

                if isinstance(current, np.ndarray):
                    return np.asarray(values, dtype=np.float64)
            except ImportError:  # pragma: no cover - numpy is a dependency
                pass
            return list(values)

        if header is not None:
            msg.header = header
        msg.height, msg.width = int(self.height), int(self.width)
        msg.distortion_model = self.distortion_model
        for name in ("d", "k", "r", "p"):
            setattr(msg, name, like(getattr(msg, name, None), getattr(self, name)))
        msg.binning_x, msg.binning_y = int(self.binning_x), int(self.binning_y)
        x, y, h, w, rect = self.roi
        msg.roi.x_offset, msg.roi.y_offset = int(x), int(y)
        msg.roi.height, msg.roi.width, msg.roi.do_rectify = int(h), int(w), bool(rect)
        return msg

    @property
    def image_size(self) -> tuple[int, int]:
        """``(height, width)`` of the images this calibration describes: the ROI (if set)
        divided by the binning."""
        bx, by = max(1, self.binning_x), max(1, self.binning_y)
        _, _, rh, rw, _ = self.roi
        h = rh if rh and rw else self.height
        w = rw if rh and rw else self.width
        return h // by, w // bx

    def scaled_to(self, height: int, width: int) -> CameraInfoData:
        """This calibration for images of ``height x width`` showing the same view as
        :attr:`image_size` (resized). ROI and binning are folded into the intrinsics first,
        so the result describes the resized image itself (binning 0, no ROI)."""
        if height <= 0 or width <= 0:
            raise ValueError(f"image size must be positive, got {width}x{height}")
        if (height, width) == self.image_size:
            return self
        bx, by = max(1, self.binning_x), max(1, self.binning_y)
        x0, y0 = float(self.roi[0]), float(self.roi[1])
        ih, iw = self.image_size
        sx, sy = width / iw / bx, height / ih / by
        k = list(self.k)
        k[0], k[1], k[2] = k[0] * sx, k[1] * sx, (k[2] - x0) * sx
        k[4], k[5] = k[4] * sy, (k[5] - y0) * sy
        p = list(self.p)
        p[0], p[1], p[2], p[3] = p[0] * sx, p[1] * sx, (p[2] - x0) * sx, p[3] * sx
        p[5], p[6], p[7] = p[5] * sy, (p[6] - y0) * sy, p[7] * sy
        return replace(self, height=int(height), width=int(width), k=tuple(k), p=tuple(p),
                       binning_x=0, binning_y=0, roi=(0, 0, 0, 0, False))


def fused_camera_info(color_info: CameraInfoData, height: int, width: int) -> CameraInfoData:
    """The camera_info of a fused image of ``height x width``, from the colour camera's.

    The fused image is in the colour camera's frame: its calibration is the colour camera's
    when the sizes match, else scaled (:meth:`CameraInfoData.scaled_to`). Publish it with
    the fused frame's header (stamp and frame_id of the colour frame)."""
    return color_info.scaled_to(height, width)


def pinhole_camera_info(height: int, width: int, hfov_deg: float = 60.0) -> CameraInfoData:
    """An undistorted pinhole camera of this size and horizontal field of view, principal
    point at the image centre, square pixels."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if not 0.0 < hfov_deg < 180.0:
        raise ValueError(f"field of view must be in (0, 180) degrees, got {hfov_deg}")
    f = width / (2.0 * math.tan(math.radians(hfov_deg) / 2.0))
    cx, cy = width / 2.0, height / 2.0
    return CameraInfoData(int(height), int(width), "plumb_bob", (0.0,) * 5,
                          (f, 0.0, cx, 0.0, f, cy, 0.0, 0.0, 1.0),
                          p=(f, 0.0, cx, 0.0, 0.0, f, cy, 0.0, 0.0, 0.0, 1.0, 0.0))


def _matrix(doc: dict, key: str, n: int, path: Path) -> Sequence[float]:
    value = doc.get(key)
    data = value.get("data") if isinstance(value, dict) else value
    if not isinstance(data, list) or len(data) != n:
        raise ValueError(f"'{path}': '{key}' must hold {n} numbers (camera_calibration_parsers "
                         "format: rows, cols, data)")
    return data


def camera_info_from_yaml(path: str | Path) -> CameraInfoData:
    """Read a camera_calibration_parsers YAML file (``image_width``, ``image_height``,
    ``camera_matrix``, ``distortion_model``, ``distortion_coefficients``,
    ``rectification_matrix``, ``projection_matrix``); ``ValueError`` with the reason."""
    import yaml

    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"cannot read camera calibration '{path}': {e}") from None
    if not isinstance(doc, dict) or "image_width" not in doc or "image_height" not in doc:
        raise ValueError(f"'{path}' is not a camera calibration file (no image_width/"
                         "image_height)")
    dist = doc.get("distortion_coefficients") or {"data": []}
    d = dist.get("data", []) if isinstance(dist, dict) else dist
    r = doc.get("rectification_matrix")
    return CameraInfoData(
        int(doc["image_height"]), int(doc["image_width"]),
        str(doc.get("distortion_model", "plumb_bob")), d,
        tuple(_matrix(doc, "camera_matrix", 9, path)),
        tuple(_matrix(doc, "rectification_matrix", 9, path)) if r is not None else _IDENTITY,
        tuple(_matrix(doc, "projection_matrix", 12, path)),
    )


def camera_info_topic(image_topic: str) -> str:
    """The camera_info topic of an image topic, as image_transport names it: a sibling of the
    image topic (``/cam/image_raw`` and ``/cam/image_raw/compressed`` ->
    ``/cam/camera_info``; ``fused/image`` -> ``fused/camera_info``)."""
    topic = image_topic.rstrip("/")
    if topic.endswith("/compressed"):
        topic = topic[: -len("/compressed")]
    parent, sep, _ = topic.rpartition("/")
    return f"{parent}{sep}camera_info" if sep else "camera_info"
