"""Robust normalisation of thermal (infrared) frames to ``[0, 1]``.

Raw thermal cameras deliver 14/16-bit radiometric counts that occupy only a small part of the
numeric range (for example 7000-9000 counts), so a fixed ``/ 65535`` scaling would produce an
almost uniform grey image. :class:`ThermalNormalizer` stretches the frame between robust
percentiles instead, and can smooth those limits over time so that a single hot object flashing
through a video does not make the whole stream flicker.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "THERMAL_MODES", "ThermalNormalizer", "thermal_limits_torch", "thermal_to_unit",
    "thermal_to_unit_torch",
]

#: How a thermal frame maps to [0, 1] (see :func:`thermal_to_unit`).
THERMAL_MODES = ("auto", "percentile", "fixed")

# Percentiles are computed on at most about this many pixels. A strided subsample of a
# 1280x1024 frame gives limits within a count or two of the full-frame percentiles while
# costing ~1 ms instead of ~20 ms.
_MAX_SAMPLES = 1 << 17


@dataclass
class ThermalNormalizer:
    """Map a thermal image to ``float32`` values in ``[0, 1]`` between robust percentile limits.

    Args:
        low_percentile: percentile (0-100) of the frame mapped to 0.
        high_percentile: percentile (0-100) of the frame mapped to 1; must exceed
            ``low_percentile``.
        smoothing: weight in ``[0, 1)`` of the previous limits in an exponential moving
            average over frames; ``0`` disables temporal smoothing (every frame is stretched on
            its own).

    Example:
        >>> norm = ThermalNormalizer(1.0, 99.0, smoothing=0.9)
        >>> for frame in stream:  # doctest: +SKIP
        ...     x = norm(frame)  # HxW float32 in [0, 1]
    """

    low_percentile: float = 1.0
    high_percentile: float = 99.0
    smoothing: float = 0.0
    # Smoothed limits of the previous frame, None before the first frame (or after reset()).
    _state: tuple[float, float] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        for name in ("low_percentile", "high_percentile", "smoothing"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(float(value)):
                raise ValueError(f"{name} must be finite, got {value!r}")
        if not 0.0 <= self.low_percentile <= 100.0:
            raise ValueError(f"low_percentile must be in [0, 100], got {self.low_percentile}")
        if not 0.0 <= self.high_percentile <= 100.0:
            raise ValueError(f"high_percentile must be in [0, 100], got {self.high_percentile}")
        if self.low_percentile >= self.high_percentile:
            raise ValueError(
                "low_percentile must be smaller than high_percentile, got "
                f"{self.low_percentile} >= {self.high_percentile}"
            )
        if not 0.0 <= self.smoothing < 1.0:
            # smoothing == 1 would freeze the limits of the first frame forever.
            raise ValueError(f"smoothing must be in [0, 1), got {self.smoothing}")

    def reset(self) -> None:
        """Forget the smoothed limits, e.g. when the stream or the camera changes."""
        self._state = None

    def limits(self, img: np.ndarray) -> tuple[float, float]:
        """Compute the limits for ``img`` and advance the temporal smoothing state.

        Args:
            img: thermal frame, HxW ``uint8``/``uint16`` counts or float (NaN and inf pixels are
                ignored).

        Returns:
            ``(low, high)`` limits to pass to :meth:`apply`. ``high <= low`` means the frame is
            constant (or has no finite pixel), which :meth:`apply` maps to zeros.
        """
        img = np.asarray(img)
        return self.smooth(*self._frame_limits(img))

    def smooth(self, lo: float, hi: float) -> tuple[float, float]:
        """Advance the temporal smoothing with one frame's raw limits (NaN: no finite
        pixel); return the limits to use. Both the numpy and the torch path go through
        here, so a stream keeps one state whichever path fuses a frame."""
        if self._state is not None and self.smoothing > 0.0:
            a = float(self.smoothing)
            if math.isnan(lo):
                # No finite pixel in this frame: keep the previous limits rather than drift.
                lo, hi = self._state
            else:
                lo = a * self._state[0] + (1.0 - a) * lo
                hi = a * self._state[1] + (1.0 - a) * hi
        elif math.isnan(lo):
            lo, hi = (self._state if self._state is not None else (0.0, 0.0))
        self._state = (lo, hi)
        return lo, hi

    @staticmethod
    def apply(img: np.ndarray, lo: float, hi: float) -> np.ndarray:
        """Stretch ``img`` linearly so that ``lo`` maps to 0 and ``hi`` to 1, clipping outside.

        Args:
            img: thermal frame of any numeric dtype, usually HxW.
            lo: value mapped to 0.
            hi: value mapped to 1.

        Returns:
            ``float32`` array of the same shape with values in ``[0, 1]``. NaN pixels become 0,
            and if ``hi <= lo`` (a constant frame) the result is all zeros, never NaN.
        """
        img = np.asarray(img)
        if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
            return np.zeros(img.shape, dtype=np.float32)
        out = img.astype(np.float32)  # always a copy, so the in-place ops below are safe
        out -= np.float32(lo)
        out *= np.float32(1.0 / (hi - lo))
        np.clip(out, 0.0, 1.0, out=out)  # +inf -> 1, -inf -> 0
        if img.dtype.kind == "f":
            np.nan_to_num(out, copy=False, nan=0.0)
        return out

    def __call__(self, img: np.ndarray) -> np.ndarray:
        """Normalise one frame: :meth:`limits` followed by :meth:`apply`.

        Args:
            img: HxW thermal frame (``uint8``, ``uint16`` or float).

        Returns:
            HxW ``float32`` array in ``[0, 1]``.
        """
        lo, hi = self.limits(img)
        return self.apply(img, lo, hi)

    def _frame_limits(self, img: np.ndarray) -> tuple[float, float]:
        """Percentile limits of a single frame; ``(nan, nan)`` if it has no finite pixel."""
        if img.size == 0:
            return math.nan, math.nan
        is_float = img.dtype.kind in "fc"
        if img.ndim >= 2 and img.size > _MAX_SAMPLES:
            # Same stride in both directions keeps the sample spatially uniform.
            step = math.ceil(math.sqrt(img.size / _MAX_SAMPLES))
            sample = img[::step, ::step]
        else:
            sample = img
        sample = sample.reshape(-1)
        if is_float:
            sample = sample[np.isfinite(sample)]
            if sample.size == 0:
                return math.nan, math.nan
        lo, hi = np.percentile(sample.astype(np.float64), [self.low_percentile,
                                                           self.high_percentile])
        # The extreme percentiles are exact min/max on the full frame: the subsample could miss
        # the single hottest pixel, and users asking for (0, 100) expect a true min-max stretch.
        if self.low_percentile == 0.0 or self.high_percentile == 100.0:
            full = img[np.isfinite(img)] if is_float else img
            if self.low_percentile == 0.0:
                lo = full.min()
            if self.high_percentile == 100.0:
                hi = full.max()
        return float(lo), float(hi)


def thermal_to_unit(
    thermal: np.ndarray, normalizer: ThermalNormalizer, mode: str = "auto"
) -> np.ndarray:
    """Thermal frame -> float32 ``H x W`` in ``[0, 1]``.

    ``fixed`` divides by the full scale of the dtype (8-bit images as the network was
    trained); ``percentile`` stretches between robust limits (raw radiometric counts use a
    small part of the 16-bit range); ``auto`` uses ``fixed`` for 8-bit and ``percentile``
    otherwise.
    """
    if mode not in THERMAL_MODES:
        raise ValueError(f"thermal mode must be one of {THERMAL_MODES}, got '{mode}'")
    if mode == "fixed" or (mode == "auto" and thermal.dtype == np.uint8):
        if thermal.dtype == np.uint8:
            return thermal.astype(np.float32) * (1.0 / 255.0)
        if thermal.dtype == np.uint16:
            return thermal.astype(np.float32) * (1.0 / 65535.0)
        return np.clip(np.nan_to_num(thermal.astype(np.float32)), 0.0, 1.0)
    return normalizer(thermal)


def _sorted_quantiles(ordered: Tensor, q: Tensor) -> Tensor:
    """``torch.quantile(ordered, q)`` (linear interpolation) of an already sorted 1-d
    tensor, with the same arithmetic: sorting the integer pixels themselves is several
    times faster than the float64 sort inside ``torch.quantile``."""
    ranks = q * (ordered.numel() - 1)
    below = ranks.long()
    above = ranks.ceil().long()
    return ordered[below].lerp(ordered[above], ranks - below)


def thermal_limits_torch(
    x: Tensor, low_percentile: float, high_percentile: float
) -> tuple[Tensor, Tensor]:
    """Percentile limits of one thermal frame on its device, as
    :meth:`ThermalNormalizer.limits` computes them in numpy: the same strided
    subsample (at most ``2^17`` pixels), linear interpolation, non-finite pixels ignored,
    exact full-frame min/max for the 0 and 100 percentiles. ``x`` is ``H x W`` (any
    dtype). Returns two 0-d float64 tensors; NaN when no pixel is finite."""
    if x.numel() > _MAX_SAMPLES:
        step = math.ceil(math.sqrt(x.numel() / _MAX_SAMPLES))
        sample = x[::step, ::step]
    else:
        sample = x
    sample = sample.reshape(-1)
    q = torch.tensor([low_percentile / 100.0, high_percentile / 100.0],
                     dtype=torch.float64, device=x.device)
    if x.is_floating_point():
        sample = sample.double()
        sample = torch.where(torch.isfinite(sample), sample, sample.new_tensor(math.nan))
        lo, hi = torch.nanquantile(sample, q)
    else:
        if sample.dtype in (torch.uint16, torch.uint32):  # no parallel sort kernel for these
            sample = sample.to(torch.int64)
        lo, hi = _sorted_quantiles(torch.sort(sample).values.double(), q)
    if low_percentile == 0.0 or high_percentile == 100.0:
        full = x.double()
        if x.is_floating_point():
            finite = torch.isfinite(full)
            if low_percentile == 0.0:
                lo = torch.where(finite, full, full.new_tensor(math.inf)).amin()
            if high_percentile == 100.0:
                hi = torch.where(finite, full, full.new_tensor(-math.inf)).amax()
        else:
            lo = full.amin() if low_percentile == 0.0 else lo
            hi = full.amax() if high_percentile == 100.0 else hi
    return lo, hi


def thermal_to_unit_torch(x: Tensor, dtype: np.dtype, normalizer: ThermalNormalizer,
                          mode: str = "auto") -> Tensor:
    """:func:`thermal_to_unit` in torch, on the tensor's device; ``dtype`` is the
    frame's numpy dtype (``x`` may have been widened for the upload)."""
    if mode == "fixed" or (mode == "auto" and dtype == np.uint8):
        if x.dtype == torch.uint8:
            return x.float().mul_(1.0 / 255.0)
        if dtype == np.uint16:
            return x.float().mul_(1.0 / 65535.0)
        return torch.nan_to_num(x.float(), nan=0.0).clamp_(0.0, 1.0)
    if x.dtype == torch.uint16:  # few kernels support uint16: widen first
        try:
            x = x.to(torch.int32)
        except (RuntimeError, TypeError):  # no uint16 cast kernel on this device
            x = x.cpu().to(torch.int32).to(x.device)
    lo_t, hi_t = thermal_limits_torch(x, normalizer.low_percentile,
                                      normalizer.high_percentile)
    lo, hi = (float(v) for v in torch.stack([lo_t, hi_t]).cpu())  # one small sync
    lo, hi = normalizer.smooth(lo, hi)
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    # the same float32 arithmetic as ThermalNormalizer.apply
    # numpy float32 scalars (torch takes them; its stubs do not say so)
    out = x.float().sub_(np.float32(lo)).mul_(  # type: ignore[arg-type]
        np.float32(1.0 / (hi - lo))).clamp_(0.0, 1.0)  # type: ignore[arg-type]
    if x.is_floating_point():
        out = torch.nan_to_num(out, nan=0.0)
    return out
