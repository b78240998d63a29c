"""The trainers' CSV log."""

from __future__ import annotations

import csv
from pathlib import Path

from cldyn_ros.training.history import write_history_csv


def test_history_csv_has_every_key_of_every_row(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    history = [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.4, "task/val": 0.3}]
    write_history_csv(path, history)
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["step", "loss", "task/val"]
    assert rows == [{"step": "1", "loss": "0.5", "task/val": ""},
                    {"step": "2", "loss": "0.4", "task/val": "0.3"}]
    write_history_csv(path, history[:1])  # rewritten whole, not appended
    assert path.read_text().splitlines() == ["step,loss", "1,0.5"]
