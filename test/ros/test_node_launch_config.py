"""launch/fusion.launch.py, config/fusion.yaml and the node's declared parameters agree.

launch_ros is not installable on the project's machines, so the launch file is checked
three ways: its ROS-free part (the argument tables and ``node_settings``, which turn the
argument texts into the node's parameters and remappings) by running it, the calls into
launch/launch_ros statically (ast), and everything with the real launch_ros where it
imports.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest
import yaml

from cldyn_ros.ros import node as fusion_node
from cldyn_ros.ros.node import (
    BUILTIN_PARAMETERS,
    NODE_NAME,
    PARAMETER_SPECS,
    PARAMETERS,
    TOPICS,
    check_value,
    settings_from_values,
)

REPO = Path(__file__).resolve().parents[2]
LAUNCH_FILE = REPO / "launch" / "fusion.launch.py"
CONFIG_FILE = REPO / "config" / "fusion.yaml"
# What the README and the issue promise as launch arguments.
REQUIRED_ARGUMENTS = {
    "namespace", "thermal_topic", "rgb_topic", "fused_topic", "task", "tasks",
    "compensation_strength", "device", "precision", "model_path", "params_file",
    "use_sim_time", "autostart", "thermal_transport", "rgb_transport",
}


def _module_tables() -> dict[str, object]:
    """The launch file's upper-case module-level constants (literal values)."""
    tree = ast.parse(LAUNCH_FILE.read_text(), str(LAUNCH_FILE))
    tables = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target = stmt.targets[0]
            if isinstance(target, ast.Name) and target.id.isupper():
                tables[target.id] = ast.literal_eval(stmt.value)
    return tables


# ------------------------------------------------------------------ launch file: static
def test_launch_arguments_map_to_parameters_or_remappings():
    t = _module_tables()
    params = _launch_module().parameter_arguments()
    remaps, others = t["REMAP_ARGUMENTS"], t["OTHER_ARGUMENTS"]
    all_arguments = set(params) | set(remaps) | set(others)
    assert len(all_arguments) == len(params) + len(remaps) + len(others), "argument listed twice"
    assert REQUIRED_ARGUMENTS <= all_arguments, REQUIRED_ARGUMENTS - all_arguments
    declared = set(PARAMETER_SPECS) | set(BUILTIN_PARAMETERS)
    for parameter in params:
        assert parameter in declared, f"launch argument {parameter} is not a parameter"
    for argument, topic in remaps.items():
        assert topic in TOPICS, f"launch argument {argument} remaps {topic}, not a node topic"
    assert set(others) == {"namespace", "params_file", "log_level"}


def test_launch_file_uses_only_tabled_arguments_and_the_right_node():
    t = _module_tables()
    known = (set(_launch_module().parameter_arguments()) | set(t["REMAP_ARGUMENTS"])
             | set(t["OTHER_ARGUMENTS"]))
    tree = ast.parse(LAUNCH_FILE.read_text())
    used = set()
    for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
        name = getattr(call.func, "id", getattr(call.func, "attr", None))
        if name in ("LaunchConfiguration", "DeclareLaunchArgument", "value") and call.args:
            first = call.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                used.add(first.value)
    assert used <= known, f"launch arguments used but not tabled: {used - known}"
    assert t["NODE_NAME"] == NODE_NAME
    assert t["EXECUTABLE"] == "fusion_node"
    assert t["PACKAGE"] == "cldyn_ros"
    setup = (REPO / "setup.py").read_text()
    assert "fusion_node = cldyn_ros.ros.node:main" in setup


# ------------------------------------- launch file: its own code, without launch installed
def _launch_module():
    """The launch file as a module: it imports launch/launch_ros only inside the functions
    that build launch actions, so the tables and node_settings load anywhere."""
    spec = importlib.util.spec_from_file_location("fusion_launch_under_test", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parameter_arguments_are_described_by_the_schema():
    module = _launch_module()
    assert module._kind_and_description("task") == (PARAMETER_SPECS["task"].kind,
                                                    PARAMETER_SPECS["task"].description)


def _argument_defaults(module) -> dict[str, str]:
    values = {name: module.ARGUMENT_DEFAULTS.get(name, "")
              for name in module.parameter_arguments()}
    values.update(module.REMAP_ARGUMENTS)  # topic arguments default to the node's topic
    values.update({name: module.ARGUMENT_DEFAULTS.get(name, "") for name in module.OTHER_ARGUMENTS})
    return values


def test_node_settings_defaults_pass_only_the_params_file():
    """Nothing but the params file by default: use_sim_time in particular is not passed, so
    a params file or a global SetParameter that sets it is not overridden."""
    module = _launch_module()
    values = _argument_defaults(module)
    assert values["use_sim_time"] == ""
    values["params_file"] = "/opt/ros/share/cldyn_ros/config/fusion.yaml"
    settings = module.node_settings(values)
    assert settings["parameters"] == ["/opt/ros/share/cldyn_ros/config/fusion.yaml"]
    assert settings["remappings"] == [] and settings["namespace"] == ""
    assert settings["log_level"] == "info"
    values["params_file"] = ""
    assert module.node_settings(values)["parameters"] == []


def test_node_settings_overrides_and_remappings():
    module = _launch_module()
    values = _argument_defaults(module)
    values.update(
        params_file="/p.yaml", task="detection", tasks="detection, segmentation",
        compensation_strength="0.4", adaptive_strength="true", device="cpu",
        model_path="/m.pt", use_sim_time="true", thermal_topic="/flir/image",
        rgb_topic="/cam/color", fused_topic="/out", namespace="robot", autostart="false",
        thermal_transport="compressed", rgb_transport="raw",
    )
    settings = module.node_settings(values)
    params_file, overrides = settings["parameters"]
    assert params_file == "/p.yaml"
    assert overrides == {
        "task": "detection", "tasks": ["detection", "segmentation"],
        "compensation_strength": 0.4, "adaptive_strength": True, "device": "cpu",
        "model_path": "/m.pt", "use_sim_time": True, "autostart": False,
        "thermal_transport": "compressed", "rgb_transport": "raw",
    }
    for name, value in overrides.items():
        if name in PARAMETER_SPECS:
            assert check_value(PARAMETER_SPECS[name], value) is None, name
    assert sorted(settings["remappings"]) == sorted([
        ("thermal/image", "/flir/image"), ("rgb/image", "/cam/color"), ("fused/image", "/out"),
    ])
    assert settings["namespace"] == "robot"
    values["use_sim_time"] = "false"  # given explicitly: passed explicitly
    assert module.node_settings(values)["parameters"][1]["use_sim_time"] is False
    values["compensation_strength"] = "strong"
    with pytest.raises(ValueError, match="not a number"):
        module.node_settings(values)


def _function(tree: ast.Module, name: str) -> ast.FunctionDef:
    return next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)


def test_launch_file_uses_launch_ros_as_documented():
    """The parts that need launch/launch_ros, checked in the source: the default params file
    is PathJoinSubstitution([FindPackageShare('cldyn_ros'), 'config', 'fusion.yaml']) (the
    share folder colcon installs config/ into), and the Node gets node_settings' values."""
    tree = ast.parse(LAUNCH_FILE.read_text())
    module = _launch_module()
    imports = {(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
               for a in n.names}
    assert {("launch_ros.substitutions", "FindPackageShare"),
            ("launch.substitutions", "PathJoinSubstitution"),
            ("launch_ros.actions", "Node"), ("launch.actions", "DeclareLaunchArgument"),
            ("launch.actions", "OpaqueFunction"),
            ("launch.substitutions", "LaunchConfiguration")} <= imports
    assert not [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))
                and "launch" in ast.unparse(n)], "launch imported at module level"
    generate = _function(tree, "generate_launch_description")
    joins = [n for n in ast.walk(generate) if isinstance(n, ast.Call)
             and getattr(n.func, "id", "") == "PathJoinSubstitution"]
    assert len(joins) == 1
    assert ast.unparse(joins[0].args[0]) == "[FindPackageShare(PACKAGE), *PARAMS_FILE]"
    assert "/".join(module.PARAMS_FILE) == "config/fusion.yaml" and CONFIG_FILE.is_file()
    assert '(f"{SHARE}/config", _files("config/*.yaml")' in (REPO / "setup.py").read_text()
    node = next(n for n in ast.walk(_function(tree, "launch_setup")) if isinstance(n, ast.Call)
                and getattr(n.func, "id", "") == "Node")
    kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
    assert kw["package"] == "PACKAGE" and kw["executable"] == "EXECUTABLE"
    assert kw["name"] == "NODE_NAME"
    for key in ("parameters", "remappings", "namespace"):
        assert kw[key] == f"settings[{key!r}]"


# --------------------------------------------------------------------------- config
def _config_parameters() -> dict[str, object]:
    data = yaml.safe_load(CONFIG_FILE.read_text())
    assert isinstance(data, dict) and len(data) == 1, "one node section expected"
    (key, section), = data.items()
    assert key in (NODE_NAME, f"/{NODE_NAME}", f"/**/{NODE_NAME}"), key
    assert set(section) == {"ros__parameters"}
    return section["ros__parameters"]


def test_config_sets_only_declared_parameters_with_valid_values():
    params = _config_parameters()
    declared = set(PARAMETER_SPECS) | set(BUILTIN_PARAMETERS)
    assert set(params) <= declared, f"undeclared parameters: {set(params) - declared}"
    for name, value in params.items():
        if name in PARAMETER_SPECS:
            assert check_value(PARAMETER_SPECS[name], value) is None, (name, value)
    # Only departures from the schema's defaults: each default is written once, there.
    same = [k for k, v in params.items() if k in PARAMETER_SPECS
            and v == PARAMETER_SPECS[k].default_value]
    assert not same, f"fusion.yaml repeats the schema's defaults of {same}"
    # Together they validate with task 'none' alone (any model: fusion.yaml names no task).
    values = {p.name: list(p.default) if p.kind.endswith("_array") else p.default
              for p in PARAMETERS}
    values.update(params)
    settings_from_values(values, ["none"])


def test_config_commented_examples_are_valid():
    """The commented-out examples in fusion.yaml are valid when uncommented."""
    lines = [line.lstrip()[2:] for line in CONFIG_FILE.read_text().splitlines()
             if line.lstrip().startswith("# ") and ":" in line and "[" in line]
    examples = yaml.safe_load("\n".join(line.split("   #")[0] for line in lines))
    assert set(examples) == {"tasks", "task_weights", "homography"}
    values = {p.name: list(p.default) if p.kind.endswith("_array") else p.default
              for p in PARAMETERS}
    values.update(examples)
    settings_from_values(values, ["none", "detection", "segmentation"])


def test_parameter_table_is_consistent():
    for spec in PARAMETERS:
        default = list(spec.default) if spec.kind.endswith("_array") else spec.default
        assert check_value(spec, default) is None, spec.name
        assert spec.description
    assert {"model_path", "device", "precision"} <= {p.name for p in PARAMETERS if p.read_only}
    defaults = {p.name: list(p.default) if p.kind.endswith("_array") else p.default
                for p in PARAMETERS}
    settings_from_values(defaults, ["none"])
    assert fusion_node.FUSED_TOPIC in TOPICS


# ------------------------------------------------------------- real launch_ros
def test_launch_file_with_launch_ros():
    pytest.importorskip("launch_ros", reason="launch_ros is not installed (no ROS 2 distro)")
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument
    from launch.launch_description_sources import get_launch_description_from_python_launch_file

    description = get_launch_description_from_python_launch_file(str(LAUNCH_FILE))
    arguments = {a.name: a for a in description.entities if isinstance(a, DeclareLaunchArgument)}
    assert REQUIRED_ARGUMENTS <= set(arguments)
    context = LaunchContext()
    for name, argument in arguments.items():
        default = argument.default_value
        text = "".join(s.perform(context) for s in default) if default else ""
        context.launch_configurations[name] = text
    context.launch_configurations.update(task="detection", thermal_topic="/flir")
    spec = importlib.util.spec_from_file_location("fusion_launch_real", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (node,) = module.launch_setup(context)
    assert node.node_executable == "fusion_node"
    assert node.node_package == "cldyn_ros"


def test_readme_lists_every_launch_argument():
    import re

    module = _launch_module()
    text = (REPO / "README.md").read_text()
    paragraph = text.split("Launch arguments:", 1)[1].split("\n\n", 1)[0]
    listed = set(re.findall(r"`([a-z_]+)`", paragraph))
    arguments = {*module.parameter_arguments(), *module.REMAP_ARGUMENTS, *module.OTHER_ARGUMENTS}
    assert arguments <= listed, f"README lacks launch arguments {arguments - listed}"
