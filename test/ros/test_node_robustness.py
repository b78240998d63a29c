"""Bad input, fusion failures and overload: the node reports, keeps serving, stays bounded."""

from __future__ import annotations

import array
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

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

from cldyn_ros.streams.image_convert import color_from_array
from cldyn_ros.streams.image_msgs import stamp_to_ns

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
        # an encoding no stream takes, one the colour stream does not take, zero size, short
        # data
        (send_thermal(lambda s: _raw(rows, cols, "nv12", cols, bytes(rows * cols * 3 // 2), s)),
         ("thermal", "encoding", "nv12")),
        (lambda: h.rgb_pub.publish(make_image(thermal.astype(np.uint16), "16UC1",
                                              h.next_stamp())),
         ("colour", "encoding", "16UC1")),
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
    assert node.pipeline.input_errors >= 6
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


def _colour_variants(colour: np.ndarray) -> dict[str, np.ndarray]:
    """The colour frame in every driver encoding (what a camera in that mode sends)."""
    import cv2

    bgr = np.ascontiguousarray(colour[:, :, ::-1])
    opaque = np.full(colour.shape[:2] + (1,), 255, np.uint8)
    bayer = np.zeros(colour.shape[:2], np.uint8)  # RGGB mosaic of the colour frame
    bayer[0::2, 0::2], bayer[1::2, 1::2] = colour[0::2, 0::2, 0], colour[1::2, 1::2, 2]
    bayer[0::2, 1::2], bayer[1::2, 0::2] = colour[0::2, 1::2, 1], colour[1::2, 0::2, 1]
    yuyv = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_YUYV) if hasattr(cv2, "COLOR_BGR2YUV_YUYV") \
        else None
    variants = {
        "bgr8": bgr,
        "rgba8": np.concatenate([colour, opaque], axis=2),
        "bgra8": np.concatenate([bgr, opaque], axis=2),
        "rgb16": colour.astype(np.uint16) * 257,
        "bgr16": bgr.astype(np.uint16) * 257,
        "mono8": np.ascontiguousarray(colour[:, :, 1]),
        "bayer_rggb8": bayer,
    }
    if yuyv is not None:
        variants["yuv422_yuy2"] = yuyv
        # Y0 U Y1 V -> U Y0 V Y1 (ROS yuv422 is UYVY)
        variants["yuv422"] = np.ascontiguousarray(
            yuyv.reshape(colour.shape[0], -1, 4)[:, :, [1, 0, 3, 2]].reshape(yuyv.shape))
    return variants


def test_driver_encodings_are_fused(ros, model_path):
    """One message per driver encoding: every colour layout fuses as its converted frame
    does (the channel order reaches the engine), lossless ones exactly as rgb8; thermal
    temperatures (32FC1 with NaN and inf pixels), 16-bit counts and grey-coded colour fuse
    at full size, the grey-coded ones as the grey frame itself."""
    node = ros.fusion_node(model_path, diagnostics_period=0.3)
    h = ros.harness()
    h.wait_connected()
    thermal, colour = sample_frames()
    reference = image_array(h.fuse(thermal, colour))
    for encoding, pixels in _colour_variants(colour).items():
        fused = image_array(h.fuse(thermal, pixels, color_encoding=encoding))
        # What the node fuses is the converted frame in its channel order: sent as that
        # rgb8/bgr8 frame it fuses the same; the lossless layouts give the rgb8 result.
        converted = color_from_array(pixels, encoding)
        expected = image_array(h.fuse(thermal, converted.image,
                                      color_encoding=f"{converted.order}8"))
        assert np.abs(fused.astype(int) - expected).max() <= 1, encoding
        if encoding in ("bgr8", "rgba8", "bgra8", "rgb16", "bgr16"):
            assert np.abs(fused.astype(int) - reference).max() <= 1, encoding
    temperatures = thermal.astype(np.float32) * 0.25 + 250.0
    temperatures[0, :5] = np.nan
    temperatures[1, :5] = np.inf
    grey_coded = np.repeat(thermal[:, :, None], 3, axis=2)  # AGC thermal sent as rgb8
    for encoding, pixels in (("32FC1", temperatures), ("16UC1", thermal.astype(np.uint16) * 64),
                             ("rgb8", grey_coded), ("bgra8", np.concatenate(
                                 [grey_coded, np.full_like(thermal[:, :, None], 255)], axis=2))):
        fused = image_array(h.fuse(pixels, colour, thermal_encoding=encoding))
        assert fused.shape == colour.shape, encoding
        if encoding in ("rgb8", "bgra8"):  # grey-coded thermal is the grey thermal itself
            assert np.abs(fused.astype(int) - reference).max() <= 1, encoding
    assert node.pipeline.input_errors == 0, node.pipeline.last_error


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
    assert node.pipeline.fusion_errors == 1 and node.worker.errors == 0


FLOOD = Path(__file__).with_name("flood_publisher.py")


# Real-time over real DDS on a shared 2-core machine (the node, this test's harness, the
# flood process and other jobs compete for two cores): a scheduling hiccup can spoil one
# run; a real fault (a queue that grows, a spinning executor) fails every run.
@pytest.mark.flaky(reruns=2)
def test_overload_drops_frames_and_latency_does_not_grow(ros, model_path):
    """Both streams at 200 Hz for 6 s from a separate process: pairs the worker cannot take
    are dropped and counted, the pairing queues stay within queue_size, memory stays flat,
    and the latency of published frames in the last second is no worse than in the early
    window (it would grow by seconds with a queue)."""
    queue_size = 10
    node = ros.fusion_node(model_path, task="detection", queue_size=queue_size,
                           metrics_every_n=0)
    # A shallow output queue: when this process reads the fused images late, the backlog
    # must not be taken for latency of the node (a node-side queue would still show as
    # growing stamp-to-receive latency).
    h = ros.harness(sensor_qos=True, output_depth=2)
    h.wait_connected()
    thermal, colour = sample_frames()
    h.fuse(thermal, colour)

    pending_max = [0, 0]
    rss: list[float] = []
    stop = threading.Event()

    def watch():
        n = 0
        while not stop.is_set():
            pending_max[0] = max(pending_max[0], node.pipeline.pending[0])
            pending_max[1] = max(pending_max[1], node.pipeline.pending[1])
            if n % 100 == 0:
                rss.append(_rss_mb())
            n += 1
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    # The flood runs in its own process (as cameras do), so its Python work does not compete
    # with the node for this interpreter's lock.
    rate, seconds = 200.0, 6.0
    try:
        flood = subprocess.run(
            [sys.executable, str(FLOOD), "--rate", str(rate), "--seconds", str(seconds),
             "--height", str(thermal.shape[0]), "--width", str(thermal.shape[1])],
            capture_output=True, text=True, timeout=90, check=False,
        )
    finally:
        stop.set()
        watcher.join()
    assert flood.returncode == 0, flood.stderr[-2000:]
    report = json.loads(flood.stdout.strip().splitlines()[-1])
    assert report["connected"], "the flood publisher never saw the node's subscriptions"
    achieved = report["sent"] / report["seconds"]
    assert achieved > 80, f"the flood could only send {achieved:.0f} pairs/s"
    assert node.worker.wait_idle(20)
    time.sleep(0.3)

    # Harness receive times are monotonic; stamps are the sender's wall clock.
    wall_minus_mono = time.time_ns() - time.monotonic_ns()
    start = report["start_wall_ns"]
    with h.cond:
        received = [(int(t * NS) + wall_minus_mono, stamp_to_ns(m.header.stamp))
                    for t, m in h.fused["fused/image"]]
    flood_frames = [(stamp, (t - stamp) / NS) for t, stamp in received if stamp >= start]
    assert flood_frames, "no frame of the flood was fused"
    # Windows from the first fused flood frame: on a loaded machine the node's side of DDS
    # discovery can lag the publisher's by a second or two. The early window starts 0.5 s
    # after it (start-up transients), the late one is the flood's last second.
    first_stamp = flood_frames[0][0]
    end = start + int(seconds * NS)
    assert first_stamp + 2 * NS <= end - NS, (
        f"the flood reached the node only {(first_stamp - start) / NS:.1f} s after it began"
    )
    first = [lat for stamp, lat in flood_frames
             if first_stamp + NS // 2 <= stamp < first_stamp + 3 * NS // 2]
    last = [lat for stamp, lat in flood_frames if stamp > end - NS]
    assert len(first) >= 3 and len(last) >= 3, (len(first), len(last))
    early, late = statistics.median(first), statistics.median(last)
    processing = statistics.median(np.diff([t for t, _ in received[-len(last):]])) / NS
    # Growth would be ~seconds (a backlog of ~170 pairs per second of overload); bounded
    # latency stays within a few fusion steps of the early value.
    assert late <= 2 * early + 4 * processing, (early, late, processing)

    # Drops are counted: in the worker (older pairs replaced) and/or by DDS (depth 5).
    worker = node.worker
    assert worker.dropped > 0
    assert worker.submitted == worker.processed + worker.dropped
    stats = node.pipeline.pairing_stats()
    assert stats["pairs"] == worker.submitted  # every pair goes to the worker
    # Bounded queues and memory.
    assert pending_max[0] <= queue_size and pending_max[1] <= queue_size, pending_max
    assert max(rss) - min(rss) < 100, rss
    print(f"\noverload: sent {achieved:.0f} pairs/s for {report['seconds']:.1f} s; node "
          f"received {stats['color_received']} colour frames, paired {stats['pairs']}, fused "
          f"{len(flood_frames)}, worker dropped {worker.dropped}; latency median first "
          f"second {early * 1e3:.0f} ms, last second {late * 1e3:.0f} ms; RSS "
          f"{min(rss):.0f}-{max(rss):.0f} MB")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
