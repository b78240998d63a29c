"""ROS parameters from the settings schema (:mod:`cldyn_ros.streams.settings`).

Declarations, descriptors (``ros2 param describe``) and message conversions, all derived
from :data:`~cldyn_ros.streams.settings.PARAMETERS`; no setting is named here.
"""

from __future__ import annotations

from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.node import Node
from rclpy.parameter import Parameter

from ..streams.settings import PARAMETER_SPECS, PARAMETERS, ParamSpec

_ARRAY_TYPES = {"string_array": Parameter.Type.STRING_ARRAY,
                "double_array": Parameter.Type.DOUBLE_ARRAY}


def descriptor(spec: ParamSpec) -> ParameterDescriptor:
    """What ``ros2 param describe`` shows: description, read-only flag, range, choices."""
    d = ParameterDescriptor(description=spec.description, read_only=spec.read_only)
    notes = [spec.constraints] if spec.constraints else []
    if spec.choices:
        notes.insert(0, "one of: " + ", ".join(spec.choices))
    d.additional_constraints = "; ".join(notes)
    if spec.low is not None and spec.high is not None:
        if spec.kind == "double":
            d.floating_point_range = [
                FloatingPointRange(from_value=float(spec.low), to_value=float(spec.high))
            ]
        elif spec.kind == "int":
            d.integer_range = [
                IntegerRange(from_value=int(spec.low), to_value=int(spec.high), step=1)
            ]
    return d


def declare_parameters(node: Node) -> dict[str, Any]:
    """Declare every setting as a parameter of ``node``; return the start values.

    Raises ValueError naming the parameter when an override has the wrong type or range.
    """
    values: dict[str, Any] = {}
    for spec in PARAMETERS:
        try:
            ptype = _ARRAY_TYPES.get(spec.kind)
            if ptype is not None:
                # rclpy cannot infer the type of an empty default: declare typed, then give
                # the empty default unless an override set a value.
                p: Parameter = node.declare_parameter(spec.name, ptype, descriptor(spec))
                if p.value is None:
                    node.set_parameters([Parameter(spec.name, ptype, spec.default_value)])
            else:
                node.declare_parameter(spec.name, spec.default, descriptor(spec))
        except Exception as e:  # wrong type or out of range in a params file / override
            raise ValueError(f"invalid parameter '{spec.name}': {e}") from None
        values[spec.name] = from_parameter(spec, node.get_parameter(spec.name).value)
    return values


def from_parameter(spec: ParamSpec, value: Any) -> Any:
    """A parameter value as the schema checks it (arrays as lists)."""
    if spec.kind.endswith("_array") and value is not None:
        return list(value)
    return value


def changed_values(values: dict[str, Any], params: list[Parameter]) -> dict[str, Any]:
    """``values`` with the schema's parameters among ``params`` changed (others, such as
    ``use_sim_time``, are rclpy's)."""
    out = dict(values)
    for p in params:
        spec = PARAMETER_SPECS.get(p.name)
        if spec is not None:
            out[p.name] = from_parameter(spec, p.value)
    return out
