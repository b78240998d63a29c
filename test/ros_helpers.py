"""Helpers for the fusion node tests: a small checkpoint, an rclpy context with a spinning
executor, and a harness node that plays the cameras and records what the node publishes.

Every test gets its own rclpy Context (so rclpy.shutdown in teardown is per test), spun by
the node's kind of executor (make_executor) in a background thread that teardown joins.
Import from test modules as ``from ros_helpers import ...`` (test/ is on sys.path, see
helpers.py).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter, parameter_value_to_python
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import Image

from cldyn_ros.inference.checkpoint import save_checkpoint
from cldyn_ros.streams.image_msgs import numpy_to_image, stamp_to_ns

TASKS = ("detection", "segmentation")
# A small RSC: about 20 ms per 64x80 frame on one loaded CPU core.
SMALL_CONFIG = dict(task_dim=32, embed_dim=16, bank_size=4, basis_dim=32, kernel_hidden=8,
                    branches=2)
H, W = 64, 80
NS = 1_000_000_000
NODE = "/cldyn_fusion"


def write_checkpoint(path: Path, tasks: tuple[str, ...] = TASKS, seed: int = 0) -> Path:
    """A small CLDyN checkpoint whose tasks visibly change the fused image."""
    from helpers import activate_rsc, make_model, task_vectors

    model = make_model(seed, **SMALL_CONFIG)
    activate_rsc(model, seed, std=2.0)
    vectors = task_vectors(tasks, model.config.task_dim, seed) if tasks else {}
    return save_checkpoint(path, model, vectors, {"trained_on": "node tests"})


def sample_frames(h: int = H, w: int = W, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A uint8 thermal ``h x w`` and an RGB ``h x w x 3`` frame with structure and texture."""
    from helpers import random_pair

    return random_pair(h, w, seed)




def make_image(arr: np.ndarray, encoding: str, stamp_ns: int, frame_id: str = "cam") -> Image:
    msg = numpy_to_image(arr, encoding, Image())
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), NS)
    msg.header.frame_id = frame_id
    return msg


def image_array(msg: Image) -> np.ndarray:
    """Pixels of an rgb8/bgr8 message as an ``H x W x 3`` copy."""
    data = np.frombuffer(bytes(msg.data), np.uint8)
    return data.reshape(msg.height, msg.step)[:, : msg.width * 3].reshape(
        msg.height, msg.width, 3
    ).copy()


def status_values(status: DiagnosticStatus) -> dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


def find_status(msg: DiagnosticArray, name: str) -> DiagnosticStatus | None:
    for status in msg.status:
        if status.name == name:
            return status
    return None


class Harness(Node):
    """Plays both cameras and records fused images, ~/metrics and /diagnostics."""

    def __init__(self, context: Context, outputs: tuple[str, ...] = ("fused/image",),
                 sensor_qos: bool = False, output_depth: int = 100) -> None:
        super().__init__("test_harness", context=context)
        qos = QoSProfile(depth=50, reliability=(
            ReliabilityPolicy.BEST_EFFORT if sensor_qos else ReliabilityPolicy.RELIABLE))
        self.thermal_pub = self.create_publisher(Image, "thermal/image", qos)
        self.rgb_pub = self.create_publisher(Image, "rgb/image", qos)
        self.cond = threading.Condition()
        self.fused: dict[str, list[tuple[float, Image]]] = {topic: [] for topic in outputs}
        self.metrics: list[DiagnosticArray] = []
        self.diagnostics: list[DiagnosticArray] = []
        out_qos = QoSProfile(depth=output_depth, reliability=ReliabilityPolicy.RELIABLE)
        for topic in outputs:
            self.create_subscription(Image, topic, self._recorder(self.fused[topic]), out_qos)
        self.create_subscription(DiagnosticArray, f"{NODE}/metrics",
                                 self._recorder(self.metrics, timed=False), 100)
        self.create_subscription(DiagnosticArray, "/diagnostics",
                                 self._recorder(self.diagnostics, timed=False), 100)
        self._stamp = 1_000 * NS

    def _recorder(self, store: list, timed: bool = True) -> Callable[[Any], None]:
        def record(msg: Any) -> None:
            with self.cond:
                store.append((time.monotonic(), msg) if timed else msg)
                self.cond.notify_all()

        return record

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 20.0) -> Any:
        """Wait until ``predicate()`` (called under the lock) is truthy; return its value."""
        with self.cond:
            value = self.cond.wait_for(predicate, timeout)
        assert value, f"timed out after {timeout} s waiting for {predicate}"
        return value

    def wait_connected(self, timeout: float = 20.0) -> None:
        """Wait until the node subscribes to both inputs and publishes what we record."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (self.thermal_pub.get_subscription_count() and self.rgb_pub.get_subscription_count()
                    and all(self.count_publishers(t) for t in self.fused)
                    and self.count_publishers(f"{NODE}/metrics")):
                return
            time.sleep(0.05)
        raise AssertionError("the fusion node did not connect")

    def next_stamp(self, step_ns: int = NS // 10) -> int:
        self._stamp += step_ns
        return self._stamp

    def send_pair(self, thermal: np.ndarray, color: np.ndarray, stamp_ns: int | None = None,
                  thermal_encoding: str = "mono8", color_encoding: str = "rgb8",
                  frame_id: str = "cam") -> int:
        stamp = self.next_stamp() if stamp_ns is None else stamp_ns
        self.thermal_pub.publish(make_image(thermal, thermal_encoding, stamp, "thermal"))
        self.rgb_pub.publish(make_image(color, color_encoding, stamp, frame_id))
        return stamp

    def fused_with_stamp(self, stamp_ns: int, topic: str = "fused/image") -> Image | None:
        for _, msg in self.fused[topic]:
            if stamp_to_ns(msg.header.stamp) == stamp_ns:
                return msg
        return None

    def metrics_with_stamp(self, stamp_ns: int) -> DiagnosticArray | None:
        for msg in self.metrics:
            if stamp_to_ns(msg.header.stamp) == stamp_ns:
                return msg
        return None

    def fuse(self, thermal: np.ndarray, color: np.ndarray, topic: str = "fused/image",
             attempts: int = 5, timeout: float = 10.0, **kwargs: Any) -> Image:
        """Send a pair and return its fused image, resending with a new stamp if lost."""
        for _ in range(attempts):
            stamp = self.send_pair(thermal, color, **kwargs)
            with self.cond:
                self.cond.wait_for(lambda s=stamp: self.fused_with_stamp(s, topic), timeout)
                msg = self.fused_with_stamp(stamp, topic)
            if msg is not None:
                return msg
        raise AssertionError(f"no fused image on {topic} after {attempts} attempts")

    def diagnostics_of_node(self) -> list[DiagnosticStatus]:
        return [s for m in self.diagnostics for s in m.status if s.name == "cldyn_fusion: fusion"]

    def call(self, srv_type: Any, name: str, request: Any, timeout: float = 20.0) -> Any:
        client = self.create_client(srv_type, name)
        try:
            assert client.wait_for_service(timeout_sec=timeout), f"no service {name}"
            future = client.call_async(request)
            self.wait_future(future, timeout)
            return future.result()
        finally:
            self.destroy_client(client)

    def set_params(self, params: dict[str, Any], node: str = NODE, timeout: float = 20.0):
        """Set parameters of another node through its parameter service (as ros2 param set
        does); returns the list of SetParametersResult."""
        from rcl_interfaces.srv import SetParameters

        request = SetParameters.Request(
            parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in params.items()]
        )
        return self.call(SetParameters, f"{node}/set_parameters", request, timeout).results

    def get_params(self, names: list[str], node: str = NODE, timeout: float = 20.0) -> list:
        from rcl_interfaces.srv import GetParameters

        response = self.call(GetParameters, f"{node}/get_parameters",
                             GetParameters.Request(names=names), timeout)
        return [parameter_value_to_python(v) for v in response.values]

    @staticmethod
    def wait_future(future: Any, timeout: float) -> None:
        event = threading.Event()
        future.add_done_callback(lambda _: event.set())
        assert event.wait(timeout), "service call timed out"


class _Spinner:
    """An executor spinning in a thread of its own until stopped."""

    def __init__(self, executor: Any, name: str, context: Context) -> None:
        self.executor = executor
        self.context = context
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, name=name, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        # spin_once in a loop, so teardown can stop it before the executor is shut down
        # (shutting it down under a running spin() destroys objects spin() still waits on).
        while not self._stop.is_set() and self.context.ok():
            self.executor.spin_once(timeout_sec=0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.executor.shutdown(timeout_sec=10)
        assert not self._thread.is_alive(), "executor thread did not stop"


class RosTestEnv:
    """A fresh rclpy context, executors spinning in threads, and cleanup of every node.

    The nodes under test share one executor of the kind the node's main() uses
    (:func:`cldyn_ros.ros.node.make_executor`); each test harness gets an executor and thread
    of its own, so a flood of input callbacks to the node under test cannot delay the
    harness's receive callbacks (and with them the measured latencies).
    """

    def __init__(self) -> None:
        self.context = Context()
        rclpy.init(context=self.context, signal_handler_options=SignalHandlerOptions.NO)
        from cldyn_ros.ros.node import make_executor

        self.executor = make_executor(self.context)
        self._spinners = [_Spinner(self.executor, "test-executor", self.context)]
        self.nodes: list[Node] = []

    def add(self, node: Node, executor: Any = None) -> Node:
        self.nodes.append(node)
        (executor or self.executor).add_node(node)
        return node

    def fusion_node(self, model_path: Path, **params: Any):
        from cldyn_ros.ros.node import FusionNode

        params.setdefault("threads", 1)
        overrides = [Parameter("model_path", value=str(model_path))]
        overrides += [Parameter(k, value=v) for k, v in params.items()]
        return self.add(FusionNode(context=self.context, parameter_overrides=overrides))

    def harness(self, **kwargs: Any) -> Harness:
        executor = SingleThreadedExecutor(context=self.context)
        self._spinners.append(_Spinner(executor, "test-harness-executor", self.context))
        return self.add(Harness(self.context, **kwargs), executor)

    def close(self) -> None:
        for node in self.nodes:
            close = getattr(node, "close", None)
            if close is not None:
                close()
        for spinner in self._spinners:
            spinner.stop()
        for node in self.nodes:
            node.destroy_node()
        rclpy.try_shutdown(context=self.context)


@contextlib.contextmanager
def ros_env() -> Iterator[RosTestEnv]:
    env = RosTestEnv()
    try:
        yield env
    finally:
        env.close()
        leaked = [t.name for t in threading.enumerate() if t.name.startswith("cldyn-fusion")]
        assert not leaked, f"threads left running: {leaked}"


# Fixtures ``model_path`` and ``ros``: import model_path_fixture and ros_fixture into a
# test module (an unused import for linters: silence F401 there).
@pytest.fixture(scope="session", name="model_path")
def model_path_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small checkpoint with the tasks detection and segmentation."""
    return write_checkpoint(tmp_path_factory.mktemp("node_model") / "small.pt")


@pytest.fixture(name="ros")
def ros_fixture() -> Iterator[RosTestEnv]:
    """A fresh rclpy context with a spinning executor; every node is torn down after."""
    with ros_env() as env:
        yield env
