"""Geometric alignment of the thermal image onto the colour (visible) frame.

Fusion works pixel by pixel, so the thermal image must be brought onto the pixel grid of the
colour frame first. Without calibration the two cameras are assumed to share the field of view
and the thermal image is only resized; with a calibrated 3x3 homography it is warped.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

__all__ = ["Registration"]

# dtypes that cv2.resize / cv2.warpPerspective handle natively with bilinear interpolation.
_CV2_DTYPES = (np.uint8, np.uint16, np.int16, np.float32, np.float64)

# A homography whose condition number exceeds this is numerically singular: its inverse, which
# cv2.warpPerspective uses internally, would be meaningless.
_MAX_CONDITION = 1e12


def _validate_homography(homography: np.ndarray | Sequence[float]) -> np.ndarray:
    """Return ``homography`` as a validated 3x3 ``float64`` array or raise ``ValueError``."""
    try:
        h = np.array(homography, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"homography must contain 9 numbers: {exc}") from None
    if h.size != 9 or h.shape not in ((9,), (3, 3), (1, 9), (9, 1)):
        raise ValueError(
            "homography must be a 3x3 matrix or 9 numbers in row-major order, "
            f"got shape {h.shape}"
        )
    h = h.reshape(3, 3)
    if not np.all(np.isfinite(h)):
        raise ValueError(f"homography contains non-finite values (NaN or inf):\n{h}")
    if np.linalg.cond(h) > _MAX_CONDITION:
        raise ValueError(f"homography is singular (not invertible):\n{h}")
    return h


class Registration:
    """Map a thermal image onto the pixel grid of the colour frame.

    Args:
        homography: optional 3x3 matrix (or 9 numbers, row-major) mapping thermal pixel
            coordinates ``(x, y, 1)`` to colour pixel coordinates. ``None`` means the cameras
            share the field of view and the thermal image is simply resized.

    Raises:
        ValueError: if the homography has the wrong shape, non-finite entries or is singular.

    Example:
        >>> reg = Registration([1, 0, 12, 0, 1, -4, 0, 0, 1])  # thermal is shifted by (12, -4)
        >>> aligned = reg(thermal, (480, 640))  # doctest: +SKIP
    """

    def __init__(self, homography: np.ndarray | Sequence[float] | None = None) -> None:
        self._homography = None if homography is None else _validate_homography(homography)

    @property
    def homography(self) -> np.ndarray | None:
        """A copy of the 3x3 ``float64`` homography, or ``None`` for plain resizing."""
        return None if self._homography is None else self._homography.copy()

    def __repr__(self) -> str:
        if self._homography is None:
            return f"{type(self).__name__}(homography=None)"
        values = ", ".join(f"{v:.6g}" for v in self._homography.ravel())
        return f"{type(self).__name__}(homography=[{values}])"

    def __call__(self, thermal: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """Align ``thermal`` to a colour frame of ``size``.

        Args:
            thermal: HxW (or HxWxC) thermal image of any numeric dtype.
            size: ``(height, width)`` of the colour frame.

        Returns:
            The aligned image of shape ``size`` (plus the channel axis if the input had one),
            with the input dtype. Pixels a homography maps from outside the thermal image are 0.
        """
        thermal = np.asarray(thermal)
        if thermal.ndim not in (2, 3):
            raise ValueError(f"thermal must be HxW or HxWxC, got shape {thermal.shape}")
        height, width = (int(v) for v in size)
        if height <= 0 or width <= 0:
            raise ValueError(f"size must be a positive (height, width), got {tuple(size)}")
        if thermal.shape[0] == 0 or thermal.shape[1] == 0:
            raise ValueError(f"thermal image is empty, shape {thermal.shape}")

        dtype = thermal.dtype
        src = thermal
        if dtype not in _CV2_DTYPES:
            # bool, int32, float16, ...: interpolate in float32 and convert back at the end.
            src = thermal.astype(np.float32)
        src = np.ascontiguousarray(src)

        if self._homography is None:
            out = self._resize(src, height, width)
        else:
            out = cv2.warpPerspective(
                src,
                self._homography,
                (width, height),
                flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=0,
            )
        if out.ndim == 2 and thermal.ndim == 3:
            out = out[:, :, None]  # cv2 drops a trailing channel axis of length 1

        if out.dtype != dtype:
            if dtype.kind in "biu":
                info = np.iinfo(dtype) if dtype.kind != "b" else None
                out = np.rint(out)
                if info is not None:
                    out = np.clip(out, info.min, info.max)
                else:
                    out = out >= 0.5
            out = out.astype(dtype)
        return out

    @staticmethod
    def _resize(src: np.ndarray, height: int, width: int) -> np.ndarray:
        src_h, src_w = src.shape[:2]
        if (src_h, src_w) == (height, width):
            return src.copy()
        # INTER_AREA averages all source pixels under a destination pixel, so shrinking does not
        # alias fine thermal noise into the result; bilinear is the better choice for enlarging.
        shrinking = height <= src_h and width <= src_w
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        return cv2.resize(src, (width, height), interpolation=interpolation)
