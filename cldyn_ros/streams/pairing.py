"""Approximate-time pairing of a colour and a thermal image stream.

Shared by the live ROS node (two subscription callbacks) and offline bag replay, so it has
no ROS import: frames carry their header stamp in nanoseconds and an opaque payload.

The colour stream is the reference: every colour frame is paired with the unused thermal
frame nearest to it in stamp, if that one lies within ``slop``; otherwise it is reported as
unmatched. A thermal camera typically runs faster (60 Hz against 30 Hz), so thermal frames
that no colour frame wants are normal and are only counted. A slower thermal stream works
too: then colour frames go unmatched instead.

A colour frame is decided as soon as no thermal frame still to come can be nearer to it than
the best one already received. Thermal stamps only grow (out-of-order frames are dropped),
and frames older than ``newest stamp seen - max_delay`` are dropped as stale, so a future
thermal frame is at least ``max(last thermal stamp + 1, newest - max_delay)``: once a thermal
frame with a stamp at or after the colour stamp has arrived the nearest one is known, and once
the stream (or the staleness horizon) has moved past ``colour + slop`` no match can come any
more. Until then the colour frame waits in a bounded queue.

Matching is greedy in colour-stamp order, like the decision rule above: a colour frame takes
its nearest thermal frame even if the next colour frame would have been nearer to it. With
the thermal stream at least as fast as the colour stream and a slop under half the colour
period, the greedy choice is the optimal one anyway.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

from .settings import FusionSettings

__all__ = ["ApproximateTimePairer", "Frame", "Pair", "PairingStats"]

_NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class Frame:
    """One image of either stream.

    Attributes:
        stamp_ns: header stamp (sensor time) in nanoseconds; what pairing compares.
        data: the payload (numpy array, ROS message, ...); the pairer never looks at it.
        frame_id: the header's frame id, carried along for the fused output.
        arrival_ns: when the frame arrived (``time.monotonic_ns()`` or wall time), carried
            along for latency accounting; the pairer never looks at it.
    """

    stamp_ns: int
    data: Any
    frame_id: str = ""
    arrival_ns: int = 0


@dataclass(frozen=True)
class Pair:
    """A colour frame and the thermal frame chosen for it.

    Attributes:
        color: the colour (reference) frame.
        thermal: the thermal frame nearest to it in stamp.
        gap_ns: ``color.stamp_ns - thermal.stamp_ns`` (signed; positive when the thermal
            frame is older).
    """

    color: Frame
    thermal: Frame
    gap_ns: int


@dataclass
class PairingStats:
    """Counters of an :class:`ApproximateTimePairer`; all are cumulative (``reset`` keeps them).

    Every received frame ends up in exactly one outcome, so once nothing is pending
    (after :meth:`ApproximateTimePairer.flush`)::

        color_received + thermal_received
            == 2 * pairs + color_unmatched + thermal_unused
               + out_of_order + stale + overflow + discarded

    Attributes:
        color_received: colour frames passed to ``add_color``.
        thermal_received: thermal frames passed to ``add_thermal``.
        pairs: pairs returned.
        color_unmatched: colour frames decided without a thermal frame within slop.
        thermal_unused: thermal frames that were never paired (normal when thermal is faster).
        out_of_order: frames (either stream) whose stamp was not newer than the previous frame
            of the same stream.
        stale: frames (either stream) older than the newest stamp seen on either stream minus
            ``max_delay``.
        overflow: frames (either stream) evicted because their bounded queue was full.
        discarded: frames (either stream) still pending when ``reset`` was called.
    """

    color_received: int = 0
    thermal_received: int = 0
    pairs: int = 0
    color_unmatched: int = 0
    thermal_unused: int = 0
    out_of_order: int = 0
    stale: int = 0
    overflow: int = 0
    discarded: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict (for logging or a diagnostics message)."""
        return dataclasses.asdict(self)


def _seconds_to_ns(value: float, name: str) -> int:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number of seconds, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value!r}")
    return round(value * _NS_PER_S)


class ApproximateTimePairer:
    """Pair each colour frame with the nearest thermal frame in stamp (see the module doc).

    Args:
        slop_s: largest allowed ``|colour stamp - thermal stamp|`` of a pair, in seconds
            (inclusive; 0 pairs only identical stamps).
        queue_size: most frames kept waiting per stream; when a queue is full its oldest frame
            is evicted and counted as ``overflow``.
        max_delay_s: frames older than the newest stamp seen on either stream minus this are
            stale and dropped; also bounds how long a colour frame waits for a thermal one.

    Raises:
        ValueError: on a negative or non-finite duration, a ``max_delay_s`` of 0 or a
            ``queue_size`` below 1.

    All methods are thread-safe (one lock): the ROS node calls :meth:`add_color` and
    :meth:`add_thermal` from two subscription callbacks. Pairs come back from the call that
    made them decidable, in colour-stamp order across all calls.

    After a jump of the clock backwards (bag loop, simulation restart) every new frame would
    be out of order: call :meth:`reset`.

    Example:
        >>> pairer = ApproximateTimePairer(slop_s=0.01)
        >>> pairer.add_color(Frame(1_000_000_000, "c0"))
        []
        >>> [p.thermal.data for p in pairer.add_thermal(Frame(1_004_000_000, "t0"))]
        ['t0']
    """

    def __init__(self, slop_s: float = FusionSettings.slop,
                 queue_size: int = FusionSettings.queue_size,
                 max_delay_s: float = FusionSettings.max_delay) -> None:
        self._slop_ns = _seconds_to_ns(slop_s, "slop_s")
        self._max_delay_ns = _seconds_to_ns(max_delay_s, "max_delay_s")
        if self._max_delay_ns == 0:
            raise ValueError("max_delay_s must be positive")
        if not isinstance(queue_size, int) or isinstance(queue_size, bool) or queue_size < 1:
            raise ValueError(f"queue_size must be an integer >= 1, got {queue_size!r}")
        self._queue_size = queue_size
        self._lock = threading.Lock()
        self._stats = PairingStats()
        # Both queues hold frames in stamp order (guaranteed by the out-of-order check).
        self._colors: deque[Frame] = deque()
        self._thermals: deque[Frame] = deque()
        self._last_color_ns: int | None = None
        self._last_thermal_ns: int | None = None
        self._newest_ns: int | None = None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(slop_s={self._slop_ns / _NS_PER_S}, "
            f"queue_size={self._queue_size}, max_delay_s={self._max_delay_ns / _NS_PER_S})"
        )

    @property
    def slop_s(self) -> float:
        """The pairing tolerance in seconds."""
        return self._slop_ns / _NS_PER_S

    @property
    def queue_size(self) -> int:
        """The bound of each waiting queue."""
        return self._queue_size

    @property
    def max_delay_s(self) -> float:
        """The staleness horizon in seconds."""
        return self._max_delay_ns / _NS_PER_S

    @property
    def stats(self) -> PairingStats:
        """A consistent snapshot of the counters (a copy: later frames do not change it)."""
        with self._lock:
            return dataclasses.replace(self._stats)

    @property
    def pending_color(self) -> int:
        """Colour frames waiting for a decision."""
        with self._lock:
            return len(self._colors)

    @property
    def pending_thermal(self) -> int:
        """Thermal frames kept because a colour frame may still want them."""
        with self._lock:
            return len(self._thermals)

    def add_color(self, frame: Frame) -> list[Pair]:
        """Add a colour frame; return the pairs this made decidable (possibly none)."""
        with self._lock:
            self._stats.color_received += 1
            if not self._accept(frame, self._last_color_ns):
                return []
            self._last_color_ns = frame.stamp_ns
            self._colors.append(frame)
            pairs = self._decide()
            self._prune_thermals()
            # Evict only after deciding, so a frame that just became decidable is not lost.
            while len(self._colors) > self._queue_size:
                self._colors.popleft()
                self._stats.overflow += 1
            return pairs

    def add_thermal(self, frame: Frame) -> list[Pair]:
        """Add a thermal frame; return the pairs this made decidable (possibly none)."""
        with self._lock:
            self._stats.thermal_received += 1
            if not self._accept(frame, self._last_thermal_ns):
                return []
            self._last_thermal_ns = frame.stamp_ns
            self._thermals.append(frame)
            pairs = self._decide()
            self._prune_thermals()
            while len(self._thermals) > self._queue_size:
                self._thermals.popleft()
                self._stats.overflow += 1
            return pairs

    def flush(self) -> list[Pair]:
        """Decide every waiting colour frame with the thermal frames already received.

        For the end of a bag: no more frames will come, so each waiting colour frame takes
        the nearest remaining thermal frame within slop or is unmatched; the remaining thermal
        frames count as unused. The last stamps are kept, so later frames must still be newer
        (call :meth:`reset` to start over).
        """
        with self._lock:
            pairs = []
            while self._colors:
                color = self._colors.popleft()
                best = self._nearest(color.stamp_ns)
                if best is not None and abs(color.stamp_ns - best.stamp_ns) <= self._slop_ns:
                    pairs.append(self._make_pair(color, best))
                else:
                    self._stats.color_unmatched += 1
            self._stats.thermal_unused += len(self._thermals)
            self._thermals.clear()
            return pairs

    def reset(self) -> None:
        """Forget all waiting frames and stamps (after a time jump backwards).

        Waiting frames are counted as ``discarded``; the other counters are kept.
        """
        with self._lock:
            self._stats.discarded += len(self._colors) + len(self._thermals)
            self._colors.clear()
            self._thermals.clear()
            self._last_color_ns = None
            self._last_thermal_ns = None
            self._newest_ns = None

    # Internals; all called with the lock held.

    def _accept(self, frame: Frame, last_ns: int | None) -> bool:
        """Check order and staleness of an arriving frame; count and reject bad ones."""
        stamp = frame.stamp_ns
        if last_ns is not None and stamp <= last_ns:
            self._stats.out_of_order += 1
            return False
        if self._newest_ns is not None and stamp < self._newest_ns - self._max_delay_ns:
            self._stats.stale += 1
            return False
        if self._newest_ns is None or stamp > self._newest_ns:
            self._newest_ns = stamp
        return True

    def _horizon_ns(self) -> int:
        """Oldest stamp a frame still to come may have without being stale."""
        assert self._newest_ns is not None  # only called after a frame was accepted
        return self._newest_ns - self._max_delay_ns

    def _nearest(self, stamp_ns: int) -> Frame | None:
        """The waiting thermal frame nearest to ``stamp_ns`` (the older one on a tie)."""
        best: Frame | None = None
        best_gap = 0
        for thermal in self._thermals:  # at most queue_size frames
            gap = abs(stamp_ns - thermal.stamp_ns)
            if best is None or gap < best_gap:
                best, best_gap = thermal, gap
            elif thermal.stamp_ns > stamp_ns:
                break  # stamps only grow from here, and so do the gaps
        return best

    def _decide(self) -> list[Pair]:
        """Decide waiting colour frames, oldest first, until one is undecidable."""
        pairs = []
        while self._colors:
            color = self._colors[0]
            # The nearest a thermal frame still to come can be to this colour frame.
            future_min = self._horizon_ns()
            if self._last_thermal_ns is not None:
                future_min = max(future_min, self._last_thermal_ns + 1)
            future_gap = max(0, future_min - color.stamp_ns)
            best = self._nearest(color.stamp_ns)
            gap = None if best is None else abs(color.stamp_ns - best.stamp_ns)
            if best is not None and gap is not None and gap <= self._slop_ns \
                    and gap <= future_gap:
                self._colors.popleft()
                pairs.append(self._make_pair(color, best))
            elif (gap is None or gap > self._slop_ns) and future_gap > self._slop_ns:
                self._colors.popleft()
                self._stats.color_unmatched += 1
            else:
                break  # a nearer thermal frame may still come; later colour frames wait too
        return pairs

    def _make_pair(self, color: Frame, thermal: Frame) -> Pair:
        """Pair and consume ``thermal`` and the older thermal frames, which can never pair."""
        while True:
            oldest = self._thermals.popleft()
            if oldest is thermal:
                break
            self._stats.thermal_unused += 1
        self._stats.pairs += 1
        return Pair(color=color, thermal=thermal, gap_ns=color.stamp_ns - thermal.stamp_ns)

    def _prune_thermals(self) -> None:
        """Drop thermal frames too old for every waiting and every future colour frame."""
        if self._colors:
            oldest_color = self._colors[0].stamp_ns
        else:
            oldest_color = self._horizon_ns()
            if self._last_color_ns is not None:
                oldest_color = max(oldest_color, self._last_color_ns + 1)
        limit = oldest_color - self._slop_ns
        while self._thermals and self._thermals[0].stamp_ns < limit:
            self._thermals.popleft()
            self._stats.thermal_unused += 1
