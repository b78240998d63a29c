"""Where the package's data files (models, config, launch files) are found.

Data files are installed beside the code by every installer this project supports:

1. a ROS 2 workspace (``colcon build``): ``<install>/cldyn_ros/share/cldyn_ros``, found
   through the ament index (``AMENT_PREFIX_PATH``, set by sourcing ``setup.bash``);
2. ``pip install .`` into a virtual environment (``make venv``):
   ``<sys.prefix>/share/cldyn_ros``; nothing sets ``AMENT_PREFIX_PATH`` there;
3. a source checkout (tests, ``python -m cldyn_ros...`` from the repository root):
   the repository root, where ``models/``, ``config/`` and ``launch/`` sit.

They are searched in that order. Nothing here imports ROS: ``ament_index_python`` is
used only when it is importable.
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

PACKAGE_NAME = "cldyn_ros"
DEFAULT_MODEL = "models/cldyn_default.pt"

# The repository root when this module runs from a source checkout.
_SOURCE_ROOT = Path(__file__).resolve().parent.parent


def _ament_share_directory() -> Path | None:
    """The share directory registered in the ament index, or None."""
    try:
        from ament_index_python.packages import get_package_share_directory
    except ImportError:
        return None
    try:
        return Path(get_package_share_directory(PACKAGE_NAME))
    except (LookupError, OSError, ValueError):
        # PackageNotFoundError is a KeyError; an unset AMENT_PREFIX_PATH raises OSError.
        return None


def _prefix_share_directories() -> list[Path]:
    """``<prefix>/share/cldyn_ros`` for the interpreter's install prefixes."""
    prefixes = [Path(sys.prefix)]
    data = sysconfig.get_path("data")  # e.g. /usr/local for Debian's system python
    if data and Path(data) not in prefixes:
        prefixes.append(Path(data))
    return [prefix / "share" / PACKAGE_NAME for prefix in prefixes]


def _source_root() -> Path | None:
    """The repository root if this module runs from a source checkout, else None."""
    if (_SOURCE_ROOT / "package.xml").is_file() and (_SOURCE_ROOT / PACKAGE_NAME).is_dir():
        return _SOURCE_ROOT
    return None


def _candidates() -> list[tuple[str, Path | None]]:
    """(where, directory) in search order; directory is None where it does not apply."""
    return [
        ("ament index", _ament_share_directory()),
        *(("install prefix", share) for share in _prefix_share_directories()),
        ("source checkout", _source_root()),
    ]


def search_directories() -> list[Path]:
    """The existing directories searched for data files, in order, without duplicates."""
    found: list[Path] = []
    for _, directory in _candidates():
        if directory is not None and directory.is_dir() and directory not in found:
            found.append(directory)
    return found


def share_directory() -> Path | None:
    """The installed share directory of cldyn_ros (ament index, then sys.prefix), or None.

    A source checkout is not an installed share directory: use :func:`find_share_file`,
    which falls back to it.
    """
    for where, directory in _candidates():
        if where != "source checkout" and directory is not None:
            if (directory / "package.xml").is_file():
                return directory
    return None


def find_share_file(relative: str | Path) -> Path:
    """The first existing ``<directory>/relative`` over :func:`search_directories`.

    Raises FileNotFoundError naming every place searched.
    """
    relative = Path(relative)
    if relative.is_absolute():
        raise ValueError(f"expected a path relative to the share directory, got {relative}")
    for directory in search_directories():
        if (directory / relative).exists():
            return directory / relative
    searched = []
    for where, candidate in _candidates():
        if candidate is None:
            reason = {
                "ament index": f"{PACKAGE_NAME} not registered (ament_index_python missing, "
                "AMENT_PREFIX_PATH unset, or package not in it)",
                "source checkout": "not running from a source checkout",
            }[where]
            searched.append(f"{where}: {reason}")
        else:
            searched.append(f"{where}: {candidate / relative}")
    places = "\n  ".join(searched)
    raise FileNotFoundError(
        f"{relative} not found for package {PACKAGE_NAME}; searched:\n  {places}\n"
        "Install the package (make venv, or colcon build and source install/setup.bash) "
        "or run from the source checkout."
    )


def default_model_path() -> Path:
    """The bundled default model weights, ``models/cldyn_default.pt``."""
    return find_share_file(DEFAULT_MODEL)
