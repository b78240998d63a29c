"""Bad input, fusion failures and overload: the node reports, keeps serving, stays bounded."""

from __future__ import annotations

import array
import os
import statistics
import threading
import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticStatus
from ros_helpers import (  # noqa: F401  (fixtures)
    NS,
    find_status,
    image_array,
    make_image,
    model_path_fixture,
    ros_fixture,
    sample_frames,
    status_values,
)
from sensor_msgs.msg import Image

from cldyn_ros.image_msgs import stamp_to_ns

pytestmark = [pytest.mark.ros, pytest.mark.timeout(120)]

ERROR = DiagnosticStatus.ERROR


def _raw(height: int, width: int, encoding: str, step: int, data: bytes, stamp: int) -> Image:
    msg = Image(height=height, width=width, encoding=encoding, step=step)
    msg.data = array.array("B", data)
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, NS)
    return msg


def _expect_error(h, action, *words: str, timeout: float = 10.0) -> DiagnosticStatus:
    """Run ``action``; wait for an ERROR on /diagnostics whose message has all ``words``."""
    with h.cond:
        seen = len(h.diagnostics)

    def match():
        for msg in h.diagnostics[seen:]:
            for status in msg.status:
                text = status.message.lower()
                if status.level == ERROR and all(w.lower() in text for w in words):
                    return status
        return None

    action()
    return h.wait_for(match, timeout)


def test_bad_input_is_reported_and_the_next_good_pair_fused(ros, model_path):
    node = ros.fusion_node(model_path, diagnostics_period=0.3, metrics_every_n=1)
    h = ros.harness()
    h.wait_connected()
    thermal, colour = sample_frames()
    h.fuse(thermal, colour)
    rows, cols = thermal.shape

    def send_thermal(msg_factory):
        def action():
            stamp = h.next_stamp()
            h.thermal_pub.publish(msg_factory(stamp))
            h.rgb_pub.publish(make_image(colour, "rgb8", stamp))
        return action

    cases = [
        # wrong encoding for the stream, an unsupported one, zero size, short data
        (send_thermal(lambda s: make_image(colour, "rgb8", s)), ("thermal", "encoding", "rgb8")),
        (send_thermal(lambda s: _raw(rows, cols, "32FC1", cols * 4, bytes(rows * cols * 4), s)),
         ("thermal", "32FC1")),
        (send_thermal(lambda s: _raw(0, 0, "mono8", 0, b"", s)), ("thermal", "zero size")),
        (send_thermal(lambda s: _raw(rows, cols, "mono8", cols, bytes(100), s)),
         ("thermal", "shorter")),
        (lambda: h.rgb_pub.publish(_raw(rows, cols, "rgb8", cols * 3, bytes(50), h.next_stamp())),
         ("colour", "shorter")),
    ]
    for action, words in cases:
        status = _expect_error(h, action, *words)
        assert status.name == "cldyn_fusion: fusion"
        fused = h.fuse(thermal, colour)  # the node keeps fusing the next good pair
        assert (fused.height, fused.width) == colour.shape[:2]

    # Constant frames: fused (finite, NaN-free metrics) but reported.
    flat_t = np.zeros_like(thermal)
    flat_c = np.full_like(colour, 128)
    _expect_error(h, lambda: h.send_pair(flat_t, flat_c), "constant")
    stamp = h.send_pair(flat_t, flat_c)
    h.wait_for(lambda: h.fused_with_stamp(stamp) and h.metrics_with_stamp(stamp))
    out = image_array(h.fused_with_stamp(stamp))
    assert out.shape == colour.shape
    values = status_values(find_status(h.metrics_with_stamp(stamp), "task: none"))
    for name in ("EN", "SD", "SF", "AG", "MI", "Qabf"):
        assert np.isfinite(float(values[name])), (name, values[name])
    assert node._input_errors >= 6
    h.fuse(thermal, colour)

    # The periodic report recovers to OK once only good frames arrive.
    with h.cond:
        seen = len(h.diagnostics)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        h.fuse(thermal, colour)
        with h.cond:
            levels = [s.level for s in h.diagnostics_of_node()[seen:]]
        if DiagnosticStatus.OK in levels[1:]:
            break
        time.sleep(0.1)
    assert DiagnosticStatus.OK in levels[1:], levels


def test_fusion_failure_is_reported_and_the_node_keeps_serving(ros, model_path):
    node = ros.fusion_node(model_path, diagnostics_period=0.3)
    h = ros.harness()
    h.wait_connected()
    thermal, colour = sample_frames()
    h.fuse(thermal, colour)
    real_fuse = node.engine.fuse
    calls = []

    def failing_fuse(*args, **kwargs):
        if not calls:
            calls.append(1)
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_fuse(*args, **kwargs)

    node.engine.fuse = failing_fuse
    status = _expect_error(h, lambda: h.send_pair(thermal, colour), "fusion failed", "memory")
    assert "CUDA out of memory" in status.message
    h.fuse(thermal, colour)
    assert node._fusion_errors == 1 and node.worker.errors == 0


# Real-time over real DDS on a shared 2-core machine: a scheduling hiccup of the test
# process can spoil one run; a real fault fails all three.
@pytest.mark.skipif(
    os.environ.get("CI") == "true",
    reason="known defect: the in-process 200 Hz flood competes with the node for the "
    "interpreter lock, so the latency comparison is unreliable in a full CI run; run it "
    "locally until the flood moves to a separate publisher process",
)
@pytest.mark.flaky(reruns=4)
def test_overload_drops_frames_and_latency_does_not_grow(ros, model_path):
    """Both streams at 200 Hz for 4 s: pairs the worker cannot take are dropped and counted,
    the pairing queues stay within queue_size, and the latency of published frames in the
    last second is no worse than in the first (it would grow by seconds with a queue)."""
    queue_size = 10
    node = ros.fusion_node(model_path, task="detection", queue_size=queue_size,
                           metrics_every_n=0)
    # A shallow output queue: when this busy test process reads the fused images late, the
    # backlog must not be taken for latency of the node (a node-side queue would still show
    # as growing stamp-to-receive latency).
    h = ros.harness(sensor_qos=True, output_depth=2)
    h.wait_connected()
    thermal, colour = sample_frames()
    h.fuse(thermal, colour)

    # 5 s of flood: the first second settles the start-up transients (first frames through a
    # cold worker), the second is the early window, the last second the late one.
    rate, seconds = 200.0, 5.0
    sent: dict[int, float] = {}
    pending_max = [0, 0]
    stop = threading.Event()

    def watch_queues():
        while not stop.is_set():
            pending_max[0] = max(pending_max[0], node._pairer.pending_color)
            pending_max[1] = max(pending_max[1], node._pairer.pending_thermal)
            time.sleep(0.005)

    watcher = threading.Thread(target=watch_queues)
    watcher.start()
    rss = []
    start = time.monotonic()
    n = 0
    # Two messages reused with new stamps: building images at 200 Hz in this process would
    # compete with the node's threads for the interpreter lock and distort the latencies.
    t_msg = make_image(thermal, "mono8", 0, "thermal")
    c_msg = make_image(colour, "rgb8", 0, "cam")
    try:
        while (now := time.monotonic()) - start < seconds:
            stamp = h.next_stamp(int(NS / rate))
            for msg in (t_msg, c_msg):
                msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, NS)
            sent[stamp] = time.monotonic()
            h.thermal_pub.publish(t_msg)
            h.rgb_pub.publish(c_msg)
            n += 1
            if n % int(rate) == 0:
                rss.append(_rss_mb())
            delay = start + n / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        elapsed = now - start
    finally:
        stop.set()
        watcher.join()
    assert node.worker.wait_idle(20)
    time.sleep(0.3)

    with h.cond:
        received = [(t, stamp_to_ns(m.header.stamp)) for t, m in h.fused["fused/image"]]
    latencies = [(sent[s], t - sent[s]) for t, s in received if s in sent]
    achieved = n / elapsed
    assert achieved > 80, f"the test could only send {achieved:.0f} pairs/s"
    first = [lat for t0, lat in latencies if 1.0 <= t0 - start < 2.0]
    last = [lat for t0, lat in latencies if t0 - start > seconds - 1.0]
    assert len(first) >= 3 and len(last) >= 3, (len(first), len(last))
    early, late = statistics.median(first), statistics.median(last)
    processing = statistics.median(np.diff([t for t, _ in received[-len(last):]]))
    # Growth would be ~seconds (a backlog of ~170 pairs per second of overload); bounded
    # latency stays within a few fusion steps of the early value.
    assert late <= 2 * early + 4 * processing, (early, late, processing)

    # Drops are counted: in the worker (older pairs replaced) and/or by DDS (depth 5).
    worker = node.worker
    assert worker.dropped > 0
    assert worker.submitted == worker.processed + worker.dropped
    stats = node.pairing_stats()
    assert stats["pairs"] == worker.submitted  # every pair goes to the worker
    # Bounded queues and memory.
    assert pending_max[0] <= queue_size and pending_max[1] <= queue_size, pending_max
    assert max(rss) - min(rss) < 100, rss
    print(f"\noverload: sent {achieved:.0f} pairs/s for {elapsed:.1f} s; node received "
          f"{stats['color_received']} colour frames, paired {stats['pairs']}, fused "
          f"{len(received)}, worker dropped {worker.dropped}; latency median first second "
          f"{early * 1e3:.0f} ms, last second {late * 1e3:.0f} ms; RSS {rss[0]:.0f}-"
          f"{max(rss):.0f} MB")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
