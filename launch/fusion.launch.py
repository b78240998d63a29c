"""Launch the cldyn_fusion node.

    ros2 launch cldyn_ros fusion.launch.py thermal_topic:=/flir/image_raw \
        rgb_topic:=/camera/color/image_raw task:=detection

Parameters come from ``params_file`` (default: the installed ``config/fusion.yaml``); a
launch argument left empty keeps the file's value, a non-empty one overrides it. ``tasks``
is comma-separated (``tasks:=detection,segmentation``). Topic arguments remap the node's
inputs and its single output; per-task outputs ``fused/<task>/image`` follow ``namespace``.

Each parameter argument's type and description come from the node's settings schema
(``cldyn_ros.streams.settings``). The tables below are read by
test/ros/test_node_launch_config.py (with ``ast``, because launch_ros is not installable
everywhere): every launch argument must name a setting or ``use_sim_time``, remap a topic,
or be one of OTHER_ARGUMENTS.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = "cldyn_ros"
EXECUTABLE = "fusion_node"
NODE_NAME = "cldyn_fusion"

# Node parameters offered as launch arguments (same names). Empty = no override.
PARAMETER_ARGUMENTS = (
    "task", "tasks", "compensation_strength", "adaptive_strength", "output_encoding", "device",
    "precision", "model_path", "use_sim_time",
)
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
ARGUMENT_DEFAULTS = {"use_sim_time": "false", "log_level": "info"}


def _default_params_file() -> str:
    try:
        from cldyn_ros.paths import find_share_file

        return str(find_share_file("config/fusion.yaml"))
    except (ImportError, FileNotFoundError):
        return ""


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


def launch_setup(context, *args, **kwargs):
    def value(name: str) -> str:
        return LaunchConfiguration(name).perform(context).strip()

    overrides = {}
    for parameter in PARAMETER_ARGUMENTS:
        text = value(parameter)
        if text:
            converted = _convert(parameter, text, _kind_and_description(parameter)[0])
            if converted != []:  # an empty list cannot be typed: keep the file's value
                overrides[parameter] = converted
    remappings = [(topic, value(argument)) for argument, topic in REMAP_ARGUMENTS.items()
                  if value(argument) and value(argument) != topic]
    params_file = value("params_file")
    parameters = ([params_file] if params_file else []) + [overrides]
    return [
        Node(
            package=PACKAGE,
            executable=EXECUTABLE,
            name=NODE_NAME,
            namespace=value("namespace"),
            parameters=parameters,
            remappings=remappings,
            ros_arguments=["--log-level", value("log_level") or "info"],
            output="screen",
            emulate_tty=True,
        )
    ]


def generate_launch_description() -> LaunchDescription:
    arguments = []
    for name in PARAMETER_ARGUMENTS:
        arguments.append(DeclareLaunchArgument(
            name, default_value=ARGUMENT_DEFAULTS.get(name, ""),
            description=_kind_and_description(name)[1]))
    for name, topic in REMAP_ARGUMENTS.items():
        arguments.append(DeclareLaunchArgument(
            name, default_value=topic, description=f"topic remapped to the node's {topic}"))
    for name, description in OTHER_ARGUMENTS.items():
        default = _default_params_file() if name == "params_file" else ARGUMENT_DEFAULTS.get(
            name, "")
        arguments.append(DeclareLaunchArgument(name, default_value=default,
                                               description=description))
    return LaunchDescription([*arguments, OpaqueFunction(function=launch_setup)])
