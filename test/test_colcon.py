"""colcon builds this ament_python package the way a ROS 2 workspace would.

Only `colcon build` runs here, into a temporary folder: `colcon test` would run this very
test suite again (CI runs it in .github/workflows/ros-jazzy.yml instead).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _colcon() -> str | None:
    beside_python = Path(sys.executable).parent / "colcon"
    if beside_python.is_file():
        return str(beside_python)
    return shutil.which("colcon")


@pytest.fixture(scope="module")
def colcon_install(tmp_path_factory, repo_root) -> Path:
    colcon = _colcon()
    if colcon is None:
        pytest.skip("colcon is not installed (pip install colcon-common-extensions)")
    base = tmp_path_factory.mktemp("colcon")
    command = [
        colcon, "--log-base", str(base / "log"),
        "build", "--paths", str(repo_root), "--merge-install",
        "--build-base", str(base / "build"), "--install-base", str(base / "install"),
        "--event-handlers", "console_direct-", "console_stderr-", "summary-",
    ]  # fmt: skip
    result = subprocess.run(
        command, cwd=base, capture_output=True, text=True, timeout=85, stdin=subprocess.DEVNULL
    )
    assert result.returncode == 0, f"colcon build failed:\n{result.stdout}\n{result.stderr}"
    return base / "install"


def test_console_scripts_where_ros2_run_looks(colcon_install):
    for script in ("cldyn", "fusion_node"):
        path = colcon_install / "lib" / "cldyn_ros" / script
        assert path.is_file(), f"{path} missing"
        assert os.access(path, os.X_OK)


def test_share_directory_and_ament_index(colcon_install):
    share = colcon_install / "share" / "cldyn_ros"
    assert (share / "package.xml").is_file()
    marker = colcon_install / "share/ament_index/resource_index/packages/cldyn_ros"
    assert marker.is_file()


def _installed_env(colcon_install: Path) -> dict[str, str]:
    """What sourcing install/setup.bash sets for this package (colcon's hooks)."""
    # lib/python3.X/site-packages here; Debian-patched pythons may use dist-packages.
    (init,) = colcon_install.glob("lib/python3*/*-packages/cldyn_ros/__init__.py")
    return {
        **os.environ,
        "AMENT_PREFIX_PATH": str(colcon_install),
        "PYTHONPATH": str(init.parent.parent),
    }


def test_paths_resolve_through_the_ament_index(colcon_install, tmp_path):
    pytest.importorskip("ament_index_python", reason="ament_index_python not installed")
    # Run from outside the checkout so the installed copy of cldyn_ros is imported.
    env = _installed_env(colcon_install)
    code = (
        "import cldyn_ros, cldyn_ros.paths as p; "
        "print(cldyn_ros.__file__); print(p.share_directory())"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    module_file, share = result.stdout.split()
    assert Path(module_file).is_relative_to(colcon_install)
    assert Path(share) == colcon_install / "share" / "cldyn_ros"


def test_installed_cldyn_script_runs(colcon_install, repo_root, tmp_path):
    if not (repo_root / "cldyn_ros" / "cli" / "__init__.py").is_file():
        pytest.skip("cldyn_ros.cli is not written yet")
    result = subprocess.run(
        [str(colcon_install / "lib" / "cldyn_ros" / "cldyn"), "--help"],
        cwd=tmp_path,
        env=_installed_env(colcon_install),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "usage" in result.stdout.lower()
