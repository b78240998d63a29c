"""The benchmarks' receiving side: the fused images and the node's per-frame metrics.

:class:`FusedReceiver` runs its own rclpy context and node, spun on a thread; subclasses
say what they keep of each fused image (receive time, stamp) and each per-frame
``~/metrics`` message. Used by ``cldyn bench node`` (which also publishes from it) and by
its ``--load`` modes (where a third process publishes).
"""

from __future__ import annotations

import threading
import time
from typing import Any

NAMESPACE = "/cldyn_bench"
NODE_NAME = "cldyn_fusion"
_NS = 1_000_000_000


class NodeBenchError(RuntimeError):
    """The node did not start, connect or answer."""


def stamp_ns(msg: Any) -> int:
    """A message's header stamp in nanoseconds."""
    return int(msg.header.stamp.sec) * _NS + int(msg.header.stamp.nanosec)


class FusedReceiver:
    """Its own rclpy context and node in :data:`NAMESPACE`: ``fused/image`` and the node's
    ``~/metrics``, spun by a single-threaded executor on a daemon thread. The hooks
    :meth:`on_fused` and :meth:`on_frame_metrics` run on that thread with ``self.lock``
    held; read what they store under the same lock."""

    def __init__(self, node_name: str, metrics_depth: int) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(node_name, namespace=NAMESPACE, context=self.context)
        self.lock = threading.Lock()
        self.fused_topic = f"{NAMESPACE}/fused/image"
        self.node.create_subscription(
            Image, self.fused_topic, self._fused_message,
            QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
        self.node.create_subscription(DiagnosticArray, f"{NAMESPACE}/{NODE_NAME}/metrics",
                                      self._metrics_message, metrics_depth)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._spinner = threading.Thread(target=self._spin, name=f"{node_name}-spin",
                                         daemon=True)

    def start(self) -> None:
        """Start spinning (after the subclass has created its own entities and state)."""
        self._spinner.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # context shut down
            pass

    def on_fused(self, stamp: int, received_ns: int) -> None:
        """One fused image: its stamp and the wall-clock receive time (ns)."""

    def on_frame_metrics(self, stamp: int, values: dict[str, str]) -> None:
        """The key/values of the ``": frame"`` status of one ``~/metrics`` message."""

    def _fused_message(self, msg: Any) -> None:
        now = time.time_ns()
        with self.lock:
            self.on_fused(stamp_ns(msg), now)

    def _metrics_message(self, msg: Any) -> None:
        frame = next((s for s in msg.status if s.name.endswith(": frame")), None)
        if frame is not None:
            values = {kv.key: kv.value for kv in frame.values}
            with self.lock:
                self.on_frame_metrics(stamp_ns(msg), values)

    def connected(self) -> bool:
        """Whether the node publishes ``fused/image`` to this receiver."""
        return bool(self.node.count_publishers(self.fused_topic))

    def wait_connected(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.connected():
                time.sleep(0.3)  # discovery of the other direction settles
                return
            time.sleep(0.05)
        raise NodeBenchError(f"the node did not connect to this receiver ({self.topics()}) "
                             f"within {timeout:g} s")

    def topics(self) -> str:
        """The topics :meth:`connected` waits for (for the error message)."""
        return self.fused_topic

    def close(self) -> None:
        try:
            self.executor.shutdown(timeout_sec=2.0)
            self.node.destroy_node()
        finally:
            if self.context.ok():
                self.context.shutdown()
        self._spinner.join(3)
