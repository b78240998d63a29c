"""The fusion node as a lifecycle node, driven over DDS through its lifecycle services
(``~/change_state``, ``~/get_state``) from a separate node, as nav2's lifecycle manager
or ``ros2 lifecycle set`` do."""

from __future__ import annotations

import gc
import time
import weakref

import pytest
from ros_helpers import (  # noqa: F401  (fixtures)
    NODE,
    model_path_fixture,
    ros_fixture,
    sample_frames,
)

pytestmark = [pytest.mark.ros, pytest.mark.timeout(120)]
lifecycle_msgs = pytest.importorskip("lifecycle_msgs")

from lifecycle_msgs.msg import State, Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402


def _state(h) -> int:
    return h.call(GetState, f"{NODE}/get_state", GetState.Request()).current_state.id


def _change(h, transition: int) -> bool:
    request = ChangeState.Request(transition=Transition(id=transition))
    return bool(h.call(ChangeState, f"{NODE}/change_state", request).success)


def _wait(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {predicate}")


def _has_service(h, name: str) -> bool:
    return any(n == name for n, _ in h.get_service_names_and_types())


def test_transitions_over_dds(ros, model_path):
    node = ros.fusion_node(model_path, autostart=False)
    h = ros.harness()
    ready = f"{NODE}/select_task/none"
    assert _state(h) == State.PRIMARY_STATE_UNCONFIGURED
    assert node.engine is None and not _has_service(h, ready)
    assert h.thermal_pub.get_subscription_count() == 0
    assert h.get_params(["autostart"]) == [False]

    assert _change(h, Transition.TRANSITION_CONFIGURE)
    assert _state(h) == State.PRIMARY_STATE_INACTIVE
    assert node.engine is not None and node.worker is None
    _wait(lambda: h.count_publishers("/fused/image") == 1)  # outputs exist, no inputs yet
    assert h.thermal_pub.get_subscription_count() == 0 and not _has_service(h, ready)

    thermal, colour = sample_frames()
    for _ in range(2):  # activate, deactivate and activate again: a fresh worker each time
        assert _change(h, Transition.TRANSITION_ACTIVATE)
        assert _state(h) == State.PRIMARY_STATE_ACTIVE
        h.wait_connected()
        _wait(lambda: _has_service(h, ready))  # what tools wait for
        fused = h.fuse(thermal, colour)
        assert (fused.height, fused.width) == colour.shape[:2]
        assert _change(h, Transition.TRANSITION_DEACTIVATE)
        assert _state(h) == State.PRIMARY_STATE_INACTIVE
        assert node.worker is None
        _wait(lambda: h.thermal_pub.get_subscription_count() == 0
              and h.rgb_pub.get_subscription_count() == 0 and not _has_service(h, ready))
    frames = node.pipeline.frames
    h.send_pair(thermal, colour)  # nobody listens while inactive
    time.sleep(0.5)
    assert node.pipeline.frames == frames

    engine = weakref.ref(node.engine)
    assert _change(h, Transition.TRANSITION_CLEANUP)
    assert _state(h) == State.PRIMARY_STATE_UNCONFIGURED
    assert node.engine is None and node.pipeline is None
    gc.collect()
    assert engine() is None, "the model is still referenced after cleanup"
    _wait(lambda: h.count_publishers("/fused/image") == 0)

    # Configure again (a new model load) and shut down from active.
    assert _change(h, Transition.TRANSITION_CONFIGURE)
    assert _change(h, Transition.TRANSITION_ACTIVATE)
    h.wait_connected()
    h.fuse(thermal, colour)
    assert _change(h, Transition.TRANSITION_ACTIVE_SHUTDOWN)
    assert _state(h) == State.PRIMARY_STATE_FINALIZED
    assert node.engine is None and node.worker is None


def test_a_failed_configure_says_why_and_stays_unconfigured(ros, tmp_path):
    node = ros.fusion_node(tmp_path / "missing.pt", autostart=False)
    h = ros.harness()
    assert not _change(h, Transition.TRANSITION_CONFIGURE)
    assert _state(h) == State.PRIMARY_STATE_UNCONFIGURED
    assert "missing.pt" in node.transition_error
    assert not _change(h, Transition.TRANSITION_ACTIVATE)  # not a transition from here
    assert _state(h) == State.PRIMARY_STATE_UNCONFIGURED  # and the node still answers
    assert node.engine is None
