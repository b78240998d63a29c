"""The trainers' per-evaluation log: one CSV row per history entry."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any


def write_history_csv(path: Path, history: list[dict[str, Any]]) -> None:
    """Write ``history`` to ``path`` as CSV (rewritten whole on each call). The columns are
    every key of every row, in first-seen order; a row without a key leaves its cell empty
    (later rows may add keys, such as per-task losses)."""
    keys: list[str] = []
    for row in history:
        keys.extend(k for k in row if k not in keys)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
