"""The ROS 2 fusion node ``cldyn_fusion`` (executable ``fusion_node``), a lifecycle node.

Wiring only: ROS messages in and out of the ROS-free frame pipeline
(:class:`~cldyn_ros.streams.pipeline.FramePipeline`), which bag evaluation runs too::

    thermal/image[/compressed] ─┐ frame_input.receive   FramePipeline.add
                                ├─> (raw: checked view) ─> (pairing, time-jump reset) ─┐
    rgb/image[/compressed] ─────┘                                                    v
    fused/image + camera_info <── FramePipeline.fuse_received (convert, fuse) <── worker
    fused/<task>/image, ~/metrics, /diagnostics                   (newest pair only)

Subscription callbacks only check and pair (never block); decoding and inference run in one
worker thread on the newest pair, older waiting pairs are dropped and counted, so latency
stays one fusion step under overload. Parameters are declared from the settings schema
(:mod:`cldyn_ros.streams.settings`), validated by it and take effect from the next frame.
Downstream nodes close the loop through ``~/task_feedback`` (see :class:`FusionNode`).

A model that cannot be loaded at start (``autostart``) is fatal: the node logs why and
``main`` returns 1; without ``autostart`` the configure transition fails and says why.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, State, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos_overriding_options import InvalidQosOverridesError
from sensor_msgs.msg import CameraInfo
from std_msgs.msg import Header
from std_srvs.srv import Trigger

from ..inference.checkpoint import CheckpointError, first_line
from ..inference.engine import FusionEngine
from ..streams.camera_info import CameraInfoData
from ..streams.detections import detection_feedback
from ..streams.frame_input import FrameConversionError, receive
from ..streams.image_msgs import stamp_to_ns
from ..streams.pairing import Frame, Pair
from ..streams.pipeline import FramePipeline, Status, engine_from_settings
from ..streams.settings import (
    BUILTIN_PARAMETERS,
    OUTPUT_ENCODINGS,
    PARAMETER_SPECS,
    PARAMETERS,
    RELIABILITIES,
    TASK_TOKEN,
    FusionSettings,
    ParamSpec,
    check_value,
    parse_task_weights,
    settings_from_values,
)
from ..streams.worker import LatestPairWorker
from .lifecycle import refuse_unavailable_transitions, transition
from .node_io import (
    FEEDBACK_TOPIC,
    diagnostic_array,
    free_device_memory,
    make_feedback_subscriptions,
    make_image_inputs,
    output_messages,
    output_publishers,
    resolve_topic,
)
from .parameters import changed_values, declare_parameters

__all__ = [
    "BUILTIN_PARAMETERS", "FUSED_TOPIC", "NODE_NAME", "OUTPUT_ENCODINGS", "PARAMETERS",
    "READY_SERVICE", "ready_service", "wait_for_service",
    "PARAMETER_SPECS", "RELIABILITIES", "TOPICS", "FusionNode", "FusionSettings", "ParamSpec",
    "StartupError", "check_value", "main", "parse_task_weights", "settings_from_values",
]

NODE_NAME = "cldyn_fusion"

# Topic names as the node uses them (relative: they follow the namespace; remappable).
THERMAL_TOPIC = "thermal/image"
RGB_TOPIC = "rgb/image"
FUSED_TOPIC = "fused/image"
TASK_TOPIC = "fused/{task}/image"
METRICS_TOPIC = "~/metrics"
DIAGNOSTICS_TOPIC = "/diagnostics"
SELECT_TASK_SERVICE = "~/select_task/{task}"
#: Created last at start (every model has the task ``none``): once it is in the ROS graph,
#: the node is ready. :func:`ready_service` gives its full name.
READY_SERVICE = SELECT_TASK_SERVICE.format(task="none")
#: Every topic name a launch file may remap.
TOPICS = (THERMAL_TOPIC, RGB_TOPIC, FUSED_TOPIC, METRICS_TOPIC, FEEDBACK_TOPIC, DIAGNOSTICS_TOPIC)


def ready_service(namespace: str = "", node_name: str = NODE_NAME) -> str:
    """Full name of :data:`READY_SERVICE` for a node named ``node_name`` in ``namespace``."""
    return f"{namespace.rstrip('/')}/{node_name}/{READY_SERVICE[2:]}"


def wait_for_service(name: str, timeout: float, alive: Any = None) -> bool:
    """Wait in a context of its own until the service ``name`` is in the ROS graph; False
    on timeout or as soon as ``alive()`` (e.g. the node's process is running) is false."""
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        probe = rclpy.create_node("cldyn_ready_probe", context=context)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (alive is None or alive()):
            if any(n == name for n, _ in probe.get_service_names_and_types()):
                return True
            time.sleep(0.1)
        return False
    finally:
        rclpy.try_shutdown(context=context)


class StartupError(RuntimeError):
    """The node cannot start (model, device or parameters); the message says why."""


def _load_engine(s: FusionSettings) -> FusionEngine:
    model_path = s.model_path
    if not model_path:
        from ..paths import default_model_path

        try:
            model_path = str(default_model_path())
        except FileNotFoundError as e:
            raise StartupError(f"no model_path given and the default model is missing: {e}") \
                from None
    try:
        return engine_from_settings(s, model_path)
    except CheckpointError as e:
        raise StartupError(str(e)) from None
    except (ValueError, RuntimeError) as e:  # device, precision, thermal settings
        raise StartupError(f"cannot start the fusion engine: {e}") from None


def task_selected_message(task: str, s: FusionSettings) -> str:
    """The ``select_task`` service's answer once ``task`` is the active task."""
    note = (f" (note: 'tasks' is set, outputs go to fused/<task>/image for {list(s.tasks)})"
            if s.tasks else "")
    return f"active task: {task}{note}"


# ---------------------------------------------------------------------------------- node
class FusionNode(LifecycleNode):
    """Thermal + colour fusion with task selection, metrics, diagnostics and closed loop.

    A lifecycle node: *configure* loads the model and warms up, *activate* subscribes and
    starts the fusion worker, *deactivate* stops both and frees cached GPU memory,
    *cleanup* releases the model; ``autostart`` (default) runs configure and activate in
    the constructor. Topics, parameters and services: the README's node section.

    Raises:
        StartupError: with ``autostart``, the model cannot be loaded or a parameter or QoS
            override is invalid.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        refuse_unavailable_transitions(self)
        self._lock = threading.RLock()  # parameter values, task publishers
        self._publish_lock = threading.Lock()
        self._closed = False
        self.engine: Any = None
        self.pipeline: Any = None
        self.worker: LatestPairWorker[tuple[Pair, int]] | None = None
        self._timer: Any = None
        self._outputs: dict[str, tuple[Any, Any]] = {}  # label -> (image, camera_info) pubs
        self._active_entities: list[Any] = []  # subscriptions and services while active
        self._color_info: CameraInfoData | None = None
        self.transition_error = ""
        try:
            self._values = declare_parameters(self)
        except ValueError as e:
            self._fail_start(str(e))
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._diag_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
        if self._values["autostart"]:
            for trigger in (self.trigger_configure, self.trigger_activate):
                if trigger() != TransitionCallbackReturn.SUCCESS:
                    self._fail_start(self.transition_error or "the start transitions failed")

    def _fail_start(self, reason: str) -> None:
        self._closed = True
        super().destroy_node()
        raise StartupError(reason)

    # -------------------------------------------------------------- lifecycle
    @transition
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        try:  # everything but the task names before the (slow) model load
            engine = _load_engine(FusionSettings.from_values(self._values))
            s = FusionSettings.from_values(self._values, engine.task_names)
        except (StartupError, ValueError) as e:
            self.transition_error = str(e) if isinstance(e, StartupError) \
                else f"invalid parameter: {e}"
            self.get_logger().error(f"cannot configure: {self.transition_error}")
            return TransitionCallbackReturn.FAILURE
        self.engine = engine
        log = self.get_logger()
        self.pipeline = FramePipeline(engine, s, self.get_name(), on_error=self._on_pipeline_error,
                                      on_info=log.info, on_warning=log.warning)
        self._outputs["fused"] = output_publishers(self, FUSED_TOPIC)
        for task in s.tasks:
            self._task_publisher(task)
        self._metrics_pub = self.create_publisher(DiagnosticArray, METRICS_TOPIC, 10)
        self._timer = self.create_timer(s.diagnostics_period, self._on_timer,
                                        callback_group=MutuallyExclusiveCallbackGroup())
        done, text = self.pipeline.warm_up()  # a failure was logged as a warning
        if done:
            log.info(text)
        return TransitionCallbackReturn.SUCCESS

    @transition
    def on_activate(self, state: State) -> TransitionCallbackReturn:
        s = self.settings
        self.worker = LatestPairWorker(self._process, name="cldyn-fusion-worker",
                                       on_error=self._on_worker_error)
        self.worker.start()
        topics = {"thermal": (THERMAL_TOPIC, s.thermal_transport),
                  "color": (RGB_TOPIC, s.rgb_transport)}
        try:
            self._active_entities += make_image_inputs(self, topics, self._on_image)
        except (RuntimeError, ValueError, InvalidQosOverridesError) as e:  # a bad override
            self.transition_error = f"cannot subscribe: {e}"
            self.get_logger().error(self.transition_error)
            self._stop_inputs()
            return TransitionCallbackReturn.FAILURE
        self._active_entities += make_feedback_subscriptions(
            self, self._on_feedback, self._on_detections, self._on_camera_info,
            resolve_topic(self, RGB_TOPIC))
        # Last: the services' appearance in the ROS graph tells tools the node is ready.
        for task in self.engine.task_names:
            if not TASK_TOKEN.fullmatch(task):
                self.pipeline.warn(f"task '{task}' cannot name a service: no select_task service")
                continue
            self._active_entities.append(self.create_service(
                Trigger, SELECT_TASK_SERVICE.format(task=task), partial(self._on_select_task, task)
            ))
        self.get_logger().info(f"ready: {self.pipeline.describe()}")
        return TransitionCallbackReturn.SUCCESS

    @transition
    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self._stop_inputs()
        return TransitionCallbackReturn.SUCCESS

    @transition
    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    @transition
    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        self._stop_inputs()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: State) -> TransitionCallbackReturn:
        self.get_logger().error(f"a transition failed in state '{state.label}': resetting")
        return self.on_shutdown(state)

    def _stop_inputs(self) -> None:
        """Deactivate: no more input, the worker finishes its frame, cached GPU memory freed."""
        for entity in self._active_entities:
            destroy = (self.destroy_service if hasattr(entity, "srv_type")
                       else self.destroy_subscription)
            destroy(entity)
        self._active_entities.clear()
        if self.worker is not None:
            self.worker.stop()
            self.worker = None
        free_device_memory(getattr(self.engine, "device", None))

    def _release(self) -> None:
        """Cleanup: publishers, timer, pipeline and model released."""
        if self._timer is not None:
            self.destroy_timer(self._timer)
            self._timer = None
        with self._lock:
            for pub in [p for pubs in self._outputs.values() for p in pubs]:
                self.destroy_publisher(pub)
            self._outputs.clear()
        if self.pipeline is not None:
            self.destroy_publisher(self._metrics_pub)
        device = getattr(self.engine, "device", None)
        self.engine, self.pipeline, self._color_info = None, None, None
        free_device_memory(device, release=True)

    # -------------------------------------------------------------- parameters
    @property
    def settings(self) -> FusionSettings:
        if self.pipeline is None:
            return FusionSettings.from_values(self._values)
        return self.pipeline.settings

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        if not any(p.name in PARAMETER_SPECS for p in params):  # rclpy's (use_sim_time, QoS)
            return SetParametersResult(successful=True)
        with self._lock:
            values = changed_values(self._values, params)
            pipeline = self.pipeline
            try:
                if pipeline is None:  # not configured: checked again at configure
                    FusionSettings.from_values(values)
                    self._values = values
                    return SetParametersResult(successful=True)
                old = pipeline.settings
                settings = pipeline.update_values(values)
            except ValueError as e:
                return SetParametersResult(successful=False, reason=str(e))
            self._values = values
            for task in settings.tasks:  # subscribers can connect before the first frame
                self._task_publisher(task)
        if settings.active_label != old.active_label:
            self.get_logger().info(f"output now: {settings.active_label}")
        return SetParametersResult(successful=True)

    def _on_select_task(self, task: str, request: Trigger.Request, response: Trigger.Response):
        result = self.set_parameters_atomically([
            Parameter("task", Parameter.Type.STRING, task),
            Parameter("task_weights", Parameter.Type.STRING_ARRAY, []),
        ])
        response.success = bool(result.successful)
        response.message = (task_selected_message(task, self.settings) if result.successful
                            else f"cannot select task '{task}': {result.reason}")
        return response

    # ------------------------------------------------------------------ inputs
    def _on_image(self, role: str, msg: Any) -> None:
        worker, pipeline = self.worker, self.pipeline
        if self._closed or worker is None:
            return
        arrival = time.monotonic_ns()
        pipeline.received()
        try:
            image = receive(role, msg)
        except FrameConversionError as e:
            pipeline.error("input", str(e), e.cause)
            return
        frame = Frame(stamp_to_ns(msg.header.stamp), image, msg.header.frame_id, arrival)
        for pair in pipeline.add(role, frame):
            if self._wanted():
                worker.submit((pair, time.monotonic_ns()))

    def _wanted(self) -> bool:
        """Whether any output has a subscriber (else the pair is skipped and counted)."""
        with self._lock:
            pubs = [p for pair in self._outputs.values() for p in pair]
        subscribed = any(p.get_subscription_count() for p in [*pubs, self._metrics_pub])
        admitted, changed = self.pipeline.demand.admit(subscribed)
        if changed:
            self.get_logger().info("fusion resumed: an output has a subscriber" if admitted
                                   else "fusion paused: no subscriber to any output")
        return admitted

    def _on_camera_info(self, msg: CameraInfo) -> None:
        try:
            self._color_info = CameraInfoData.from_message(msg)
        except ValueError as e:
            self.pipeline.error("input", f"colour camera_info rejected: {e}", "camera_info")

    # ------------------------------------------------------------------ fusion
    def _process(self, item: tuple[Pair, int]) -> None:
        """Worker thread: decode and fuse one pair; publish images, camera_info, metrics."""
        received, decided = item
        pipeline = self.pipeline
        out = None if self._closed or pipeline is None else pipeline.fuse_received(received)
        if out is None:
            return
        header = out.pair.color.data.header
        with self._publish_lock:
            if self._closed:
                return
            for label, image, info in output_messages(out, header, self._color_info):
                image_pub, info_pub = self._task_publisher(label) if out.settings.tasks \
                    else self._outputs["fused"]
                self._safe_publish(image_pub, image)
                if info is not None:
                    self._safe_publish(info_pub, info)
        worker = self.worker
        statuses = pipeline.finish(
            out, decided, time.monotonic_ns(), self.get_clock().now().nanoseconds,
            {"dropped": worker.dropped if worker else 0,
             "processed": worker.processed if worker else 0},
        )
        header = Header(stamp=header.stamp, frame_id=header.frame_id)
        self._safe_publish(self._metrics_pub,
                           diagnostic_array(statuses, str(self.engine.device), header))

    def _task_publisher(self, task: str) -> tuple[Any, Any]:
        with self._lock:
            pubs = self._outputs.get(f"task:{task}")
            if pubs is None:
                pubs = output_publishers(self, TASK_TOPIC.format(task=task))
                self._outputs[f"task:{task}"] = pubs
            return pubs

    # ---------------------------------------------------------------- feedback
    def _on_feedback(self, msg: DiagnosticArray) -> None:
        self.pipeline.feedback(stamp_to_ns(msg.header.stamp), [
            (st.name, [(kv.key, kv.value) for kv in st.values]) for st in msg.status])

    def _on_detections(self, msg: Any) -> None:
        self.pipeline.feedback(stamp_to_ns(msg.header.stamp), detection_feedback(msg))

    # ------------------------------------------------------------------ health
    def _on_pipeline_error(self, reason: str, report_now: bool) -> None:
        self.get_logger().error(reason, throttle_duration_sec=5.0)
        if report_now:  # at once, rate-limited; the periodic report repeats it
            self._publish_diagnostics(self.pipeline.status("ERROR", reason, {}))

    def _on_worker_error(self, item: Any, exc: BaseException) -> None:
        self.pipeline.error("fusion", f"fusion failed: {type(exc).__name__}: {first_line(exc)}")

    def _on_timer(self) -> None:
        pipeline, worker = self.pipeline, self.worker
        if not self._closed and pipeline is not None:
            self._publish_diagnostics(pipeline.health_status(
                pipeline.settings.diagnostics_period, worker.dropped if worker else 0))

    def _publish_diagnostics(self, status: Status) -> None:
        header = Header(stamp=self.get_clock().now().to_msg())
        self._safe_publish(self._diag_pub,
                           diagnostic_array([status], str(self.engine.device), header))

    def _safe_publish(self, publisher: Any, msg: Any) -> None:
        if self._closed:
            return
        try:
            publisher.publish(msg)
        except Exception:  # context shut down under us (Ctrl-C): nothing left to tell
            if not self._closed and self.context.ok():
                raise

    # --------------------------------------------------------------- shutdown
    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker (finishing the frame in progress) and the timer. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.worker is not None:
            self.worker.stop(timeout)
        if self._timer is not None:
            with contextlib.suppress(Exception):
                self._timer.cancel()

    def destroy_node(self) -> None:
        self.close()
        super().destroy_node()


def make_executor(context: Any = None) -> SingleThreadedExecutor:
    """The executor that spins the node: single-threaded.

    The callbacks only take, view and pair messages (microseconds); fusion runs in the
    worker thread. rclpy's MultiThreadedExecutor is worse here, not better: while a
    dispatched callback still waits in its thread pool, the spin thread yields it again and
    rebuilds the wait set at once instead of waiting, so under a 200 Hz flood it spins
    thousands of times a second in Python holding the interpreter lock, and the fusion
    worker (which needs that lock between torch operations) and the pool threads starve.
    """
    return SingleThreadedExecutor(context=context)


def main(args: Sequence[str] | None = None) -> int:
    """Entry point of ``fusion_node``: spin until Ctrl-C; 0 on a clean exit, 1 when the node
    cannot start (the reason is logged)."""
    node = executor = None
    # Ctrl-C: rclpy's signal handler shuts the context down, which ends spin(). It then
    # calls the Python handler it replaced; the default one would also raise
    # KeyboardInterrupt at an arbitrary point of this thread (inside rclpy's executor too,
    # leaving half-built objects that fail in __del__), so a no-op takes its place.
    signal.signal(signal.SIGINT, lambda signum, frame: None)
    try:
        rclpy.init(args=None if args is None else list(args))
        try:
            node = FusionNode()
        except StartupError as e:
            rclpy.logging.get_logger(NODE_NAME).fatal(f"cannot start: {e}")
            return 1
        executor = make_executor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        # The signal handler shuts the context down while spin() may be building its next
        # wait set, which then fails with an RCLError ("context is not valid"): that is the
        # shutdown, not a fault. Anything raised while the context is still up is.
        if rclpy.ok():
            raise
    finally:
        if node is not None:
            node.close()
        if executor is not None:
            executor.shutdown()
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
