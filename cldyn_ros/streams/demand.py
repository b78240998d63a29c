"""Fusion on demand: pairs are skipped while nobody subscribes to any output.

The node asks, for each pair, whether any of its outputs (fused images, their camera_info,
``~/metrics``) has a subscriber; :class:`OutputDemand` decides and counts, so the health
report can say that and how long the node idled. The first pair after a subscriber appears
is fused again.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["OutputDemand"]


class OutputDemand:
    """Pause / resume bookkeeping (thread-safe): ``pauses`` counts the times fusion paused,
    ``skipped`` the pairs not fused for want of a subscriber."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.paused = False
        self.pauses = 0
        self.skipped = 0

    def admit(self, subscribed: bool) -> tuple[bool, bool]:
        """``(fuse this pair, the paused state changed now)`` for a pair when ``subscribed``
        says whether any output has a subscriber."""
        with self._lock:
            changed = self.paused == subscribed
            if subscribed:
                self.paused = False
                return True, changed
            if not self.paused:
                self.paused = True
                self.pauses += 1
            self.skipped += 1
            return False, changed

    def values(self) -> list[tuple[str, Any]]:
        """The diagnostics values."""
        with self._lock:
            return [("paused_no_subscriber", self.paused), ("pauses", self.pauses),
                    ("skipped_pairs_no_subscriber", self.skipped)]
