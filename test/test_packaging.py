"""Packaging checks: package.xml, setup.py, setup.cfg and the lock file stay consistent
with the code, so that neither `rosdep`/colcon nor `make venv` drift from what is imported.
"""

from __future__ import annotations

import ast
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from cldyn_ros import __version__, paths

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "cldyn_ros"

# Imports that no usable rosdep key provides (see the comment in package.xml): installed
# with pip from requirements/base.txt. Import name -> distribution name there.
PIP_ONLY = {
    "torch": "torch",
    "torchmetrics": "torchmetrics",
    "rosbags": "rosbags",  # also rosbags.image from rosbags-image
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
}

# Top-level import name -> rosdep key that provides it. A module imported by the package
# but missing here and in PIP_ONLY fails test_imports_are_declared: add it here *and* to
# package.xml (the key must exist in rosdistro: test/test_rosdep_keys.py).
IMPORT_TO_ROSDEP = {
    "numpy": "python3-numpy",
    "cv2": "python3-opencv",
    "yaml": "python3-yaml",
    "tqdm": "python3-tqdm",
    "matplotlib": "python3-matplotlib",
    "PIL": "python3-pil",
    "scipy": "python3-scipy",
    # ROS 2 packages: the rosdep key is the package name.
    **{
        name: name
        for name in (
            "rclpy",
            "sensor_msgs",
            "std_msgs",
            "std_srvs",
            "diagnostic_msgs",
            "rosgraph_msgs",
            "builtin_interfaces",
            "rcl_interfaces",
            "ament_index_python",
            "launch",
            "launch_ros",
        )
    },
}

# Dependency tags of package format 3 that make a key available at run time.
RUN_DEPEND_TAGS = ("depend", "exec_depend")


def _package_xml() -> ET.Element:
    return ET.parse(REPO_ROOT / "package.xml").getroot()


def _declared(root: ET.Element, tags: tuple[str, ...]) -> set[str]:
    return {(el.text or "").strip() for tag in tags for el in root.findall(tag)}


def _setup_call() -> ast.Call:
    tree = ast.parse((REPO_ROOT / "setup.py").read_text(), "setup.py")
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup":
            return node
    raise AssertionError("setup.py has no setup(...) call")


def _setup_keyword(name: str) -> ast.expr | None:
    for keyword in _setup_call().keywords:
        if keyword.arg == name:
            return keyword.value
    return None


# --- package.xml ------------------------------------------------------------------------


def test_package_xml_is_format3_ament_python():
    root = _package_xml()
    assert root.tag == "package"
    assert root.get("format") == "3"
    assert root.findtext("name") == PACKAGE
    assert root.findtext("license") == "Apache-2.0"
    assert root.findtext("export/build_type") == "ament_python"
    assert "python3-pytest" in _declared(root, ("test_depend",))


def test_package_xml_validates_with_catkin_pkg():
    # catkin_pkg is what rosdep, bloom and colcon use to read package.xml.
    catkin_package = pytest.importorskip("catkin_pkg.package", reason="catkin_pkg not installed")
    package = catkin_package.parse_package(REPO_ROOT / "package.xml")
    package.validate()
    assert package.get_build_type() == "ament_python"
    assert [m.name for m in package.maintainers] == ["cldyn_ros maintainers"]


def test_versions_agree():
    setup_version = ast.literal_eval(_setup_keyword("version"))
    assert _package_xml().findtext("version") == setup_version == __version__


# --- imports vs. declared dependencies -----------------------------------------------------


def _guarded_lines(tree: ast.AST) -> set[int]:
    """Line numbers of imports that may fail: in `try: ... except ImportError` or under
    `if TYPE_CHECKING:`. Such imports are optional and need no declared dependency."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        body: list[ast.stmt] = []
        if isinstance(node, ast.Try):
            caught = set()
            for handler in node.handlers:
                kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
                caught |= {getattr(kind, "id", None) for kind in kinds if kind is not None}
                if handler.type is None:
                    caught.add("Exception")
            if caught & {"ImportError", "ModuleNotFoundError", "Exception"}:
                body = node.body
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            body = node.body
        for stmt in body:
            lines |= {n.lineno for n in ast.walk(stmt) if isinstance(n, ast.stmt)}
    return lines


def _third_party_imports() -> dict[str, list[str]]:
    """Top-level third-party module -> ['file:line', ...] over the package and launch files."""
    sources = sorted((REPO_ROOT / PACKAGE).rglob("*.py"))
    sources += sorted((REPO_ROOT / "launch").glob("*.py"))
    found: dict[str, list[str]] = {}
    for source in sources:
        tree = ast.parse(source.read_text(), str(source))
        guarded = _guarded_lines(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue  # relative imports are intra-package
            if node.lineno in guarded:
                continue
            for name in names:
                top = name.split(".")[0]
                if top == PACKAGE or top in sys.stdlib_module_names or top == "__future__":
                    continue
                where = f"{source.relative_to(REPO_ROOT)}:{node.lineno}"
                found.setdefault(top, []).append(where)
    return found


def test_import_scanner_sees_the_package():
    # Guards the scanner itself: the package's own modules are found and skipped.
    assert (REPO_ROOT / PACKAGE / "paths.py").is_file()
    assert PACKAGE not in _third_party_imports()


def test_imports_are_declared():
    declared = _declared(_package_xml(), RUN_DEPEND_TAGS)
    unknown, undeclared = [], []
    pip_requirements = {
        re.split(r"[=<>!~;\[ ]", line.strip(), maxsplit=1)[0].lower()
        for line in (REPO_ROOT / "requirements" / "base.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for module, places in sorted(_third_party_imports().items()):
        key = IMPORT_TO_ROSDEP.get(module)
        if module in PIP_ONLY:
            if PIP_ONLY[module] not in pip_requirements:
                undeclared.append(f"{PIP_ONLY[module]} in requirements/base.txt for {module}")
        elif key is None:
            unknown.append(f"{module} (imported at {', '.join(places)})")
        elif key not in declared:
            undeclared.append(f"{key} for {module} (imported at {', '.join(places)})")
    assert not unknown, (
        "third-party modules with no rosdep key in IMPORT_TO_ROSDEP (test/test_packaging.py); "
        "add the key there and an <exec_depend> to package.xml, or guard the import with "
        "try/except ImportError if it is optional:\n  " + "\n  ".join(unknown)
    )
    assert not undeclared, "package.xml lacks <exec_depend>s:\n  " + "\n  ".join(undeclared)


def test_guarded_imports_are_recognised():
    tree = ast.parse(
        "import a\n"
        "try:\n    import b\nexcept ImportError:\n    b = None\n"
        "try:\n    import c\nexcept (OSError, ModuleNotFoundError):\n    pass\n"
        "try:\n    import d\nexcept ValueError:\n    pass\n"
        "if TYPE_CHECKING:\n    import e\n"
    )
    assert _guarded_lines(tree) & {1, 3, 7, 11, 15} == {3, 7, 15}


# --- setup.py / setup.cfg ----------------------------------------------------------------


def _entry_points() -> list[tuple[str, str, str]]:
    value = _setup_keyword("entry_points")
    assert value is not None, "setup.py declares no entry_points"
    scripts = ast.literal_eval(value)["console_scripts"]
    parsed = []
    for spec in scripts:
        match = re.fullmatch(r"\s*([\w-]+)\s*=\s*([\w.]+)\s*:\s*(\w+)\s*", spec)
        assert match, f"malformed console script {spec!r}"
        parsed.append(match.groups())
    return parsed


def test_console_scripts_declared():
    assert {name for name, _, _ in _entry_points()} >= {"cldyn", "fusion_node"}


def _module_file(module: str) -> Path | None:
    base = REPO_ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@pytest.mark.parametrize(
    "name,module,function", _entry_points(), ids=[name for name, _, _ in _entry_points()]
)
def test_entry_point_targets_exist(name, module, function):
    source = _module_file(module)
    if source is None:
        pytest.skip(f"{module} (console script {name}) is not written yet")
    tree = ast.parse(source.read_text(), str(source))
    defined = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            defined.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            defined |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif isinstance(node, ast.Assign):
            defined |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    assert function in defined, f"{source.relative_to(REPO_ROOT)} defines no {function}()"


def test_colcon_finds_pytest():
    # colcon runs pytest only when setup.py names it in extras_require['test']
    # (tests_require is ignored with setuptools >= 72: zero tests would run).
    assert _setup_keyword("tests_require") is None
    extras = ast.literal_eval(_setup_keyword("extras_require"))
    assert "pytest" in extras["test"]


def test_setup_cfg_puts_scripts_where_ros2_run_looks():
    import configparser

    config = configparser.ConfigParser()
    config.read(REPO_ROOT / "setup.cfg")
    assert config["develop"]["script_dir"] == f"$base/lib/{PACKAGE}"
    assert config["install"]["install_scripts"] == f"$base/lib/{PACKAGE}"


def test_ament_resource_marker_exists():
    # setup.py installs it to share/ament_index/resource_index/packages: the ament index
    # (get_package_share_directory, ros2 run) finds the package only through this file.
    assert (REPO_ROOT / "resource" / PACKAGE).is_file()


# --- the lock file -----------------------------------------------------------------------


def _pins(path: Path) -> dict[str, str]:
    """``name == version`` pins of a requirement file that apply to this Python (markers
    evaluated)."""
    from packaging.requirements import Requirement

    pins = {}
    for line in path.read_text().splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        specifiers = list(requirement.specifier)
        if len(specifiers) == 1 and specifiers[0].operator == "==":
            pins[re.sub(r"[-_.]+", "-", requirement.name).lower()] = specifiers[0].version
    return pins


def _lock_python() -> str | None:
    text = (REPO_ROOT / "requirements" / "constraints.txt").read_text()
    match = re.search(r"^# Locked on Python (\d+\.\d+)", text, re.M)
    return match.group(1) if match else None


def test_lock_pins_are_marked_for_the_python_they_were_made_on():
    python = _lock_python()
    assert python, "constraints.txt says which Python it was locked on"
    text = (REPO_ROOT / "requirements" / "constraints.txt").read_text()
    general = text.split("# --- ROS 2 wheels lock")[0]
    pins = [line for line in general.splitlines() if line and not line.startswith("#")]
    assert pins and all(line.endswith(f'; python_version == "{python}"') for line in pins)


@pytest.mark.parametrize("requirements", ["base.txt", "dev.txt", "ros-wheels.txt"])
def test_requirements_agree_with_constraints(requirements):
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    if requirements != "ros-wheels.txt" and _lock_python() != running:
        pytest.skip(f"the lock was made on Python {_lock_python()}, this is {running}")
    constraints = _pins(REPO_ROOT / "requirements" / "constraints.txt")
    wanted = _pins(REPO_ROOT / "requirements" / requirements)
    assert wanted, f"no pins read from requirements/{requirements}"
    stale = {
        name: (version, constraints.get(name))
        for name, version in wanted.items()
        if constraints.get(name) != version
    }
    assert not stale, (
        f"requirements/constraints.txt disagrees (wanted, locked); run `make lock`: {stale}"
    )


def test_requirements_pin_every_supported_python():
    """base.txt has exactly one pin per package for each of Python 3.10, 3.11 and 3.12."""
    from packaging.requirements import Requirement

    lines = [line.split(" #", 1)[0].strip()
             for line in (REPO_ROOT / "requirements" / "base.txt").read_text().splitlines()]
    requirements = [Requirement(line) for line in lines if line and not line.startswith("#")]
    names = {r.name for r in requirements}
    for python in ("3.10", "3.11", "3.12"):
        env = {"python_version": python, "python_full_version": f"{python}.0"}
        applying = [r.name for r in requirements if r.marker is None or r.marker.evaluate(env)]
        assert sorted(applying) == sorted(names), python


# --- the installed copy --------------------------------------------------------------------


def test_installed_share_directory():
    share = paths.share_directory()
    if share is None:
        pytest.skip("cldyn_ros is not installed (make venv, or colcon build) in this prefix")
    assert (share / "package.xml").is_file()
    assert ET.parse(share / "package.xml").getroot().findtext("name") == PACKAGE
    prefix = share.parent.parent
    marker = prefix / "share/ament_index/resource_index/packages" / PACKAGE
    assert marker.is_file(), f"ament index marker missing: {marker}"
    scripts = [prefix / "bin" / "cldyn", prefix / "lib" / PACKAGE / "cldyn"]
    assert any(s.is_file() for s in scripts), f"no cldyn script in {scripts}"


@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_importing_the_package_first_makes_openmp_threads_sleep_unless_told(given, expected):
    """The policy must be in the environment before torch loads libgomp; an explicit
    setting is kept."""
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    env["PYTHONPATH"] = str(REPO_ROOT)
    code = "import os, cldyn_ros, torch; print(os.environ['OMP_WAIT_POLICY'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=300, check=True).stdout.split()
    assert out[-1] == expected


def test_tasks_extra_lock_agrees_and_adds_no_second_torch_or_opencv():
    base = _pins(REPO_ROOT / "requirements" / "constraints.txt")
    tasks_lock = _pins(REPO_ROOT / "requirements" / "tasks-constraints.txt")
    wanted = _pins(REPO_ROOT / "requirements" / "tasks.txt")
    assert wanted, "no pins read from requirements/tasks.txt"
    stale = {n: (v, tasks_lock.get(n)) for n, v in wanted.items() if tasks_lock.get(n) != v}
    assert not stale, f"requirements/tasks-constraints.txt disagrees; run `make lock`: {stale}"
    # the extra's lock only adds packages: everything the base lock pins stays as pinned
    assert not set(tasks_lock) & set(base), sorted(set(tasks_lock) & set(base))
    for name in ("torch", "opencv-python", "opencv-contrib-python", "ultralytics"):
        assert name not in tasks_lock, f"the tasks extra must not pull in {name}"
    extras = ast.literal_eval(_setup_keyword("extras_require"))
    assert sorted(extras["tasks"]) == sorted(wanted)
