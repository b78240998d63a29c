"""``cldyn``: the command-line tools (fuse, info, train, demo, ...).

Every subcommand lives in its own module with a ``register(subparsers)`` function; errors
that are the user's (bad paths, bad models, bad arguments) print one clear line and exit
with code 2 instead of a traceback; a device failure (out of memory, CUDA error) that
stops a command prints one line and exits with code 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__
from . import bag, bench, demo, evaluate, export, fuse, info, replay, train
from .common import CLIError

__all__ = ["CLIError", "build_parser", "main"]

SUBCOMMANDS = (fuse, info, train, evaluate, bag, replay, bench, export, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cldyn",
        description="CLDyN infrared-visible image fusion: fuse files, inspect models, train.",
    )
    parser.add_argument("--version", action="version", version=f"cldyn_ros {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in SUBCOMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cldyn`` console script; returns the exit code."""
    from ..imaging.io import ImageReadError
    from ..inference.checkpoint import CheckpointError
    from ..inference.engine import DeviceError, InputError, TaskError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CLIError as e:
        print(f"cldyn {args.command}: error: {e}", file=sys.stderr)
        return e.code
    except (CheckpointError, InputError, TaskError, ImageReadError, FileNotFoundError,
            ValueError) as e:
        print(f"cldyn {args.command}: error: {e}", file=sys.stderr)
        return 2
    except DeviceError as e:
        print(f"cldyn {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"cldyn {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
