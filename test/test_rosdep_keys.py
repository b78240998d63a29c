"""Every dependency key of package.xml resolves with rosdep on Humble, Jazzy and Kilted.

Checked against a stored subset of rosdistro (test/data/rosdep/, commit in its README): ROS
packages must be released in each distro's distribution.yaml; system keys must be defined
in rosdep/python.yaml or base.yaml and resolve to Ubuntu (apt) packages on 22.04 (jammy,
Humble) and 24.04 (noble, Jazzy and Kilted). A pip-installer key would make `rosdep
install` fail on 24.04 (PEP 668 refuses system-wide pip installs), so none is allowed.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA = REPO_ROOT / "test" / "data" / "rosdep"
DISTROS = {"humble": "jammy", "jazzy": "noble", "kilted": "noble"}
DEPEND_TAGS = ("depend", "build_depend", "build_export_depend", "exec_depend",
               "test_depend", "buildtool_depend", "doc_depend")


def package_keys() -> list[str]:
    root = ET.parse(REPO_ROOT / "package.xml").getroot()
    return sorted({(el.text or "").strip() for tag in DEPEND_TAGS for el in root.iter(tag)})


def defined_keys() -> set[str]:
    return set((DATA / "keys.txt").read_text().split())


def ros_packages() -> dict[str, dict[str, dict]]:
    return yaml.safe_load((DATA / "distribution_packages.yaml").read_text())


def system_rules() -> dict[str, dict]:
    return yaml.safe_load((DATA / "python.yaml").read_text())


def ubuntu_resolution(rule: dict, release: str) -> object:
    """What rosdep installs for this key on an Ubuntu release (None: not available)."""
    ubuntu = rule.get("ubuntu")
    if isinstance(ubuntu, dict) and "pip" not in ubuntu:
        ubuntu = ubuntu.get(release, ubuntu.get("*"))  # per-release entry, else the default
    return ubuntu


def test_package_xml_has_keys():
    keys = package_keys()
    assert "rclpy" in keys and "python3-numpy" in keys


@pytest.mark.parametrize("key", package_keys())
def test_key_resolves_on_humble_jazzy_and_kilted(key: str):
    packages = ros_packages()
    if any(key in packages[d] for d in DISTROS):
        missing = [d for d in DISTROS if key not in packages[d]]
        assert not missing, f"ROS package {key} is not released in {missing}"
        return
    assert key in defined_keys(), (
        f"'{key}' is not a rosdep key in rosdistro (rosdep/python.yaml, base.yaml): rosdep "
        "install stops on it; use an existing key or install it with pip")
    rules = system_rules()
    assert key in rules, (f"'{key}' exists in rosdistro but not in the stored subset: add its "
                          "entry to test/data/rosdep/python.yaml")
    for distro, release in DISTROS.items():
        resolved = ubuntu_resolution(rules[key], release)
        assert resolved, f"'{key}' has no Ubuntu {release} ({distro}) entry"
        assert not (isinstance(resolved, dict) and "pip" in resolved), (
            f"'{key}' is a pip key: rosdep would pip-install it system-wide, which Ubuntu "
            f"{release} refuses (PEP 668); install it from requirements/base.txt instead")
        assert isinstance(resolved, list) and all(isinstance(p, str) for p in resolved)


def test_the_checker_rejects_what_rosdep_rejects():
    """The stored data knows the keys rosdep stopped on, and the pip ones."""
    keys = defined_keys()
    assert "python3-onnx" not in keys and "python3-torchmetrics-pip" not in keys
    assert {"python3-rosbags-pip", "python3-onnxruntime-pip", "python3-torch"} <= keys
    assert ubuntu_resolution({"ubuntu": {"pip": {"packages": ["x"]}}}, "noble") == {
        "pip": {"packages": ["x"]}}
    assert ubuntu_resolution({"ubuntu": {"*": ["a"], "focal": None}}, "focal") is None
    assert ubuntu_resolution({"ubuntu": {"*": ["a"], "focal": None}}, "noble") == ["a"]
