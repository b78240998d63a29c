"""Counts of rejected inputs by reason, for health reports (no ROS import)."""

from __future__ import annotations

import threading

__all__ = ["RejectionCounter"]


class RejectionCounter:
    """Thread-safe running counts of rejected inputs, one per reason key.

    Keys are short snake_case names of a cause (``thermal_encoding``,
    ``colour_short_data``, ``feedback_invalid``, ``parameters``...); the set of keys grows
    as causes appear, so a report lists exactly the causes seen.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def add(self, reason: str, count: int = 1) -> None:
        if count < 0:
            raise ValueError(f"a rejection count cannot be negative, got {count}")
        with self._lock:
            self._counts[reason] = self._counts.get(reason, 0) + count

    def counts(self) -> dict[str, int]:
        """A copy of the counts, sorted by key."""
        with self._lock:
            return dict(sorted(self._counts.items()))

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())
