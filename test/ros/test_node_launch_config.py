"""launch/fusion.launch.py, config/fusion.yaml and the node's declared parameters agree.

launch_ros is not installable on the project's machines, so the launch file is checked
three ways: statically (ast) and by running its ``launch_setup`` against small stand-ins for
the launch API (both run everywhere), and with the real launch_ros where it imports.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
import types
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
    "use_sim_time",
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
    params, remaps, others = t["PARAMETER_ARGUMENTS"], t["REMAP_ARGUMENTS"], t["OTHER_ARGUMENTS"]
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
    known = set(t["PARAMETER_ARGUMENTS"]) | set(t["REMAP_ARGUMENTS"]) | set(t["OTHER_ARGUMENTS"])
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


# ----------------------------------------------------- launch file: run with stand-ins
class _Recorder:
    """Stands in for a launch class: records its constructor arguments."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


def _stub_launch_modules() -> dict[str, types.ModuleType]:
    class LaunchConfiguration:
        def __init__(self, name):
            self.name = name

        def perform(self, context):
            return context[self.name]

    launch = types.ModuleType("launch")
    launch.LaunchDescription = type("LaunchDescription", (_Recorder,), {})
    actions = types.ModuleType("launch.actions")
    actions.DeclareLaunchArgument = type("DeclareLaunchArgument", (_Recorder,), {})
    actions.OpaqueFunction = type("OpaqueFunction", (_Recorder,), {})
    substitutions = types.ModuleType("launch.substitutions")
    substitutions.LaunchConfiguration = LaunchConfiguration
    launch_ros = types.ModuleType("launch_ros")
    ros_actions = types.ModuleType("launch_ros.actions")
    ros_actions.Node = type("Node", (_Recorder,), {})
    launch.actions, launch.substitutions, launch_ros.actions = actions, substitutions, ros_actions
    return {"launch": launch, "launch.actions": actions, "launch.substitutions": substitutions,
            "launch_ros": launch_ros, "launch_ros.actions": ros_actions}


@pytest.fixture
def stubbed_launch(monkeypatch):
    for name, module in _stub_launch_modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("fusion_launch_under_test", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _defaults(description) -> dict[str, str]:
    return {a.args[0]: a.kwargs["default_value"] for a in description.args[0][:-1]}


def test_launch_setup_builds_the_node(stubbed_launch):
    description = stubbed_launch.generate_launch_description()
    described = {a.args[0]: a.kwargs["description"] for a in description.args[0][:-1]}
    assert described["task"] == PARAMETER_SPECS["task"].description  # from the schema
    context = _defaults(description)
    assert set(context) >= REQUIRED_ARGUMENTS
    assert context["params_file"].endswith("config/fusion.yaml")
    # Defaults: only the params file and use_sim_time; no remapping.
    (node,) = stubbed_launch.launch_setup(context)
    kw = node.kwargs
    assert (kw["package"], kw["executable"], kw["name"]) == ("cldyn_ros", "fusion_node",
                                                             NODE_NAME)
    assert kw["parameters"] == [context["params_file"], {"use_sim_time": False}]
    assert kw["remappings"] == []
    # Overrides, converted to the parameter types, and remappings.
    context.update(
        task="detection", tasks="detection, segmentation", compensation_strength="0.4",
        adaptive_strength="true", device="cpu", model_path="/m.pt", use_sim_time="true",
        thermal_topic="/flir/image", rgb_topic="/cam/color", fused_topic="/out",
        namespace="robot",
    )
    (node,) = stubbed_launch.launch_setup(context)
    overrides = node.kwargs["parameters"][1]
    assert overrides == {
        "task": "detection", "tasks": ["detection", "segmentation"],
        "compensation_strength": 0.4, "adaptive_strength": True, "device": "cpu",
        "model_path": "/m.pt", "use_sim_time": True,
    }
    for name, value in overrides.items():
        if name in PARAMETER_SPECS:
            assert check_value(PARAMETER_SPECS[name], value) is None, name
    assert sorted(node.kwargs["remappings"]) == sorted([
        ("thermal/image", "/flir/image"), ("rgb/image", "/cam/color"), ("fused/image", "/out"),
    ])
    assert node.kwargs["namespace"] == "robot"
    context["compensation_strength"] = "strong"
    with pytest.raises(ValueError, match="not a number"):
        stubbed_launch.launch_setup(context)


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
    # Together they validate (the shipped default model has no tasks: only 'none').
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
