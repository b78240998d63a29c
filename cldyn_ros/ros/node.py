"""The ROS 2 fusion node ``cldyn_fusion`` (executable ``fusion_node``).

Wiring only: ROS messages in and out of the ROS-free frame pipeline
(:class:`~cldyn_ros.streams.pipeline.FramePipeline`), which bag evaluation runs too::

    thermal/image ─┐  image_msgs.image_to_numpy   FramePipeline.add
                   ├─> (zero-copy views) ───────> (pairing, time-jump reset) ─┐
    rgb/image ─────┘                                                         v
    fused/image  <── FramePipeline.fuse / finish <── LatestPairWorker (newest pair only)
    fused/<task>/image, ~/metrics, /diagnostics

Subscription callbacks only convert and pair (never block); inference runs in one worker
thread on the newest pair, older waiting pairs are dropped and counted, so latency stays one
fusion step under overload. Parameters are declared from the settings schema
(:mod:`cldyn_ros.streams.settings`), validated by it and take effect from the next frame.
Downstream nodes close the loop through ``~/task_feedback`` (see :class:`FusionNode`).

A model that cannot be loaded at start is fatal: the node logs why and ``main`` returns 1.
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
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from std_srvs.srv import Trigger

from ..inference.checkpoint import CheckpointError
from ..streams.image_msgs import (
    COLOR_ENCODINGS,
    THERMAL_ENCODINGS,
    ImageMessageError,
    image_to_numpy,
    numpy_to_image,
    stamp_to_ns,
)
from ..streams.pairing import Frame, Pair
from ..streams.pipeline import FramePipeline, InputImage, Status, engine_from_settings
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
from .parameters import changed_values, declare_parameters

try:  # ROS 2 message_filters: optional (not installable from PyPI)
    import message_filters
except ImportError:  # pragma: no cover - depends on the installation
    message_filters = None

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
FEEDBACK_TOPIC = "~/task_feedback"
DIAGNOSTICS_TOPIC = "/diagnostics"
SELECT_TASK_SERVICE = "~/select_task/{task}"
#: Created last at start (every model has the task ``none``): once it is in the ROS graph,
#: the node is ready. :func:`ready_service` gives its full name.
READY_SERVICE = SELECT_TASK_SERVICE.format(task="none")
#: Every topic name a launch file may remap.
TOPICS = (THERMAL_TOPIC, RGB_TOPIC, FUSED_TOPIC, METRICS_TOPIC, FEEDBACK_TOPIC, DIAGNOSTICS_TOPIC)
LEVELS = {"OK": DiagnosticStatus.OK, "WARN": DiagnosticStatus.WARN,
          "ERROR": DiagnosticStatus.ERROR}
_OUT_QOS = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)


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


def _kv(key: str, value: Any) -> KeyValue:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = f"{value:.6g}"
    elif value is None:
        text = ""
    else:
        text = str(value)
    return KeyValue(key=key, value=text)


def _input_qos(reliability: str, depth: int) -> QoSProfile:
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=(
            ReliabilityPolicy.BEST_EFFORT if reliability == "best_effort"
            else ReliabilityPolicy.RELIABLE
        ),
        durability=DurabilityPolicy.VOLATILE,
    )


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _load_engine(s: FusionSettings):
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


# ---------------------------------------------------------------------------------- node
class FusionNode(Node):
    """Thermal + colour fusion with task selection, metrics, diagnostics and closed loop.

    Topics (relative names follow the namespace and can be remapped):

    - in: ``thermal/image`` (mono8, mono16, 16UC1, 8UC1), ``rgb/image`` (rgb8, bgr8)
    - out: ``fused/image`` or ``fused/<task>/image`` per task when ``tasks`` is set
      (header of the colour frame); ``~/metrics`` and ``/diagnostics``
      (``diagnostic_msgs/DiagnosticArray``)
    - feedback in: ``~/task_feedback``: ``DiagnosticArray`` whose header stamp is the stamp of
      the fused frame scored; statuses named after a task with a ``score`` value (higher is
      better), fed to :meth:`FramePipeline.feedback`.
    - services ``~/select_task/<task>`` (std_srvs/Trigger) for every task and ``none``.

    Raises:
        StartupError: the model cannot be loaded or a parameter is invalid.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self._closed = False
        try:
            self._setup()
        except BaseException:
            self._closed = True
            super().destroy_node()
            raise

    def _setup(self) -> None:
        self._lock = threading.RLock()  # parameter values, task publishers
        self._publish_lock = threading.Lock()
        try:
            self._values = declare_parameters(self)
        except ValueError as e:
            raise StartupError(str(e)) from None
        try:  # everything but the task names before the (slow) model load
            self.engine = _load_engine(FusionSettings.from_values(self._values))
        except ValueError as e:
            raise StartupError(f"invalid parameter: {e}") from None
        try:
            s = FusionSettings.from_values(self._values, self.engine.task_names)
        except ValueError as e:
            raise StartupError(f"invalid parameter: {e}") from None
        self.pipeline = FramePipeline(
            self.engine, s, self.get_name(), on_error=self._on_pipeline_error,
            on_info=self.get_logger().info,
        )
        groups = {k: MutuallyExclusiveCallbackGroup()  # each input stays in order
                  for k in ("thermal", "color", "feedback", "timer")}
        self._fused_pub = self.create_publisher(Image, FUSED_TOPIC, _OUT_QOS)
        self._task_pubs: dict[str, Any] = {}
        for task in s.tasks:
            self._task_publisher(task)
        self._metrics_pub = self.create_publisher(DiagnosticArray, METRICS_TOPIC, 10)
        self._diag_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
        self.worker: LatestPairWorker[tuple[Pair, int]] = LatestPairWorker(
            self._process, name="cldyn-fusion-worker", on_error=self._on_worker_error
        )
        self._make_inputs(s, groups)
        self.create_subscription(DiagnosticArray, FEEDBACK_TOPIC, self._on_feedback, 10,
                                 callback_group=groups["feedback"])
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._timer = self.create_timer(s.diagnostics_period, self._on_timer,
                                        callback_group=groups["timer"])
        self._warm_up(s)
        self.worker.start()
        # Last: the services' appearance in the ROS graph tells tools the node is ready.
        self._select_services = []
        for task in self.engine.task_names:
            if not TASK_TOKEN.fullmatch(task):
                self._warn(f"task '{task}' cannot name a service: no select_task service")
                continue
            self._select_services.append(self.create_service(
                Trigger, SELECT_TASK_SERVICE.format(task=task), partial(self._on_select_task, task)
            ))
        self.get_logger().info(
            f"ready: model {self.engine.loaded.path} on {self.engine.device} "
            f"(precision {self.engine.precision}, internal_scale "
            f"{self.engine.internal_scale:g}, threads {s.threads or 'default'}); "
            f"tasks {self.engine.task_names}; "
            f"output {s.active_label}"
        )

    # ------------------------------------------------------------------ set-up
    def _warm_up(self, s: FusionSettings) -> None:
        """Fuse one blank frame of the configured warm-up size with the start requests."""
        width, height = s.warmup_width, s.warmup_height
        if not (width and height):
            return
        started = time.monotonic()
        try:
            self.engine.warm_up(height, width, self.pipeline.requests(s, {}))
        except RuntimeError as e:  # out of memory at this size: serve anyway, say so
            self._warn(f"warm-up at {width}x{height} failed: {_first_line(e)}")
            return
        self.get_logger().info(
            f"warmed up at {width}x{height} in {time.monotonic() - started:.2f} s"
        )

    def _make_inputs(self, s: FusionSettings, groups: dict[str, Any]) -> None:
        qos = _input_qos(s.qos_reliability, s.qos_depth)
        self._synchronizer = None
        if s.use_message_filters and message_filters is None:
            self._warn("use_message_filters is true but the ROS 2 message_filters package is "
                       "not installed: using the built-in approximate-time pairer")
        elif s.use_message_filters:  # pragma: no cover - needs message_filters (a ROS distro)
            subs = [message_filters.Subscriber(self, Image, topic, qos_profile=qos,
                                               callback_group=groups[role])
                    for topic, role in ((THERMAL_TOPIC, "thermal"), (RGB_TOPIC, "color"))]
            self._synchronizer = message_filters.ApproximateTimeSynchronizer(
                subs, s.queue_size, s.slop)
            self._synchronizer.registerCallback(self._on_synchronized)
            self._mf_subscribers = subs
            return
        for topic, role in ((THERMAL_TOPIC, "thermal"), (RGB_TOPIC, "color")):
            self.create_subscription(Image, topic, partial(self._on_image, role), qos,
                                     callback_group=groups[role])

    def _warn(self, text: str) -> None:
        self.get_logger().warning(text)
        self.pipeline.warnings.append(text)

    # -------------------------------------------------------------- parameters
    @property
    def settings(self) -> FusionSettings:
        return self.pipeline.settings

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        with self._lock:
            values = changed_values(self._values, params)
            try:
                settings = FusionSettings.from_values(values, self.engine.task_names)
            except ValueError as e:
                self.pipeline.rejections.add("parameters")
                return SetParametersResult(successful=False, reason=str(e))
            old = self.pipeline.settings
            if self._synchronizer is not None and (
                (settings.slop, settings.queue_size) != (old.slop, old.queue_size)
            ):
                self.pipeline.rejections.add("parameters")
                return SetParametersResult(
                    successful=False,
                    reason="slop and queue_size are fixed while use_message_filters is on",
                )
            self._values = values
            self.pipeline.update(settings)
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
        if result.successful:
            response.message = f"active task: {task}"
            if self.settings.tasks:
                response.message += (
                    f" (note: 'tasks' is set, outputs go to fused/<task>/image for "
                    f"{list(self.settings.tasks)})"
                )
        else:
            response.message = f"cannot select task '{task}': {result.reason}"
        return response

    # ------------------------------------------------------------------ inputs
    def _convert(self, role: str, msg: Image) -> InputImage | None:
        allowed = THERMAL_ENCODINGS if role == "thermal" else COLOR_ENCODINGS
        name = "thermal" if role == "thermal" else "colour"
        if msg.encoding not in allowed:
            self.pipeline.error("input", f"{name} image rejected: encoding '{msg.encoding}' "
                                f"is not one of {list(allowed)}", f"{name}_encoding")
            return None
        try:
            return InputImage(image_to_numpy(msg), msg.encoding, msg.header)
        except ImageMessageError as e:
            self.pipeline.error("input", f"{name} image rejected: {e}", f"{name}_{e.kind}")
            return None

    def _on_image(self, role: str, msg: Image) -> None:
        if self._closed:
            return
        arrival = time.monotonic_ns()
        self.pipeline.received()
        image = self._convert(role, msg)
        if image is None:
            return
        frame = Frame(stamp_to_ns(msg.header.stamp), image, msg.header.frame_id, arrival)
        for pair in self.pipeline.add(role, frame):
            self.worker.submit((pair, time.monotonic_ns()))

    def _on_synchronized(self, thermal_msg: Image, color_msg: Image) -> None:  # pragma: no cover
        """message_filters callback (only where it is installed: no test runs it here)."""
        if self._closed:
            return
        arrival = time.monotonic_ns()
        self.pipeline.received(2)
        thermal, color = self._convert("thermal", thermal_msg), self._convert("color", color_msg)
        if thermal is None or color is None:
            return
        t_ns, c_ns = stamp_to_ns(thermal_msg.header.stamp), stamp_to_ns(color_msg.header.stamp)
        pair = Pair(Frame(c_ns, color, color_msg.header.frame_id, arrival),
                    Frame(t_ns, thermal, thermal_msg.header.frame_id, arrival), c_ns - t_ns)
        self.worker.submit((pair, arrival))

    # ------------------------------------------------------------------ fusion
    def _process(self, item: tuple[Pair, int]) -> None:
        """Worker thread: fuse one pair and publish images, metrics and health."""
        pair, decided = item
        if self._closed:
            return
        out = self.pipeline.fuse(pair)
        if out is None:
            return
        s, header = out.settings, pair.color.data.header
        with self._publish_lock:
            if self._closed:
                return
            for label, img in out.images.items():
                msg = numpy_to_image(img, s.output_encoding, Image(), header=header)
                publisher = self._fused_pub if not s.tasks else self._task_publisher(label)
                self._safe_publish(publisher, msg)
        done = time.monotonic_ns()
        statuses = self.pipeline.finish(
            out, decided, done, self.get_clock().now().nanoseconds,
            {"dropped": self.worker.dropped, "processed": self.worker.processed},
        )
        msg = DiagnosticArray(header=Header(stamp=header.stamp, frame_id=header.frame_id),
                              status=[self._status_msg(st) for st in statuses])
        self._safe_publish(self._metrics_pub, msg)

    def _task_publisher(self, task: str):
        with self._lock:
            pub = self._task_pubs.get(task)
            if pub is None:
                pub = self.create_publisher(Image, TASK_TOPIC.format(task=task), _OUT_QOS)
                self._task_pubs[task] = pub
            return pub

    def pairing_stats(self) -> dict[str, int]:
        """Cumulative pairing counters (over pairers replaced by parameter changes)."""
        return self.pipeline.pairing_stats()

    # ---------------------------------------------------------------- feedback
    def _on_feedback(self, msg: DiagnosticArray) -> None:
        self.pipeline.feedback(stamp_to_ns(msg.header.stamp), [
            (st.name, [(kv.key, kv.value) for kv in st.values]) for st in msg.status])

    # ------------------------------------------------------------------ health
    def _on_pipeline_error(self, reason: str, report_now: bool) -> None:
        self.get_logger().error(reason, throttle_duration_sec=5.0)
        if report_now:  # at once, rate-limited; the periodic report repeats it
            self._publish_diagnostics(self.pipeline.status("ERROR", reason, {}))

    def _on_worker_error(self, item: Any, exc: BaseException) -> None:
        self.pipeline.error("fusion", f"fusion failed: {type(exc).__name__}: {_first_line(exc)}")

    def _status_msg(self, st: Status) -> DiagnosticStatus:
        return DiagnosticStatus(level=LEVELS[st.level], name=st.name, message=st.message,
                                hardware_id=str(self.engine.device),
                                values=[_kv(k, v) for k, v in st.values])

    def _on_timer(self) -> None:
        if self._closed:
            return
        self._publish_diagnostics(self.pipeline.health_status(
            self.settings.diagnostics_period, self.worker.dropped))

    def _publish_diagnostics(self, status: Status) -> None:
        msg = DiagnosticArray(status=[self._status_msg(status)])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._safe_publish(self._diag_pub, msg)

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
        if hasattr(self, "worker"):  # None before the set-up made it
            self.worker.stop(timeout)
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
