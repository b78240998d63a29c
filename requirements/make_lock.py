"""Write requirements/constraints.txt from the packages installed in this interpreter.

Run as `make lock` (it uses .venv/bin/python). The lock has two sections:

- everything that requirements/base.txt and dev.txt pull in, plus pip and setuptools;
- what only requirements/ros-wheels.txt pulls in. pip ignores a constraint on a package it
  does not install, so a venv on a sourced ROS 2 distro (wheels skipped) uses the same file.

What only the optional extra requirements/tasks.txt pulls in goes to its own lock,
requirements/tasks-constraints.txt (`make tasks` installs with both files); where the extra
is not installed, that file is left as it is.

Local version labels are dropped (torch 2.13.0+cpu -> 2.13.0) so that the CUDA build of the
same version also satisfies the lock. Distributions embedded in another wheel (the ROS
wheels carry egg-info folders such as rclpy-9.1.2-py3.11.egg-info) and the project itself
are left out: pip cannot install them by name.
"""

from __future__ import annotations

import importlib.metadata as metadata
import re
import subprocess
import sys
from pathlib import Path

REQUIREMENTS = Path(__file__).resolve().parent
PROJECT = "cldyn-ros"
ROS_FILE = "ros-wheels.txt"
TASKS_FILE = "tasks.txt"
TASKS_LOCK = "tasks-constraints.txt"
GENERAL_FILES = ("base.txt", "dev.txt")
ALWAYS = ("pip", "setuptools", "wheel")


ROS_HEADER = "# --- ROS 2 wheels lock: requirements/ros-wheels.txt and what only it pulls in."


def previous_ros_section() -> list[str]:
    """The pins of the ROS 2 section of the current constraints.txt."""
    path = REQUIREMENTS / "constraints.txt"
    text = path.read_text().splitlines() if path.exists() else []
    if ROS_HEADER not in text:
        return []
    section = []
    for line in text[text.index(ROS_HEADER) + 1 :]:
        if line.startswith("# ---"):
            break
        if line and not line.startswith("#"):
            section.append(line)
    return section


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(path: Path) -> list[str]:
    names = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.append(canonical(re.split(r"[\[<>=!~;\s]", line, maxsplit=1)[0]))
    return names


def closure(roots: list[str], installed: dict[str, metadata.Distribution]) -> set[str]:
    """Installed distributions reachable from ``roots`` through their requirements."""
    seen: set[str] = set()
    stack = list(roots)
    while stack:
        name = stack.pop()
        if name in seen or name not in installed:
            continue
        seen.add(name)
        for requirement in installed[name].requires or []:
            requirement_name, _, marker = requirement.partition(";")
            if "extra" in marker:
                continue  # extras: only those named in the requirement files (extras_of)
            stack.append(canonical(re.split(r"[\[<>=!~(\s]", requirement_name, maxsplit=1)[0]))
    return seen


def extras_of(path: Path) -> list[str]:
    """Requirements named by the extras in a requirement file (ros-rclpy[fastrtps])."""
    names = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        match = re.match(r"([A-Za-z0-9._-]+)\[([^\]]+)\]", line)
        if not match:
            continue
        try:
            dist = metadata.distribution(match.group(1))
        except metadata.PackageNotFoundError:
            continue
        wanted = {canonical(e) for e in match.group(2).split(",")}
        for requirement in dist.requires or []:
            extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", requirement)
            if extra and canonical(extra.group(1)) in wanted:
                names.append(canonical(re.split(r"[\[<>=!~(;\s]", requirement, maxsplit=1)[0]))
    return names


def main() -> int:
    installed = {}
    for dist in metadata.distributions():
        name = canonical(dist.metadata["Name"])
        if dist.read_text("INSTALLER") is None or name == PROJECT:
            continue  # embedded in another wheel, or the project itself
        installed.setdefault(name, dist)

    frozen = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--all", "--exclude", PROJECT],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    pins = {}
    for line in frozen.splitlines():
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([^+\s]+)(\+\S+)?", line.strip())
        if match and canonical(match.group(1)) in installed:
            pins[canonical(match.group(1))] = (match.group(1), match.group(2))

    general_roots = [n for f in GENERAL_FILES for n in requirement_names(REQUIREMENTS / f)]
    general_roots += [n for f in GENERAL_FILES for n in extras_of(REQUIREMENTS / f)]
    general = closure(general_roots + list(ALWAYS), installed)
    ros_file = REQUIREMENTS / ROS_FILE
    ros = closure(requirement_names(ros_file) + extras_of(ros_file), installed) - general
    missing = [n for n in requirement_names(ros_file) if n not in installed]
    tasks_file = REQUIREMENTS / TASKS_FILE
    tasks_installed = all(n in installed for n in requirement_names(tasks_file))
    tasks = closure(requirement_names(tasks_file), installed) - general - ros \
        if tasks_installed else set()
    other = set(pins) - general - ros - tasks  # installed by hand: kept, but reported

    def lines(names: set[str], marker: str = "") -> list[str]:
        return [f"{pins[n][0]}=={pins[n][1]}{marker}" for n in sorted(names) if n in pins]

    # The general lock holds for the Python it was made with; on another Python (3.10 on
    # Humble, 3.12 on Jazzy/Kilted) only base.txt's per-Python pins apply. The ROS wheels
    # exist with the same versions for every supported Python.
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    marker = f'; python_version == "{python}"'

    ros_lines = lines(ros)
    if missing:  # a venv on a ROS distro has no wheels: keep their previous lock
        ros_lines = previous_ros_section()
        print("ROS 2 wheels not installed: their section of the lock is kept as it was")

    out = [
        "# Full lock of the development venv, written by `make lock` (requirements/make_lock.py)",
        "# from `pip freeze --all`. The Makefile installs every requirement file with",
        "# `-c requirements/constraints.txt`. Do not edit by hand: change base.txt, dev.txt or",
        "# ros-wheels.txt, install, and run `make lock`.",
        f"# Locked on Python {python}: these pins apply to that Python only.",
        "",
        *lines(general, marker),
        "",
        ROS_HEADER,
        "# Used only where those wheels are installed (no ROS 2 distro sourced); pip ignores",
        "# constraints on packages it does not install, so a distro venv uses this file as is.",
        *ros_lines,
    ]
    if other:
        out += ["", "# --- installed in the venv, required by no requirement file"]
        out += lines(other)
    (REQUIREMENTS / "constraints.txt").write_text("\n".join(out) + "\n")
    if tasks_installed:
        (REQUIREMENTS / TASKS_LOCK).write_text("\n".join([
            "# Lock of the optional extra requirements/tasks.txt: what it pulls in beyond",
            "# requirements/constraints.txt (torch, numpy, OpenCV and the rest stay as locked",
            "# there). Written by `make lock` from a venv with `make tasks` installed; `make",
            "# tasks` installs with both files. Do not edit by hand.",
            "",
            *lines(tasks),
        ]) + "\n")
        print(f"requirements/{TASKS_LOCK}: {len(tasks)} pins")
    else:
        print(f"the '{TASKS_FILE}' extra is not installed: requirements/{TASKS_LOCK} kept")
    if other:
        print(f"note: locked but required by no file: {', '.join(sorted(other))}", file=sys.stderr)
    counts = f"{len(general)} + {len(ros_lines)} ROS + {len(other)} other"
    print(f"requirements/constraints.txt: {counts} pins")
    return 0


if __name__ == "__main__":
    sys.exit(main())
