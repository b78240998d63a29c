"""The node's QoS over DDS: sensor-data inputs and reliable outputs by default, both
overridable through rclpy's qos_overrides parameters; a best-effort feedback subscription
that any publisher matches; fusion paused while nobody subscribes to an output."""

from __future__ import annotations

import time

import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import QoSProfile, ReliabilityPolicy
from ros_helpers import (  # noqa: F401  (fixtures)
    NODE,
    model_path_fixture,
    ros_fixture,
    sample_frames,
    status_values,
)

from cldyn_ros.ros.node import StartupError
from cldyn_ros.ros.node_io import input_qos_overrides, qos_override_name

pytestmark = [pytest.mark.ros, pytest.mark.timeout(120)]


def _wait(predicate, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {predicate}")


def _qos(infos, node_name: str = "cldyn_fusion"):
    """The node's QoS on a topic as discovery reports it (reliability; DDS does not
    announce the history depth)."""
    found = [i.qos_profile for i in infos if i.node_name == node_name]
    return found[0] if found else None


def _depth(entities, topic: str) -> int:
    """History depth of the node's own subscription or publisher on ``topic``."""
    return next(e.qos_profile.depth for e in entities if e.topic_name == topic)


def test_default_qos_and_feedback_from_a_best_effort_publisher(ros, model_path):
    node = ros.fusion_node(model_path)
    h = ros.harness()
    h.wait_connected()
    sub = _wait(lambda: _qos(h.get_subscriptions_info_by_topic("/thermal/image")))
    assert sub.reliability == ReliabilityPolicy.BEST_EFFORT
    assert _depth(node.subscriptions, "/thermal/image") == 5
    for topic in ("/fused/image", "/fused/camera_info"):
        pub = _wait(lambda t=topic: _qos(h.get_publishers_info_by_topic(t)))
        assert pub.reliability == ReliabilityPolicy.RELIABLE, topic
    feedback = h.create_publisher(DiagnosticArray, f"{NODE}/task_feedback",
                                  QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT))
    _wait(lambda: feedback.get_subscription_count() == 1)  # a reliable subscription never would


def test_qos_overrides_change_inputs_and_outputs(ros, model_path):
    overrides = input_qos_overrides("reliable", 7)
    overrides[qos_override_name("/fused/image", "publisher", "depth")] = 9
    node = ros.fusion_node(model_path, **overrides)
    h = ros.harness()
    h.wait_connected()
    for topic in ("/thermal/image", "/rgb/image"):
        sub = _wait(lambda t=topic: _qos(h.get_subscriptions_info_by_topic(t)))
        assert sub.reliability == ReliabilityPolicy.RELIABLE, topic
        assert _depth(node.subscriptions, topic) == 7
    assert _depth(node.publishers, "/fused/image") == 9
    assert _depth(node.publishers, "/fused/camera_info") == 5
    name = qos_override_name("/thermal/image", "subscription", "reliability")
    assert h.get_params([name]) == ["reliable"]
    h.fuse(*sample_frames())


def test_a_bad_qos_override_is_a_clear_startup_error(ros, model_path):
    name = qos_override_name("/rgb/image", "subscription", "reliability")
    with pytest.raises(StartupError, match="bogus"):
        ros.fusion_node(model_path, **{name: "bogus"})


def test_fusion_pauses_without_subscribers_and_resumes(ros, model_path):
    node = ros.fusion_node(model_path, diagnostics_period=0.2)
    h = ros.harness(outputs=())  # publishes and reads /diagnostics only ...
    h.destroy_subscription(next(s for s in h.subscriptions if s.topic_name == f"{NODE}/metrics"))
    _wait(lambda: h.thermal_pub.get_subscription_count() and h.rgb_pub.get_subscription_count())
    _wait(lambda: h.count_subscribers(f"{NODE}/metrics") == 0
          and h.count_subscribers("/fused/image") == 0)
    thermal, colour = sample_frames()
    for _ in range(5):
        h.send_pair(thermal, colour)
        time.sleep(0.05)
    _wait(lambda: node.pipeline.demand.skipped >= 3)
    demand = node.pipeline.demand
    assert node.pipeline.frames == 0 and demand.paused and demand.pauses == 1
    status = _wait(lambda: next((s for s in h.diagnostics_of_node()
                                 if status_values(s).get("paused_no_subscriber") == "true"),
                                None))
    assert int(status_values(status)["skipped_pairs_no_subscriber"]) >= 3
    # ... until something subscribes to an output: the next pair is fused again.
    from sensor_msgs.msg import Image

    got: list[Image] = []
    h.create_subscription(Image, "fused/image", got.append,
                          QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    _wait(lambda: h.count_publishers("/fused/image") == 1)
    _wait(lambda: (h.send_pair(thermal, colour), got)[1], timeout=20)
    assert not node.pipeline.demand.paused and node.pipeline.frames >= 1
