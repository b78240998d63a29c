"""Lifecycle helpers of the fusion node: transition callbacks that say why they failed, and
a ``~/change_state`` service that refuses unavailable transitions instead of raising.

Kept apart so :mod:`cldyn_ros.ros.node` stays the wiring of the life cycle.
"""

from __future__ import annotations

import functools
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

from rclpy.lifecycle import LifecycleNode, State, TransitionCallbackReturn

from ..inference.checkpoint import first_line

__all__ = ["refuse_unavailable_transitions", "transition"]

NodeT = TypeVar("NodeT", bound=LifecycleNode)


def transition(method: Callable[[NodeT, State], TransitionCallbackReturn]
               ) -> Callable[[NodeT, State], TransitionCallbackReturn]:
    """A lifecycle callback whose unexpected exception is logged with its reason and kept
    in the node's ``transition_error`` (rclpy would turn it into a silent ERROR)."""
    @functools.wraps(method)
    def run(node: NodeT, state: State) -> TransitionCallbackReturn:
        try:
            return method(node, state)
        except Exception as e:
            error = f"{method.__name__[3:]} failed: {type(e).__name__}: {first_line(e)}"
            node.transition_error = error  # type: ignore[attr-defined]
            node.get_logger().error(error + "\n" + traceback.format_exc())
            return TransitionCallbackReturn.ERROR
    return run


def refuse_unavailable_transitions(node: LifecycleNode) -> None:
    """Make ``node``'s ``~/change_state`` answer a transition its current state lacks with
    failure.

    rclpy 7 (Jazzy) raises out of the service callback there instead of answering, and the
    exception ends the executor's spin: the caller waits in vain and the node stops. This
    wraps rclpy's own callback (its private service and state machine: there is no public
    hook).
    """
    service = getattr(node, "_service_change_state", None)
    if service is None:  # no lifecycle services (enable_communication_interface=False)
        return
    change_state = service.callback
    machine = node._state_machine

    def checked(request: Any, response: Any) -> Any:
        transition = request.transition
        if not transition.label and transition.id not in {
                t[0] for t in machine.available_transitions}:
            state = machine.current_state[1]
            node.get_logger().error(
                f"transition {transition.id} is not available in state '{state}'")
            response.success = False
            return response
        return change_state(request, response)

    service.callback = checked
