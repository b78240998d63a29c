"""The fusion node's ROS plumbing that is not the node itself: topic names of transports,
input and feedback subscriptions, QoS profiles, output and diagnostics messages, device
memory.

Kept apart so :mod:`cldyn_ros.ros.node` stays the wiring of the life cycle.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from ..streams.camera_info import CameraInfoData, camera_info_topic, fused_camera_info
from ..streams.image_msgs import numpy_to_image
from ..streams.pipeline import FrameOutput, Status

try:  # vision_msgs: optional (a ROS distro has it; no wheel on PyPI)
    from vision_msgs.msg import Detection2DArray
except ImportError:  # pragma: no cover - depends on the installation
    Detection2DArray = None

__all__ = [
    "DETECTIONS_TOPIC", "FEEDBACK_TOPIC", "LEVELS", "QOS_OVERRIDES",
    "Detection2DArray", "diagnostic_array", "free_device_memory", "input_qos",
    "input_qos_overrides", "input_topic", "input_type", "kv", "make_feedback_subscriptions",
    "make_image_inputs", "output_messages", "output_publishers", "output_qos",
    "qos_override_name", "resolve_topic", "ros_args",
]

FEEDBACK_TOPIC = "~/task_feedback"
DETECTIONS_TOPIC = "~/detections"
LEVELS = {"OK": DiagnosticStatus.OK, "WARN": DiagnosticStatus.WARN,
          "ERROR": DiagnosticStatus.ERROR}
# Best effort matches reliable and best-effort publishers alike.
_FEEDBACK_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT)


def kv(key: str, value: Any) -> KeyValue:
    """A diagnostics value as text (booleans as ``true``/``false``, floats to 6 digits)."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = f"{value:.6g}"
    elif value is None:
        text = ""
    else:
        text = str(value)
    return KeyValue(key=key, value=text)


def diagnostic_array(statuses: Iterable[Status], hardware_id: str, header: Any) -> DiagnosticArray:
    """The message of pipeline statuses (``header``: the frame's, or one stamped now)."""
    return DiagnosticArray(header=header, status=[
        DiagnosticStatus(level=LEVELS[st.level], name=st.name, message=st.message,
                         hardware_id=hardware_id, values=[kv(k, v) for k, v in st.values])
        for st in statuses])


def output_messages(out: FrameOutput, header: Any, info: CameraInfoData | None
                    ) -> Iterator[tuple[str, Image, CameraInfo | None]]:
    """``(label, fused Image, its CameraInfo or None)`` per output of a fused frame, with the
    colour frame's ``header`` (stamp and frame id) and the colour ``info`` scaled to size."""
    for label, img in out.images.items():
        yield (label, numpy_to_image(img, out.settings.output_encoding, Image(), header=header),
               None if info is None
               else fused_camera_info(info, *img.shape[:2]).fill(CameraInfo(), header=header))


def input_qos() -> QoSProfile:
    """A new input profile (overrides change it in place): sensor data, as camera drivers
    publish (best effort, keep last 5, volatile)."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5,
                      reliability=ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.VOLATILE)


def output_qos() -> QoSProfile:
    """A new output profile: reliable, keep last 5."""
    return QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)


#: Input and output QoS are overridable per topic through parameters
#: ``qos_overrides.<topic>.subscription|publisher.<history|depth|reliability>`` (read-only).
QOS_OVERRIDES = QoSOverridingOptions.with_default_policies


def qos_override_name(topic: str, entity: str, policy: str) -> str:
    """The parameter that overrides ``policy`` of the ``subscription`` or ``publisher`` on
    the fully qualified ``topic`` (rclpy's ``QoSOverridingOptions`` naming)."""
    return f"qos_overrides.{topic}.{entity}.{policy}"


def input_qos_overrides(reliability: str, depth: int, namespace: str = "",
                        transports: tuple[str, str] = ("raw", "raw")) -> dict[str, Any]:
    """Parameter overrides giving both image inputs of a node in ``namespace`` this
    ``reliability`` (``best_effort`` or ``reliable``) and keep-last ``depth`` (tools and
    tests that must not lose frames use reliable and deep queues)."""
    ns = namespace.rstrip("/")
    out: dict[str, Any] = {}
    for base, transport in zip(("thermal/image", "rgb/image"), transports, strict=True):
        topic = f"{ns}/{base}" + ("" if transport == "raw" else f"/{transport}")
        out[qos_override_name(topic, "subscription", "reliability")] = reliability
        out[qos_override_name(topic, "subscription", "depth")] = int(depth)
    return out


def ros_args(params: dict[str, Any]) -> list[str]:
    """``["-p", "name:=value", ...]`` for a ``--ros-args`` command line."""
    return [a for k, v in params.items() for a in ("-p", f"{k}:={v}")]


def resolve_topic(node: Node, topic: str) -> str:
    """``topic`` as the node resolves it (namespace, ``~`` and remapping applied)."""
    resolve = getattr(node, "resolve_topic_name", None)
    if resolve is not None:
        return str(resolve(topic))
    # Older rclpy: expand without remapping rules.  # pragma: no cover
    from rclpy.expand_topic_name import expand_topic_name

    return str(expand_topic_name(topic, node.get_name(), node.get_namespace()))


def input_topic(node: Node, topic: str, transport: str) -> str:
    """The topic an input subscribes to: ``topic`` itself (``raw``) or, as image_transport
    names it, the resolved base topic plus ``/compressed`` (so remapping the base topic
    moves the transport topic with it)."""
    if transport == "raw":
        return topic
    return resolve_topic(node, topic).rstrip("/") + "/" + transport


def input_type(transport: str) -> type:
    """The message type of a transport."""
    return Image if transport == "raw" else CompressedImage


def make_image_inputs(node: Node, topics: dict[str, tuple[str, str]],
                      on_image: Callable[[str, Any], None]) -> list[Any]:
    """The image subscriptions.

    ``topics`` maps ``thermal`` / ``color`` to ``(base topic, transport)``; each input is
    in a callback group of its own (so it stays in order), with sensor-data QoS that
    ``qos_overrides`` parameters can change.
    """
    inputs = [(role, input_topic(node, topic, transport), input_type(transport))
              for role, (topic, transport) in topics.items()]
    return [node.create_subscription(kind, topic, partial(on_image, role), input_qos(),
                                     callback_group=MutuallyExclusiveCallbackGroup(),
                                     qos_overriding_options=QOS_OVERRIDES())
            for role, topic, kind in inputs]


def output_publishers(node: Node, image_topic: str) -> tuple[Any, Any]:
    """The publishers of one fused output: ``(Image on image_topic, CameraInfo on its
    camera_info sibling)``, reliable, overridable through ``qos_overrides`` parameters."""
    return (node.create_publisher(Image, image_topic, output_qos(),
                                  qos_overriding_options=QOS_OVERRIDES()),
            node.create_publisher(CameraInfo, camera_info_topic(image_topic), output_qos(),
                                  qos_overriding_options=QOS_OVERRIDES()))


def make_feedback_subscriptions(node: Node, on_feedback: Callable[[Any], None],
                                on_detections: Callable[[Any], None],
                                on_camera_info: Callable[[Any], None],
                                rgb_topic: str) -> list[Any]:
    """Subscriptions to ``~/task_feedback``, ``~/detections`` (where vision_msgs is
    installed) and the colour camera_info (sibling of the resolved ``rgb_topic``)."""
    group = MutuallyExclusiveCallbackGroup()
    subs = [node.create_subscription(DiagnosticArray, FEEDBACK_TOPIC, on_feedback,
                                     _FEEDBACK_QOS, callback_group=group)]
    if Detection2DArray is not None:  # pragma: no cover - needs vision_msgs
        subs.append(node.create_subscription(Detection2DArray, DETECTIONS_TOPIC, on_detections,
                                             _FEEDBACK_QOS, callback_group=group))
    subs.append(node.create_subscription(CameraInfo, camera_info_topic(rgb_topic),
                                         on_camera_info, qos_profile_sensor_data,
                                         callback_group=MutuallyExclusiveCallbackGroup()))
    return subs


def free_device_memory(device: Any, release: bool = False) -> None:
    """Return cached GPU memory of the torch ``device`` to the driver (after the worker
    stopped); ``release``: the engine was dropped, collect it first so its tensors go too."""
    if release:
        gc.collect()
    if getattr(device, "type", "") == "cuda":
        import torch

        torch.cuda.empty_cache()
