"""The settings schema: defaults, validation, command-line options and the README table."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cldyn_ros.cli import build_parser
from cldyn_ros.streams.settings import (
    PARAMETERS,
    PER_IMAGE,
    FusionSettings,
    check_value,
    markdown_table,
)

REPO = Path(__file__).resolve().parents[2]
TASKS = ["none", "detection", "segmentation"]


def values(**changes: object) -> dict:
    return dict(FusionSettings().values(), **changes)


def test_field_names_are_the_parameters_and_defaults_are_valid() -> None:
    assert [p.name for p in PARAMETERS] == [f.name for f in dataclasses.fields(FusionSettings)]
    for spec in PARAMETERS:
        assert check_value(spec, spec.default_value) is None, spec.name
        assert spec.description
    assert FusionSettings.from_values(values(), ["none"]) == FusionSettings()


@pytest.mark.parametrize(("changes", "reason"), [
    ({"task": "bogus"}, "unknown task 'bogus'"),
    ({"tasks": ["detection", "detection"]}, "tasks lists a task twice"),
    ({"task_weights": ["detection:-1"]}, "finite and >= 0"),
    ({"task_weights": ["none:1"]}, "blendable tasks"),
    ({"adaptive_min_strength": 0.8, "adaptive_max_strength": 0.2}, "must not exceed"),
    ({"thermal_low_percentile": 50.0, "thermal_high_percentile": 40.0}, "must be below"),
    ({"homography": [1.0, 2.0]}, "needs 9 numbers"),
    ({"warmup_width": 64}, "warmup_width and warmup_height"),
    ({"compensation_strength": 1}, "must be of type double"),
    ({"slop": 20.0}, "must be in [0.0, 10.0]"),
    ({"output_encoding": "mono8"}, "must be one of"),
])
def test_invalid_values_are_rejected_with_the_reason(changes: dict, reason: str) -> None:
    with pytest.raises(ValueError, match=reason.replace("[", r"\[").replace("(", r"\(")):
        FusionSettings.from_values(values(**changes), TASKS)


def test_derived_views() -> None:
    s = FusionSettings.from_values(values(task_weights=["detection:0.7", "segmentation:0"]),
                                   TASKS)
    assert s.weights == (("detection", 0.7),) and s.active_label == "detection:0.7"
    assert s.output_tasks == ()
    s = FusionSettings.from_values(values(tasks=["none", "segmentation"]), TASKS)
    assert s.output_tasks == ("segmentation",) and s.active_label == "none,segmentation"


def test_readme_parameter_table_is_the_schema() -> None:
    readme = (REPO / "README.md").read_text()
    assert markdown_table() in readme, "regenerate: python -m cldyn_ros.streams.settings"


def test_command_line_defaults_come_from_the_schema() -> None:
    parser = build_parser()
    live = FusionSettings()
    bag = parser.parse_args(["eval", "bag", "some_bag"])
    assert (bag.slop, bag.queue_size, bag.max_delay) == (live.slop, live.queue_size,
                                                         live.max_delay)
    assert bag.thermal_smoothing == live.thermal_smoothing  # a recorded stream
    fuse = parser.parse_args(["fuse", "--ir", "a", "--vi", "b", "--out", "c"])
    images = parser.parse_args(["eval", "images", "--ir", "a", "--vi", "b"])
    for args in (fuse, images):  # independent images: the one stated departure
        assert args.thermal_smoothing == PER_IMAGE["thermal_smoothing"]
        assert (args.device, args.precision, args.thermal_mode) == (
            live.device, live.precision, live.thermal_mode)
        assert (args.thermal_low_percentile, args.thermal_high_percentile) == (
            live.thermal_low_percentile, live.thermal_high_percentile)
    node = parser.parse_args(["bench", "node"])
    assert (node.device, node.precision, node.qos_reliability) == (
        live.device, live.precision, "best_effort")  # the node's input default
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", "bag", "b", "--precision", "fp8"])
