"""Argument groups and helpers shared by several subcommands."""

from __future__ import annotations

import argparse

from ..imaging.registration import Registration
from ..imaging.thermal import ThermalNormalizer
from ..inference.engine import FusionEngine, TaskRequest
from ..streams.settings import PER_IMAGE, add_option


class CLIError(Exception):
    """A user-facing error; ``main`` prints it and exits with ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def add_engine_args(parser: argparse.ArgumentParser, per_image: bool = True) -> None:
    """Model, device, precision and thermal-handling options, from the settings schema.

    ``per_image``: the inputs are independent images, so the thermal stretch is not smoothed
    across them (:data:`~cldyn_ros.streams.settings.PER_IMAGE`); otherwise (a recorded
    stream) the node's default smoothing applies.
    """
    overrides = PER_IMAGE if per_image else {}
    g = parser.add_argument_group("model and device")
    g.add_argument("--model", help="checkpoint file (default: the model shipped in models/)")
    add_option(g, "device")
    add_option(g, "precision")
    add_option(g, "threads")
    add_option(g, "internal_scale")
    t = parser.add_argument_group("thermal input")
    add_option(t, "thermal_mode")
    add_option(t, "thermal_low_percentile", "--thermal-low")
    add_option(t, "thermal_high_percentile", "--thermal-high")
    add_option(t, "thermal_smoothing", default=overrides.get("thermal_smoothing"),
               help_note="independent images: none" if per_image else "")
    add_option(t, "homography", nargs=9, metavar="H")


def add_task_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("task")
    g.add_argument("--task", default="none",
                   help="task name, 'none' for plain fusion, or a blend like 'a:0.7,b:0.3'")
    g.add_argument("--strength", type=float, default=1.0, help="compensation strength in [0, 1]")


def engine_from_args(args: argparse.Namespace) -> FusionEngine:
    return FusionEngine(
        model=args.model,
        device=args.device,
        precision=args.precision,
        normalizer=ThermalNormalizer(args.thermal_low_percentile, args.thermal_high_percentile,
                                     args.thermal_smoothing),
        thermal_mode=args.thermal_mode,
        registration=Registration(args.homography or None),
        threads=args.threads or None,
        internal_scale=args.internal_scale or None,
    )


def parse_task(spec: str) -> str | dict[str, float]:
    """``'name'`` stays a name; ``'a:0.7,b:0.3'`` becomes a blend dict."""
    if ":" not in spec:
        return spec.strip()
    blend: dict[str, float] = {}
    for part in spec.split(","):
        name, _, weight = part.partition(":")
        try:
            blend[name.strip()] = float(weight)
        except ValueError as e:
            raise ValueError(f"bad blend weight in '{part}' (want name:weight)") from e
    return blend


def request_from_args(engine: FusionEngine, args: argparse.Namespace) -> TaskRequest:
    return engine.request(parse_task(args.task), args.strength, label="fused")
