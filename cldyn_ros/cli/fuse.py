"""``cldyn fuse``: fuse image files or folders of pairs matched by name."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from ..imaging.io import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    find_pairs,
    read_color,
    read_thermal,
    write_image,
)
from ..inference.engine import DeviceError, InputError
from .common import add_engine_args, add_task_args, engine_from_args, request_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fuse",
        help="fuse thermal + visible image files or folders",
        description="Fuse an infrared and a visible image, or two folders of images paired "
        "by file name (extension ignored). Pairs that cannot be matched or read are reported "
        "and skipped; the exit code is 1 if any were.",
    )
    p.add_argument("--ir", type=Path, required=True, help="infrared image or folder")
    p.add_argument("--vi", type=Path, required=True, help="visible image or folder")
    p.add_argument("--out", type=Path, required=True,
                   help="output image (for one pair) or folder (fused <name>.png files)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_task_args(p)
    add_engine_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    listing = find_pairs(args.ir, args.vi)
    if not listing.pairs:
        print(f"cldyn fuse: error: no image pairs with matching names in '{args.ir}' and "
              f"'{args.vi}'", file=sys.stderr)
        _report_unmatched(listing.ir_only, listing.vi_only)
        return 2
    engine = engine_from_args(args)
    request = request_from_args(engine, args)
    single_file = args.ir.is_file() and args.out.suffix.lower() in IMAGE_EXTENSIONS
    failures: list[tuple[str, str]] = []
    written = 0
    for name, ir_file, vi_file in tqdm(listing.pairs, desc="fuse", unit="pair",
                                       disable=args.no_progress or len(listing.pairs) < 2):
        try:
            result = engine.fuse(read_thermal(ir_file), read_color(vi_file), [request])
        except (ImageReadError, InputError, DeviceError) as e:  # the next pair may work
            failures.append((name, str(e)))
            continue
        target = args.out if single_file else args.out / f"{name}.png"
        write_image(target, result.images[request.label])
        written += 1
    where = args.out if single_file else f"{args.out}/"
    print(f"fused {written} of {len(listing.pairs)} pair(s) with task '{args.task}' "
          f"(strength {args.strength:g}) on {engine.device} -> {where}")
    for name, reason in failures:
        print(f"  skipped '{name}': {reason}", file=sys.stderr)
    _report_unmatched(listing.ir_only, listing.vi_only)
    return 1 if failures or listing.ir_only or listing.vi_only else 0


def _report_unmatched(ir_only: list[Path], vi_only: list[Path]) -> None:
    for path in ir_only:
        print(f"  no visible image for '{path}'", file=sys.stderr)
    for path in vi_only:
        print(f"  no infrared image for '{path}'", file=sys.stderr)
