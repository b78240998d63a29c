"""Launch the cldyn_fusion node.

    ros2 launch cldyn_ros fusion.launch.py thermal_topic:=/flir/image_raw \
        rgb_topic:=/camera/color/image_raw task:=detection

Parameters come from ``params_file`` (default: ``config/fusion.yaml`` in the package's
share folder, found with ``FindPackageShare``); a launch argument left empty keeps the
file's value (or a global ``SetParameter``'s), a non-empty one overrides it: launch_ros
passes the dict entries after the params file, and the later source wins. ``use_sim_time``
is empty by default for that reason. ``tasks`` is comma-separated
(``tasks:=detection,segmentation``). Topic arguments remap the node's inputs and its single
output; per-task outputs ``fused/<task>/image`` follow ``namespace``.

The parameter arguments, with their types and descriptions, come from the node's settings
schema (``cldyn_ros.streams.settings``: the settings marked ``launch``). The tables below
are read by test/ros/test_node_launch_config.py: every launch argument must name a setting
or ``use_sim_time``, remap a topic, or be one of OTHER_ARGUMENTS.
The launch modules are imported inside the functions that use them, so the tables and
:func:`node_settings` import and run where launch/launch_ros are not installed.
"""

PACKAGE = "cldyn_ros"
EXECUTABLE = "fusion_node"
NODE_NAME = "cldyn_fusion"

# Node parameters offered as launch arguments (same names), besides the schema's: see
# parameter_arguments(). Empty = no override.
BUILTIN_ARGUMENTS = ("use_sim_time",)
# launch argument -> the node's topic it remaps (default: unchanged).
REMAP_ARGUMENTS = {
    "thermal_topic": "thermal/image",
    "rgb_topic": "rgb/image",
    "fused_topic": "fused/image",
}
OTHER_ARGUMENTS = {
    "namespace": "namespace of the node and its relative topics",
    "params_file": "parameters file; default: the installed config/fusion.yaml",
    "log_level": "log level (debug, info, warn, error, fatal)",
}
# Defaults of the launch arguments; every other one defaults to "" (no override).
ARGUMENT_DEFAULTS = {"log_level": "info"}
#: The default params file, relative to the package's share folder.
PARAMS_FILE = ("config", "fusion.yaml")


def parameter_arguments() -> tuple[str, ...]:
    """The node parameters that are launch arguments: the settings the schema marks
    ``launch``, in its order, and BUILTIN_ARGUMENTS."""
    from cldyn_ros.streams.settings import PARAMETERS

    return (*(p.name for p in PARAMETERS if p.launch), *BUILTIN_ARGUMENTS)


def _kind_and_description(parameter: str) -> tuple[str, str]:
    """The parameter's kind and description from the settings schema."""
    if parameter == "use_sim_time":  # rclpy's own
        return "bool", "use /clock for time stamps and latency"
    from cldyn_ros.streams.settings import PARAMETER_SPECS

    spec = PARAMETER_SPECS[parameter]
    return spec.kind, spec.description


def _convert(argument: str, text: str, kind: str):
    if kind == "string":
        return text
    if kind == "double":
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"launch argument {argument}:={text} is not a number") from None
    if kind == "bool":
        lowered = text.lower()
        if lowered not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"launch argument {argument}:={text} is not true or false")
        return lowered in ("true", "1", "yes")
    if kind == "string_array":
        return [item.strip() for item in text.split(",") if item.strip()]
    raise ValueError(f"unknown conversion {kind!r}")


def node_settings(values: dict) -> dict:
    """The fusion node's ``parameters`` and ``remappings`` from the launch arguments' texts
    (``values``: argument -> text; missing or empty = not given)."""
    def value(name: str) -> str:
        return str(values.get(name, "") or "").strip()

    overrides = {}
    for parameter in parameter_arguments():
        text = value(parameter)
        if text:
            converted = _convert(parameter, text, _kind_and_description(parameter)[0])
            if converted != []:  # an empty list cannot be typed: keep the file's value
                overrides[parameter] = converted
    remappings = [(topic, value(argument)) for argument, topic in REMAP_ARGUMENTS.items()
                  if value(argument) and value(argument) != topic]
    params_file = value("params_file")
    parameters = ([params_file] if params_file else []) + ([overrides] if overrides else [])
    return {"parameters": parameters, "remappings": remappings,
            "namespace": value("namespace"), "log_level": value("log_level") or "info"}


def launch_setup(context, *args, **kwargs):
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    names = [*parameter_arguments(), *REMAP_ARGUMENTS, *OTHER_ARGUMENTS]
    settings = node_settings({n: LaunchConfiguration(n).perform(context) for n in names})
    return [
        Node(
            package=PACKAGE,
            executable=EXECUTABLE,
            name=NODE_NAME,
            namespace=settings["namespace"],
            parameters=settings["parameters"],
            remappings=settings["remappings"],
            ros_arguments=["--log-level", settings["log_level"]],
            output="screen",
            emulate_tty=True,
        )
    ]


def generate_launch_description():
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch.substitutions import PathJoinSubstitution
    from launch_ros.substitutions import FindPackageShare

    arguments = []
    for name in parameter_arguments():
        arguments.append(DeclareLaunchArgument(
            name, default_value=ARGUMENT_DEFAULTS.get(name, ""),
            description=_kind_and_description(name)[1]))
    for name, topic in REMAP_ARGUMENTS.items():
        arguments.append(DeclareLaunchArgument(
            name, default_value=topic, description=f"topic remapped to the node's {topic}"))
    for name, description in OTHER_ARGUMENTS.items():
        default = (PathJoinSubstitution([FindPackageShare(PACKAGE), *PARAMS_FILE])
                   if name == "params_file" else ARGUMENT_DEFAULTS.get(name, ""))
        arguments.append(DeclareLaunchArgument(name, default_value=default,
                                               description=description))
    return LaunchDescription([*arguments, OpaqueFunction(function=launch_setup)])
