"""Shared test set-up: ROS isolation and the locations tests read from.

The ROS variables are set at import time, before any test module imports rclpy, so every
node created in this run (and every child process it starts) talks only on loopback and
only within a domain of its own: concurrent runs (two developers, CI beside a session) do
not see each other's topics.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cldyn_ros.tv_compat import ensure_torchvision_ops

# Where the optional 'tasks' extra is installed, torchvision (imported by torchmetrics) needs
# its operators defined before any test module imports it.
ensure_torchvision_ops()

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def _test_domain_id() -> int:
    """A ROS_DOMAIN_ID for this run: CLDYN_TEST_ROS_DOMAIN_ID if set, else from the pid.

    1..101 are valid with the default port mapping on Linux (0 is left to real robots).
    """
    forced = os.environ.get("CLDYN_TEST_ROS_DOMAIN_ID")
    if forced:
        return int(forced)
    return 1 + os.getpid() % 101


os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_DOMAIN_ID"] = str(_test_domain_id())


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (where package.xml, models/, config/ and launch/ sit)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repository (real image sets); skips when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real image data not available: {SHARED_DATA} does not exist")
    return SHARED_DATA
