"""The closed-loop score of a detector's Detection2DArray, on real message classes: the
vision_msgs definitions registered in a rosbags type store (no vision_msgs wheel exists),
serialised to CDR and back as a subscription would receive them."""

from __future__ import annotations

import numpy as np
import pytest

from cldyn_ros.streams.detections import detection_score

rosbags_typesys = pytest.importorskip("rosbags.typesys")

# vision_msgs 4.x (Humble and later); the 2.x hypothesis had id and score at the top level.
DEFINITIONS = {
    "vision_msgs/msg/Point2D": "float64 x\nfloat64 y",
    "vision_msgs/msg/Pose2D": "vision_msgs/Point2D position\nfloat64 theta",
    "vision_msgs/msg/BoundingBox2D": "vision_msgs/Pose2D center\nfloat64 size_x\nfloat64 size_y",
    "vision_msgs/msg/ObjectHypothesis": "string class_id\nfloat64 score",
    "vision_msgs/msg/ObjectHypothesisWithPose":
        "vision_msgs/ObjectHypothesis hypothesis\ngeometry_msgs/PoseWithCovariance pose",
    "vision_msgs/msg/Detection2D": "std_msgs/Header header\n"
        "vision_msgs/ObjectHypothesisWithPose[] results\nvision_msgs/BoundingBox2D bbox\n"
        "string id",
    "vision_msgs/msg/Detection2DArray": "std_msgs/Header header\n"
        "vision_msgs/Detection2D[] detections",
}
OLD_HYPOTHESIS = "string id\nfloat64 score\ngeometry_msgs/PoseWithCovariance pose"


def _store(definitions: dict[str, str]):
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    types: dict = {}
    for name, text in definitions.items():
        types.update(get_types_from_msg(text, name))
    store.register(types)
    return store


def _array(store, scores: list[list[float]], old: bool = False):
    t = store.types
    header = t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](sec=7, nanosec=5),
                                      frame_id="cam")
    pose = t["geometry_msgs/msg/PoseWithCovariance"](
        pose=t["geometry_msgs/msg/Pose"](
            position=t["geometry_msgs/msg/Point"](x=0.0, y=0.0, z=0.0),
            orientation=t["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0)),
        covariance=np.zeros(36))
    box = t["vision_msgs/msg/BoundingBox2D"](
        center=t["vision_msgs/msg/Pose2D"](position=t["vision_msgs/msg/Point2D"](x=1.0, y=2.0),
                                           theta=0.0), size_x=3.0, size_y=4.0)
    hyp = t["vision_msgs/msg/ObjectHypothesisWithPose"]

    def result(score: float):
        if old:
            return hyp(id="person", score=score, pose=pose)
        return hyp(hypothesis=t["vision_msgs/msg/ObjectHypothesis"](class_id="person",
                                                                      score=score), pose=pose)

    detections = [t["vision_msgs/msg/Detection2D"](header=header, results=[result(s) for s in d],
                                                   bbox=box, id=str(i))
                  for i, d in enumerate(scores)]
    msg = t["vision_msgs/msg/Detection2DArray"](header=header, detections=detections)
    name = "vision_msgs/msg/Detection2DArray"
    return store.deserialize_cdr(store.serialize_cdr(msg, name), name)


def test_score_is_the_mean_best_hypothesis_per_detection() -> None:
    store = _store(DEFINITIONS)
    msg = _array(store, [[0.2, 0.9], [0.5], []])
    assert detection_score(msg) == pytest.approx((0.9 + 0.5 + 0.0) / 3)
    assert detection_score(_array(store, [])) == 0.0
    assert msg.header.stamp.sec == 7  # the stamp the node scores: the fused frame's


def test_older_layout_and_invalid_scores() -> None:
    old = _store({**DEFINITIONS, "vision_msgs/msg/ObjectHypothesisWithPose": OLD_HYPOTHESIS})
    assert detection_score(_array(old, [[0.4, 0.6]], old=True)) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="not finite"):
        detection_score(_array(_store(DEFINITIONS), [[float("nan")]]))
