"""A closed-loop score from a detector's own ``vision_msgs/Detection2DArray``, without ROS.

Many detectors (isaac_ros, yolo wrappers) publish ``Detection2DArray`` with the stamp of the
image they ran on; the node takes it as feedback for the fused frame of that stamp. The
score of one message is the mean over its detections of each detection's best hypothesis
score (confidence in [0, 1] for most detectors); a message with no detections scores 0.

Duck-typed on the field names: vision_msgs 3.x and 4.x (ROS 2 Humble and later:
``results[i].hypothesis.score``) and the older layout (``results[i].score``).
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["DETECTION_TASK", "detection_feedback", "detection_score"]

#: The task whose controller detector feedback drives.
DETECTION_TASK = "detection"


def _hypothesis_score(result: Any) -> float:
    hypothesis = getattr(result, "hypothesis", result)
    return float(hypothesis.score)


def detection_score(msg: Any) -> float:
    """The score of a ``Detection2DArray``-like message (see the module docstring).

    Raises:
        ValueError: a score that is not a finite number.
    """
    best = []
    for detection in msg.detections:
        scores = [_hypothesis_score(r) for r in detection.results]
        if any(not math.isfinite(s) for s in scores):
            raise ValueError(f"detection hypothesis score is not finite: {scores}")
        best.append(max(scores, default=0.0))
    return sum(best) / len(best) if best else 0.0


def detection_feedback(msg: Any) -> list[tuple[str, list[tuple[str, str]]]]:
    """The message as feedback statuses for :meth:`FramePipeline.feedback
    <cldyn_ros.streams.pipeline.FramePipeline.feedback>`: the task :data:`DETECTION_TASK`
    with its score (``nan`` for a message that cannot be scored, which the pipeline counts
    as invalid feedback)."""
    try:
        score = repr(detection_score(msg))
    except (ValueError, TypeError, AttributeError):
        score = "nan"
    return [(DETECTION_TASK, [("score", score)])]
