"""Build script of the cldyn_ros ament_python package.

The same file serves three installers:

- ``colcon build`` (ROS 2 workspaces): setuptools runs with the ``[develop]``/``[install]``
  sections of setup.cfg, so the console scripts land in ``lib/cldyn_ros`` where
  ``ros2 run cldyn_ros <script>`` looks for them.
- ``pip install .`` (the Makefile's virtual environment): pip builds a wheel, the scripts
  land in ``<venv>/bin`` and the data files in ``<venv>/share/cldyn_ros``.
- ``rosdep``/bloom read package.xml, not this file.

rclpy and the message packages are deliberately absent from ``install_requires``: they
come from the ROS 2 distro or from requirements/ros-wheels.txt.
"""

from glob import glob

from setuptools import find_packages, setup

PACKAGE_NAME = "cldyn_ros"
SHARE = f"share/{PACKAGE_NAME}"


def _files(pattern: str) -> list[str]:
    """Files matching ``pattern``, sorted; empty (not an error) when the folder is empty."""
    return sorted(glob(pattern))


setup(
    name=PACKAGE_NAME,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE_NAME}"]),
        (SHARE, ["package.xml"]),
        (f"{SHARE}/launch", _files("launch/*.launch.py")),
        (f"{SHARE}/config", _files("config/*.yaml") + _files("config/*.xml")),
        (f"{SHARE}/models", _files("models/*.pt") + _files("models/*.md")),
    ],
    # Only names that the distro packages (python3-numpy, ...) also register, so a colcon
    # build against apt-installed libraries resolves them. OpenCV is left out on purpose:
    # apt's python3-opencv registers no distribution, and pip's opencv-python-headless would
    # then be pulled in beside it. requirements/base.txt pins the full set for pip users.
    install_requires=[
        "numpy",
        "pyyaml",
        "tqdm",
        "matplotlib",
        "torch",
    ],
    # Not tests_require: with setuptools >= 72 colcon then finds no pytest dependency and
    # silently runs zero tests.
    # "tasks": the real downstream task networks (cldyn train task, cldyn eval tasks);
    # requirements/tasks.txt pins them, `make tasks` installs them with their lock.
    extras_require={"test": ["pytest"],
                    "tasks": ["torchvision", "ultralytics-opencv-headless", "transformers"]},
    python_requires=">=3.10",
    zip_safe=False,
    maintainer="cldyn_ros maintainers",
    maintainer_email="cldyn_ros@example.com",
    description="Infrared-visible image fusion (CLDyN) as a ROS 2 node and command-line tools.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "cldyn = cldyn_ros.cli:main",
            "fusion_node = cldyn_ros.ros.node:main",
        ],
    },
)
