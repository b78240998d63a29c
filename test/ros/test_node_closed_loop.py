"""The closed loop: a downstream node scores fused frames on ~/task_feedback and the node's
reward-penalty controller moves the compensation strength to the score's peak."""

from __future__ import annotations

import time

import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from ros_helpers import (  # noqa: F401  (fixtures)
    NODE,
    find_status,
    model_path_fixture,
    ros_fixture,
    sample_frames,
    status_values,
)

pytestmark = [pytest.mark.ros, pytest.mark.timeout(120)]

PEAK = 0.7


class Scorer(Node):
    """A stand-in downstream node: scores each fused frame with a peak-shaped function of
    the strength it was fused with (read from ~/metrics), and reports the score."""

    def __init__(self, context, task: str) -> None:
        super().__init__("test_scorer", context=context)
        self.task = task
        self.feedback = self.create_publisher(DiagnosticArray, f"{NODE}/task_feedback", 10)
        self.create_subscription(DiagnosticArray, f"{NODE}/metrics", self.on_metrics, 10)
        self.scored = 0

    def on_metrics(self, msg: DiagnosticArray) -> None:
        status = find_status(msg, f"task: {self.task}")
        if status is None:
            return
        strength = float(status_values(status)["strength"])
        score = 1.0 - (strength - PEAK) ** 2
        report = DiagnosticArray()
        report.header.stamp = msg.header.stamp  # the stamp of the frame scored
        report.status = [DiagnosticStatus(name=self.task, values=[
            KeyValue(key="score", value=f"{score:.6f}")])]
        self.feedback.publish(report)
        self.scored += 1


def test_controller_finds_and_holds_the_peak(ros, model_path):
    node = ros.fusion_node(model_path, task="detection", adaptive_strength=True,
                           compensation_strength=0.2, adaptive_step=0.1, metrics_every_n=0)
    h = ros.harness()
    scorer = ros.add(Scorer(ros.context, "detection"))
    h.wait_connected()
    deadline = time.monotonic() + 10
    while not scorer.feedback.get_subscription_count() and time.monotonic() < deadline:
        time.sleep(0.05)
    thermal, colour = sample_frames()

    strengths = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        stamp = h.send_pair(thermal, colour)
        with h.cond:
            h.cond.wait_for(lambda s=stamp: h.metrics_with_stamp(s), 5)
            metrics = h.metrics_with_stamp(stamp)
        time.sleep(0.03)  # let the feedback for this frame arrive
        if metrics is None:
            continue
        values = status_values(find_status(metrics, "task: detection"))
        strengths.append(float(values["strength"]))
        if int(values.get("controller_updates", 0)) >= 30 and len(strengths) >= 40:
            break
    assert strengths[0] == pytest.approx(0.2)
    updates = int(values["controller_updates"])
    assert updates >= 30, f"only {updates} controller updates in {len(strengths)} frames"
    assert int(values["controller_rewards"]) >= 3 and int(values["controller_reverts"]) >= 3
    # It got there and stays there: the last frames probe close around the peak.
    tail = strengths[-10:]
    assert all(abs(s - PEAK) <= 0.1 for s in tail), tail
    assert float(values["controller_accepted_strength"]) == pytest.approx(PEAK, abs=0.06)
    assert node.pipeline.feedback_counts["received"] >= updates
    # Turned off, the strength is the parameter again.
    assert h.set_params({"adaptive_strength": False})[0].successful
    stamp = h.send_pair(thermal, colour)
    h.wait_for(lambda: h.metrics_with_stamp(stamp))
    values = status_values(find_status(h.metrics_with_stamp(stamp), "task: detection"))
    assert float(values["strength"]) == pytest.approx(0.2)
    assert "controller_updates" not in values


def test_feedback_for_unknown_frames_and_tasks_is_counted(ros, model_path):
    node = ros.fusion_node(model_path, task="detection", adaptive_strength=True)
    h = ros.harness()
    pub = h.create_publisher(DiagnosticArray, f"{NODE}/task_feedback", 10)
    deadline = time.monotonic() + 10
    while not pub.get_subscription_count() and time.monotonic() < deadline:
        time.sleep(0.05)
    msg = DiagnosticArray()
    msg.header.stamp.sec = 12345  # no frame with this stamp was fused
    msg.status = [
        DiagnosticStatus(name="detection", values=[KeyValue(key="score", value="1.0")]),
        DiagnosticStatus(name="tracking", values=[KeyValue(key="score", value="1.0")]),
        DiagnosticStatus(name="detection", values=[KeyValue(key="score", value="high")]),
    ]
    pub.publish(msg)
    h.wait_for(lambda: node.pipeline.feedback_counts["received"] == 3)
    assert node.pipeline.feedback_counts == {"received": 3, "unknown_frame": 1, "unknown_task": 1,
                              "invalid": 1}
