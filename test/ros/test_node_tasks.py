"""Task selection at run time: parameters, services, validation with reasons."""

from __future__ import annotations

import numpy as np
import pytest
from ros_helpers import (  # noqa: F401  (fixtures)
    NODE,
    find_status,
    image_array,
    model_path_fixture,
    ros_fixture,
    sample_frames,
    status_values,
)
from std_srvs.srv import Trigger

from cldyn_ros.ros.node import PARAMETER_SPECS, FusionNode, StartupError

pytestmark = [pytest.mark.ros, pytest.mark.timeout(120)]


def _diff(a, b) -> float:
    return float(np.abs(image_array(a).astype(int) - image_array(b)).mean())


def test_task_switch_by_parameter_and_service(ros, model_path):
    node = ros.fusion_node(model_path)
    h = ros.harness()
    h.wait_connected()
    thermal, colour = sample_frames()
    plain = h.fuse(thermal, colour)

    # By parameter (as `ros2 param set` does): effective from the next frame.
    (result,) = h.set_params({"task": "detection"})
    assert result.successful, result.reason
    detection = h.fuse(thermal, colour)
    assert _diff(detection, plain) > 0.5

    # Strength 0 is plain fusion again, exactly.
    assert h.set_params({"compensation_strength": 0.0})[0].successful
    assert _diff(h.fuse(thermal, colour), plain) == 0.0
    assert h.set_params({"compensation_strength": 1.0})[0].successful

    # By service; the parameter follows, so `ros2 param get` agrees.
    response = h.call(Trigger, f"{NODE}/select_task/segmentation", Trigger.Request())
    assert response.success and "segmentation" in response.message
    assert h.get_params(["task"]) == ["segmentation"]
    segmentation = h.fuse(thermal, colour)
    assert _diff(segmentation, plain) > 0.5
    assert _diff(segmentation, detection) > 0.5
    stamp = segmentation.header.stamp.sec * 10**9 + segmentation.header.stamp.nanosec
    metrics = h.wait_for(lambda: h.metrics_with_stamp(stamp))  # published after the image
    values = status_values(find_status(metrics, "cldyn_fusion: frame"))
    assert values["active_task"] == "segmentation"

    # A blend, then back to plain fusion by service (which clears the blend).
    assert h.set_params({"task_weights": ["detection:1", "segmentation:1"]})[0].successful
    blend = h.fuse(thermal, colour)
    assert _diff(blend, plain) > 0.5 and _diff(blend, segmentation) > 0.1
    response = h.call(Trigger, f"{NODE}/select_task/none", Trigger.Request())
    assert response.success and response.message == "active task: none"
    assert h.get_params(["task", "task_weights"]) == ["none", []]
    assert _diff(h.fuse(thermal, colour), plain) == 0.0
    names = {name for name, _ in h.get_service_names_and_types()}
    assert {f"{NODE}/select_task/{t}" for t in ("none", "detection", "segmentation")} <= names
    assert node.settings.task == "none"


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"task": "bogus"}, "unknown task 'bogus'"),
        ({"compensation_strength": 1.5}, "compensation_strength"),
        ({"compensation_strength": -0.1}, "compensation_strength"),
        ({"task_weights": ["detection"]}, "not 'task:weight'"),
        ({"task_weights": ["detection:-1"]}, ">= 0"),
        ({"task_weights": ["detection:nan"]}, "finite"),
        ({"task_weights": ["bogus:1"]}, "unknown task 'bogus'"),
        ({"task_weights": ["detection:0"]}, "at least one weight > 0"),
        ({"tasks": ["detection", "bogus"]}, "unknown task 'bogus'"),
        ({"tasks": ["detection", "detection"]}, "twice"),
        ({"homography": [1.0, 0.0, 0.0]}, "9 numbers"),
        ({"homography": [0.0] * 9}, "singular"),
        ({"thermal_low_percentile": 99.5}, "below thermal_high_percentile"),
        ({"adaptive_min_strength": 0.8}, "must not exceed"),  # max is 0.5
        ({"output_encoding": "mono8"}, "one of"),
        ({"model_path": "/other.pt"}, "read-only"),
        ({"device": "cuda"}, "read-only"),
        ({"slop": 1}, "type"),  # an integer for a double parameter
    ],
)
def test_invalid_values_are_rejected_with_a_reason(ros, model_path, params, reason):
    node = ros.fusion_node(model_path, task="detection", adaptive_max_strength=0.5)
    h = ros.harness()
    before = dict(node._values)
    results = h.set_params(params)
    assert not all(r.successful for r in results)
    reasons = " ".join(r.reason for r in results)
    assert reason.lower() in reasons.lower(), reasons
    assert node._values == before
    assert node.settings.task == "detection"


def test_declared_parameters_match_the_table(ros, model_path):
    node = ros.fusion_node(model_path)
    declared = set(node._parameters)
    assert set(PARAMETER_SPECS) <= declared
    others = {p for p in declared - set(PARAMETER_SPECS) if not p.startswith("qos_overrides.")}
    assert others <= {"use_sim_time", "start_type_description_service"}
    assert {"qos_overrides./thermal/image.subscription.reliability",
            "qos_overrides./fused/image.publisher.depth"} <= declared  # rclpy's QoS overrides
    for spec in PARAMETER_SPECS.values():
        descriptor = node.describe_parameter(spec.name)
        assert descriptor.description == spec.description
        assert descriptor.read_only == spec.read_only
        if spec.kind == "double" and spec.low is not None:
            (rng,) = descriptor.floating_point_range
            assert (rng.from_value, rng.to_value) == (spec.low, spec.high)
    assert node.describe_parameter("compensation_strength").floating_point_range[0].to_value == 1
    assert node.get_parameter("tasks").value == []
    assert not node.engine.runner.compile  # the compiled path is opt-in


def test_compile_parameter_reaches_the_engine(ros, model_path):
    node = ros.fusion_node(model_path, compile=True)
    # Compilation happens on the first frame of a size (or the warm-up), not at load.
    assert node.engine.runner.compile and node.engine.runner.compile_count == 0


def test_bad_start_values_fail_with_a_reason(ros, model_path, tmp_path):
    from rclpy.parameter import Parameter

    def start(**params):
        overrides = [Parameter(k, value=v) for k, v in params.items()]
        node = FusionNode(context=ros.context, parameter_overrides=overrides)
        node.destroy_node()

    with pytest.raises(StartupError, match="unknown task 'bogus'"):
        start(model_path=str(model_path), task="bogus")
    with pytest.raises(StartupError, match="compensation_strength"):
        start(model_path=str(model_path), compensation_strength=2.0)
    with pytest.raises(StartupError, match="file not found"):
        start(model_path=str(tmp_path / "missing.pt"))
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(StartupError, match="corrupt"):
        start(model_path=str(tmp_path / "corrupt.pt"))
    with pytest.raises(StartupError, match="precision"):
        start(model_path=str(model_path), precision="fp8")
    with pytest.raises(StartupError, match="warmup_width and warmup_height"):
        start(model_path=str(model_path), warmup_width=64)


def test_missing_default_model_is_a_clear_start_error(ros):
    from cldyn_ros.paths import default_model_path

    try:
        default_model_path()
    except FileNotFoundError:
        pass
    else:
        pytest.skip("the default model is installed here")
    with pytest.raises(StartupError, match="default model is missing"):
        FusionNode(context=ros.context)
