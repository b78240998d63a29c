"""Argument groups and helpers shared by several subcommands."""

from __future__ import annotations

import argparse

from ..imaging.registration import Registration
from ..imaging.thermal import ThermalNormalizer
from ..inference.engine import PRECISIONS, THERMAL_MODES, FusionEngine, TaskRequest


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    """Model, device, precision and thermal-handling options."""
    g = parser.add_argument_group("model and device")
    g.add_argument("--model", help="checkpoint file (default: the model shipped in models/)")
    g.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    g.add_argument("--precision", default="fp32", choices=list(PRECISIONS))
    g.add_argument("--threads", type=int, help="CPU threads for torch")
    g.add_argument("--internal-scale", type=float, default=None,
                   help="run the network at this fraction of the frame size, in (0, 1], the "
                   "prior and the composition at full size (CPU mode; default: the "
                   "checkpoint's setting, else 1)")
    t = parser.add_argument_group("thermal input")
    t.add_argument("--thermal-mode", default="auto", choices=THERMAL_MODES,
                   help="auto: 8-bit scaled by 1/255, 16-bit stretched between percentiles")
    t.add_argument("--thermal-low", type=float, default=1.0, help="low percentile (0-100)")
    t.add_argument("--thermal-high", type=float, default=99.0, help="high percentile (0-100)")
    t.add_argument("--homography", type=float, nargs=9, metavar="H",
                   help="3x3 thermal-to-colour homography, row-major")


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
        normalizer=ThermalNormalizer(args.thermal_low, args.thermal_high),
        thermal_mode=args.thermal_mode,
        registration=Registration(args.homography),
        threads=args.threads,
        internal_scale=args.internal_scale,
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
