"""The package's layers, checked on its imports (parsed, nothing is imported).

Each top-level part of ``cldyn_ros`` may import only the parts listed for it in
``ALLOWED`` (and itself); ROS packages are imported only in ``cldyn_ros.ros``; there are
no import cycles between modules; no module imports another module's private names.
README.md's "Layers" table lists exactly these folders.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cldyn_ros"

BASE = {"paths", "tv_compat"}  # package files; optional task-network imports
#: part -> parts it may import (below it). ``__init__`` is the package root (version).
ALLOWED: dict[str, set[str]] = {
    "__init__": set(),
    "paths": set(),
    "tv_compat": set(),
    "model": set(),
    "imaging": BASE,
    "metrics": {"model"} | BASE,
    "inference": {"model", "imaging"} | BASE,
    "streams": {"inference", "model", "imaging", "metrics"} | BASE,
    "offline": {"streams", "inference", "model", "imaging", "metrics", "__init__"} | BASE,
    "tools": {"inference", "model", "imaging", "metrics"} | BASE,
    "training": {"offline", "inference", "model", "imaging", "metrics"} | BASE,
    "ros": {"offline", "tools", "streams", "inference", "model", "imaging", "metrics"} | BASE,
    "cli": {"ros", "offline", "tools", "training", "streams", "inference", "model", "imaging",
            "metrics", "__init__"} | BASE,
}
ROS_PACKAGES = {
    "rclpy", "sensor_msgs", "std_msgs", "std_srvs", "diagnostic_msgs", "rcl_interfaces",
    "builtin_interfaces", "rosgraph_msgs", "launch", "launch_ros",
    "lifecycle_msgs", "vision_msgs",
}
# ament's index lookup (no middleware) finds the installed share directory of a colcon
# workspace; only the module that locates the package's files uses it.
ROS_INDEX = ("ament_index_python", "paths")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_module(dotted: str) -> bool:
    path = ROOT / Path(*dotted.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, imported names, line) of every import in ``path``, absolute."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [a.name for a in node.names]
            # `from . import x` imports the module cldyn_ros.<...>.x when it is one
            modules = [n for n in names if _is_module(f"{target}.{n}")]
            out += [(f"{target}.{n}", [], node.lineno) for n in modules]
            rest = [n for n in names if n not in modules]
            if rest:
                out.append((target, rest, node.lineno))
    return out


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_part_has_a_rule() -> None:
    found = {part(m) for m in MODULES}
    assert found == set(ALLOWED), "parts without a rule or rules without a part"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_follow_the_layers(module: str) -> None:
    mine = part(module)
    bad = []
    for target, names, line in imports(MODULES[module]):
        top = target.split(".")[0]
        if top == ROS_INDEX[0] and mine != ROS_INDEX[1]:
            bad.append(f"line {line}: {target} (only cldyn_ros.paths looks up the ament index)")
        if top in ROS_PACKAGES and mine != "ros":
            bad.append(f"line {line}: {target} (ROS is imported only in cldyn_ros.ros)")
        if top != "cldyn_ros":
            continue
        other = part(target)
        if other != mine and other not in ALLOWED[mine]:
            bad.append(f"line {line}: {target} ({mine} may import {sorted(ALLOWED[mine])})")
        private = [n for n in names if n.startswith("_") and not n.startswith("__")]
        if private and target != module:
            bad.append(f"line {line}: private name(s) {private} of {target}")
    assert not bad, f"{module}:\n" + "\n".join(bad)


def test_no_import_cycles() -> None:
    graph = {
        m: {t for t, _, _ in imports(p) if t in MODULES and t != m} for m, p in MODULES.items()
    }
    # A package's __init__ importing its own submodules is how packages re-export; a
    # submodule importing its package's __init__ back is a cycle.
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_readme_layer_table_matches_the_folders() -> None:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Layers\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `cldyn_ros/([a-z_]+)(?:/|\.py)` \|[^|]*\|([^|]*)\|$", section,
                      re.M)
    listed = {name: allowed for name, allowed in rows}
    parts = {p for p in ALLOWED if p != "__init__"}
    assert set(listed) == parts
    for name, allowed in listed.items():
        named = set(re.findall(r"`([a-z_]+)`", allowed))
        assert named == ALLOWED[name] - {"__init__"}, name
