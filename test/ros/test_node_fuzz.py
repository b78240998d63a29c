"""Fuzzing the fusion node over real DDS with a seeded generator.

A real node process gets thousands of malformed and odd ``sensor_msgs/Image`` messages
(unsupported encodings, float images with NaN/inf, zero and huge dimensions, short
steps, truncated and oversized data, big-endian flags, wild stamps), feedback with
garbage stamps, task names and scores, random parameter sets through the SetParameters
service and random service calls. It must not die, must count every rejected input by
its cause in /diagnostics (exactly what the generator sent), keep its memory bounded,
and fuse the next good pair.
"""

from __future__ import annotations

import array
import collections
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.qos import QoSProfile, ReliabilityPolicy
from ros_helpers import (  # noqa: F401  (fixtures)
    NODE,
    NS,
    TASKS,
    model_path_fixture,
    ros_fixture,
    sample_frames,
    status_values,
)
from sensor_msgs.msg import Image
from std_srvs.srv import Trigger

from cldyn_ros.ros.node_io import input_qos_overrides, ros_args
from cldyn_ros.streams.image_convert import COLOR_INPUT_ENCODINGS, THERMAL_INPUT_ENCODINGS
from cldyn_ros.streams.image_msgs import COLOR_ENCODINGS, THERMAL_ENCODINGS

pytestmark = [pytest.mark.ros, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
SEED = 14
ROUNDS = 60
IMAGES_PER_ROUND = 40  # within the publishers' history: reliable QoS loses nothing
FEEDBACK_PER_ROUND = 8
RSS_GROWTH_LIMIT_MB = 300  # generous: allocator noise and caches, not a leak
_BYTES = {"mono8": 1, "8UC1": 1, "mono16": 2, "16UC1": 2, "rgb8": 3, "bgr8": 3}
# Encodings neither stream takes (each stream also refuses the other's own, see image()).
_FOREIGN_ENCODINGS = ("64FC1", "16SC1", "nv12", "yuv420", "bayer_rggb16", "MONO8", "mono8 ",
                      "", "jpeg", "8UC3", "16UC3", "mono32")


class ImageFuzzer:
    """Seeded malformed and odd images for one stream, each with the cause the node must
    count it under (``None``: a valid image, to be converted and paired)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.np_rng = np.random.default_rng(rng.randrange(2**32))

    def stamp(self, msg: Image) -> None:
        msg.header.stamp.sec = self.rng.choice(
            [0, 1, self.rng.randrange(2**31), 2**31 - 1, 1000 + self.rng.randrange(100)])
        msg.header.stamp.nanosec = self.rng.choice(
            [0, self.rng.randrange(10**9), 10**9 + self.rng.randrange(10**9), 2**32 - 1])
        msg.header.frame_id = "".join(self.rng.choice("abc_/ 9") for _ in
                                      range(self.rng.randrange(12)))

    def image(self, role: str) -> tuple[Image, str | None]:
        name = "thermal" if role == "thermal" else "colour"
        allowed = THERMAL_ENCODINGS if role == "thermal" else COLOR_ENCODINGS  # valid ones
        accepted = THERMAL_INPUT_ENCODINGS if role == "thermal" else COLOR_INPUT_ENCODINGS
        other = [e for e in (COLOR_INPUT_ENCODINGS if role == "thermal"
                             else THERMAL_INPUT_ENCODINGS) if e not in accepted]
        msg = Image()
        self.stamp(msg)
        case = self.rng.choice(["foreign", "float_nan", "wrong_stream", "zero", "huge_width",
                                "huge_height", "short_step", "truncated", "valid", "valid",
                                "oversized", "bigendian", "padded"])
        encoding = self.rng.choice(allowed)
        # 32FC1 temperatures are a valid thermal image (NaN and inf masked), not a colour one.
        float_valid = case == "float_nan" and role == "thermal"
        msg.is_bigendian = self.rng.choice([0, 1, 255]) if case != "valid" and not float_valid \
            else 0
        if case in ("foreign", "wrong_stream", "float_nan"):
            msg.encoding = (self.rng.choice(_FOREIGN_ENCODINGS) if case == "foreign" else
                            self.rng.choice(other) if case == "wrong_stream" else "32FC1")
            h, w = self.rng.randrange(1, 40), self.rng.randrange(1, 40)
            if case == "float_nan":
                pixels = self.np_rng.random((h, w), dtype=np.float32)
                pixels.flat[:: max(1, pixels.size // 7)] = np.nan
                pixels.flat[1:: max(1, pixels.size // 5)] = np.inf
                data = pixels.tobytes()
                step = w * 4
            else:
                step = w * self.rng.randrange(1, 5)
                data = self.np_rng.bytes(h * step)
            return self._fill(msg, h, w, step, data), None if float_valid else f"{name}_encoding"
        msg.encoding = encoding
        bpp = _BYTES[encoding]
        if case == "zero":
            h, w = self.rng.choice([(0, 0), (0, 17), (23, 0)])
            return self._fill(msg, h, w, w * bpp, self.np_rng.bytes(self.rng.randrange(64))), \
                f"{name}_zero_size"
        if case == "huge_width":  # the claimed rows do not fit the step
            w = self.rng.choice([2**20, 2**31, 2**32 - 1])
            return self._fill(msg, self.rng.randrange(1, 5), w, self.rng.randrange(1, 4096),
                              self.np_rng.bytes(256)), f"{name}_step"
        if case == "huge_height":  # the claimed rows are not in the data
            h = self.rng.choice([2**16, 2**31, 2**32 - 1])
            w = self.rng.randrange(1, 64)
            return self._fill(msg, h, w, w * bpp, self.np_rng.bytes(512)), f"{name}_short_data"
        h, w = self.rng.randrange(2, 48), self.rng.randrange(2, 48)
        row = w * bpp
        if case == "short_step":
            return self._fill(msg, h, w, row - self.rng.randrange(1, row + 1),
                              self.np_rng.bytes(h * row)), f"{name}_step"
        step = row + (self.rng.randrange(1, 9) if case == "padded" else 0)
        size = h * step
        if case == "truncated":
            return self._fill(msg, h, w, step, self._pixels(size - self.rng.randrange(1, size))
                              ), f"{name}_short_data"
        extra = self.rng.randrange(1, 5000) if case == "oversized" else 0
        return self._fill(msg, h, w, step, self._pixels(size + extra)), None

    def _pixels(self, n: int) -> bytes:
        data = bytearray(self.np_rng.bytes(n))
        if n >= 2:  # never a constant frame (that is fused and only reported)
            data[0], data[1] = 0, 255
        return bytes(data)

    @staticmethod
    def _fill(msg: Image, h: int, w: int, step: int, data: bytes) -> Image:
        msg.height, msg.width, msg.step = h, w, step
        msg.data = array.array("B", data)
        return msg


def feedback(rng: random.Random) -> tuple[DiagnosticArray, list[str]]:
    """A feedback message with garbage and the cause each of its statuses is counted under
    (a valid score for a real task still names no fused frame: ``unknown_frame``)."""
    msg = DiagnosticArray()
    msg.header.stamp.sec = rng.randrange(2**31)
    msg.header.stamp.nanosec = rng.randrange(2**32)
    causes = []
    for _ in range(rng.randrange(0, 4)):
        name = rng.choice([*TASKS, "none", "", "detection ", "DETECTION", "x" * 300])
        scores = rng.sample(["nan", "inf", "-inf", "1e309", "abc", "", "0.5", "-3", "1e-300",
                             " 0.25 ", "0x10", "1_0", "9" * 400], rng.randrange(0, 3))
        values = [KeyValue(key="score", value=v) for v in scores]
        values.insert(rng.randrange(len(values) + 1), KeyValue(key="other", value="1"))
        msg.status.append(DiagnosticStatus(level=DiagnosticStatus.OK, name=name,
                                           values=values))
        if name not in TASKS:
            causes.append("feedback_unknown_task")
            continue
        try:
            score = float(scores[-1]) if scores else None
        except ValueError:
            score = None
        if score is None or not math.isfinite(score):
            causes.append("feedback_invalid")
        else:
            causes.append("feedback_unknown_frame")
    return msg, causes


def random_parameters(rng: random.Random) -> dict:
    """A few parameters with random, often invalid values (rclpy checks types, ranges and
    read-only; the node checks the rest)."""
    choices = {
        "task": lambda: rng.choice([*TASKS, "none", "bogus", ""]),
        "tasks": lambda: rng.sample([*TASKS, "none", "bogus"], rng.randrange(0, 3)),
        "task_weights": lambda: rng.choice([[], ["detection:1"], ["detection:-1"],
                                            ["detection:nan"], ["x:1"], ["detection"]]),
        "compensation_strength": lambda: rng.choice([0.0, 0.5, 1.0, 2.0, -1.0]),
        "adaptive_strength": lambda: rng.choice([True, False]),
        "adaptive_min_strength": lambda: rng.random(),
        "adaptive_max_strength": lambda: rng.random(),
        "slop": lambda: rng.choice([0.0, 0.02, 0.5, 20.0]),
        "queue_size": lambda: rng.choice([1, 5, 10, 0, 5000]),
        "max_delay": lambda: rng.choice([0.001, 0.5, 5.0, 0.0]),
        "metrics_every_n": lambda: rng.choice([0, 1, 10, -1]),
        "output_encoding": lambda: rng.choice(["rgb8", "bgr8", "mono8"]),
        "thermal_mode": lambda: rng.choice(["auto", "fixed", "percentile", "magic"]),
        "thermal_low_percentile": lambda: rng.uniform(-10, 110),
        "thermal_high_percentile": lambda: rng.uniform(-10, 110),
        "homography": lambda: rng.choice([
            [], [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0], [0.0] * 9, [1.0, 2.0],
            [rng.uniform(-3, 3) for _ in range(9)]]),
        "precision": lambda: "bf16",  # read-only
        "threads": lambda: rng.choice([1, "two"]),  # read-only, and a wrong type
        "no_such_parameter": lambda: 3,
        "slow_frame_ms": lambda: rng.choice(["fast", 10.0]),  # a wrong type or a value
    }
    names = rng.sample(sorted(choices), rng.randrange(1, 4))
    return {name: choices[name]() for name in names}


DEFAULTS = {"task": "none", "tasks": [], "task_weights": [], "compensation_strength": 1.0,
            "adaptive_strength": False, "adaptive_min_strength": 0.0,
            "adaptive_max_strength": 1.0, "slop": 0.02, "queue_size": 10, "max_delay": 0.5,
            "metrics_every_n": 0, "output_encoding": "rgb8", "thermal_mode": "auto",
            "thermal_low_percentile": 1.0, "thermal_high_percentile": 99.0,
            "homography": [], "slow_frame_ms": 100.0}


def _set_typed(h, values: dict) -> list:
    """SetParameters with the declared types (an empty list has no type of its own)."""
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    arrays = {"tasks": Parameter.Type.STRING_ARRAY, "task_weights": Parameter.Type.STRING_ARRAY,
              "homography": Parameter.Type.DOUBLE_ARRAY}
    params = [Parameter(k, arrays[k], v) if k in arrays else Parameter(k, value=v)
              for k, v in values.items()]
    request = SetParameters.Request(parameters=[p.to_parameter_msg() for p in params])
    return h.call(SetParameters, f"{NODE}/set_parameters", request).results


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise AssertionError("no VmRSS")


def _latest_counts(h) -> dict[str, int] | None:
    statuses = h.diagnostics_of_node()
    if not statuses:
        return None
    values = status_values(statuses[-1])
    return {k[len("rejected_"):]: int(v) for k, v in values.items()
            if k.startswith("rejected_")} | {"_input_errors": int(values["input_errors"])}


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc for RSS")
def test_fuzzed_inputs_are_counted_by_cause_and_the_node_keeps_fusing(ros, model_path,
                                                                      tmp_path):
    log = open(tmp_path / "node.log", "w")  # noqa: SIM115  (closed in finally)
    node = subprocess.Popen(
        [sys.executable, "-m", "cldyn_ros.ros.node", "--ros-args",
         "-p", f"model_path:={model_path}", "-p", "threads:=1",
         *ros_args(input_qos_overrides("reliable", 1000)),
         "-p", "diagnostics_period:=0.2", "-p", "metrics_every_n:=0"],
        cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdin=subprocess.DEVNULL,
        stdout=log, stderr=subprocess.STDOUT, text=True,
    )
    rng = random.Random(SEED)
    fuzzer = ImageFuzzer(rng)
    expected: collections.Counter[str] = collections.Counter()
    sent = {"images": 0, "invalid": 0, "feedback": 0, "parameter_sets": 0,
            "parameter_rejections": 0, "node_rejections_at_least": 0, "services": 0}
    try:
        h = ros.harness()
        qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
        pubs = {"thermal": h.create_publisher(Image, "thermal/image", qos),
                "color": h.create_publisher(Image, "rgb/image", qos)}
        feedback_pub = h.create_publisher(DiagnosticArray, f"{NODE}/task_feedback", qos)
        deadline = time.monotonic() + 120
        while not (pubs["thermal"].get_subscription_count()
                   and pubs["color"].get_subscription_count()
                   and feedback_pub.get_subscription_count()):
            assert node.poll() is None, (tmp_path / "node.log").read_text()
            assert time.monotonic() < deadline, "the node did not subscribe"
            time.sleep(0.1)
        h.wait_connected(60)
        h.wait_for(lambda: h.diagnostics_of_node(), 30)
        rss_start = None
        for round_ in range(ROUNDS):
            for _ in range(IMAGES_PER_ROUND):
                role = rng.choice(["thermal", "color"])
                msg, cause = fuzzer.image(role)
                pubs[role].publish(msg)
                sent["images"] += 1
                if cause is not None:
                    expected[cause] += 1
                    expected["_input_errors"] += 1
                    sent["invalid"] += 1
            for _ in range(rng.randrange(FEEDBACK_PER_ROUND + 1)):
                msg, causes = feedback(rng)
                feedback_pub.publish(msg)
                expected.update(causes)
                sent["feedback"] += 1
            if round_ % 2 == 0:
                params = random_parameters(rng)
                results = h.set_params(params)
                sent["parameter_sets"] += 1
                sent["parameter_rejections"] += sum(not r.successful for r in results)
                if params.get("task") == "bogus" and len(params) == 1:
                    sent["node_rejections_at_least"] += 1
            if round_ % 3 == 0:
                task = rng.choice([*TASKS, "none"])
                response = h.call(Trigger, f"{NODE}/select_task/{task}", Trigger.Request())
                assert response.message, response
                h.get_params([rng.choice(list(DEFAULTS))])
                sent["services"] += 2
            want = {k: v for k, v in expected.items()}

            def caught_up(want=want):
                got = _latest_counts(h)
                return got is not None and all(got.get(k, 0) >= v for k, v in want.items())

            with h.cond:
                ok = h.cond.wait_for(caught_up, 30)
            assert node.poll() is None, "the node died:\n" + (tmp_path / "node.log").read_text()
            assert ok, (f"round {round_}: rejections not counted as sent: want {want}, "
                        f"got {_latest_counts(h)}")
            if round_ == 4:
                rss_start = _rss_mb(node.pid)

        # Exactly what was sent, by cause; nothing rejected that was valid.
        with h.cond:
            h.cond.wait_for(lambda: False, 1.0)  # a last report or two
            got = _latest_counts(h)
        input_causes = {k: v for k, v in got.items()
                        if k.startswith(("thermal_", "colour_", "pair_"))}
        assert {k: v for k, v in got.items() if k.startswith(("thermal_", "colour_"))} == {
            k: v for k, v in expected.items() if k.startswith(("thermal_", "colour_"))}
        assert input_causes.get("pair_invalid", 0) == 0
        assert got["_input_errors"] == sum(input_causes.values()) == sent["invalid"]
        for cause in ("feedback_unknown_task", "feedback_invalid", "feedback_unknown_frame"):
            assert got.get(cause, 0) == expected[cause], cause
        assert sent["node_rejections_at_least"] <= got.get("parameters", 0) \
            <= sent["parameter_rejections"]
        assert len({k for k in expected if k.endswith("_encoding")}) == 2
        assert sent["images"] >= 2000 and sent["invalid"] >= 1000

        rss_end = _rss_mb(node.pid)
        assert rss_end - rss_start < RSS_GROWTH_LIMIT_MB, (rss_start, rss_end)

        # Back to sane settings: the next good pair is fused.
        results = _set_typed(h, DEFAULTS)
        assert all(r.successful for r in results), [r.reason for r in results]
        thermal, colour = sample_frames()
        h._stamp = (2**31 - 1000) * NS  # a stamp the int32 seconds field can hold
        fused = h.fuse(thermal, colour, timeout=20.0)
        assert (fused.height, fused.width) == colour.shape[:2]
        assert node.poll() is None
        print(f"fuzz: {sent}; rejections {got}; RSS {rss_start:.0f} -> {rss_end:.0f} MB")
    finally:
        if node.poll() is None:
            node.send_signal(2)
            try:
                node.wait(30)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait()
        log.close()
    output = (tmp_path / "node.log").read_text()
    assert "Traceback" not in output, output[-5000:]
    assert node.returncode == 0, output[-5000:]


def _compressed(rng: random.Random, np_rng: np.random.Generator, role: str):
    """A CompressedImage for ``role`` and whether the node must reject it (corrupt,
    truncated or empty data, an unknown encoding, a format that does not match the data)."""
    from sensor_msgs.msg import CompressedImage

    from cldyn_ros.streams.compressed import encode_compressed

    h, w = rng.randrange(8, 40), rng.randrange(8, 40)
    if role == "thermal":
        pixels = np_rng.integers(0, 65535, (h, w), dtype=np.uint16)
        fmt, data = encode_compressed(pixels, "mono16", "png")
        mislabels = ["rgb8; jpeg compressed bgr8", "32FC1; png compressed ",
                     "bgr8; png compressed bgr8", "mono8; png compressed "]
    else:
        pixels = np_rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        fmt, data = encode_compressed(pixels, "rgb8", "jpeg", quality=rng.randrange(10, 100))
        mislabels = ["mono16; png compressed ", "rgb16; png compressed bgr16",
                     "16UC1; png compressed ", "32FC1; jpeg compressed "]
    case = rng.choice(["valid", "valid", "truncated", "empty", "corrupt", "unknown_encoding",
                       "mislabelled", "no_codec_name"])
    if case == "truncated":
        data = data[: rng.randrange(1, len(data) - 1)]
    elif case == "empty":
        data = b""
    elif case == "corrupt":  # the magic bytes and end marker of the codec, noise between
        head, tail = data[:8], data[-12:]
        data = head + np_rng.bytes(rng.randrange(0, 200)) + tail
    elif case == "unknown_encoding":
        fmt = rng.choice(["nv12; jpeg compressed bgr8", "MONO16; png compressed ",
                          "rgb9; jpeg compressed"])
    elif case == "mislabelled":
        fmt = rng.choice(mislabels)
    elif case == "no_codec_name":  # old publishers: "jpeg"/"png", the layout from the data
        fmt = "png" if role == "thermal" else "jpeg"
    msg = CompressedImage(format=fmt)
    msg.data = array.array("B", data)
    return msg, case not in ("valid", "no_codec_name")


def test_fuzzed_compressed_inputs_are_rejected_after_pairing_and_fusion_goes_on(ros,
                                                                                model_path):
    """Compressed transport on both inputs: each pair is decoded on the worker after
    pairing; a bad image of a pair (thermal checked first) is one rejection of its stream,
    a good pair is fused, the node keeps running."""
    from sensor_msgs.msg import CompressedImage

    node = ros.fusion_node(model_path, thermal_transport="compressed",
                           rgb_transport="compressed", slop=0.001, metrics_every_n=0,
                           **input_qos_overrides("reliable", 50,
                                                 transports=("compressed", "compressed")))
    h = ros.harness()
    qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    pubs = {role: h.create_publisher(CompressedImage, f"{topic}/compressed", qos)
            for role, topic in (("thermal", "thermal/image"), ("color", "rgb/image"))}
    deadline = time.monotonic() + 30
    while not all(p.get_subscription_count() for p in pubs.values()):
        assert time.monotonic() < deadline, "the node did not subscribe"
        time.sleep(0.05)
    while not (h.count_publishers("/fused/image") and h.count_publishers(f"{NODE}/metrics")):
        assert time.monotonic() < deadline, "the node's outputs did not appear"
        time.sleep(0.05)
    rng, np_rng = random.Random(SEED), np.random.default_rng(SEED)
    rejected = {"thermal": 0, "colour": 0}
    fused = 0
    for index in range(40):
        stamp = h.next_stamp()
        thermal, bad_thermal = _compressed(rng, np_rng, "thermal")
        colour, bad_colour = _compressed(rng, np_rng, "color")
        for role, msg in (("thermal", thermal), ("color", colour)):
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, NS)
            pubs[role].publish(msg)
        if bad_thermal:
            rejected["thermal"] += 1
        elif bad_colour:
            rejected["colour"] += 1
        else:
            fused += 1
        deadline = time.monotonic() + 20
        while node.worker.processed < index + 1:  # one pair at a time: none replaced
            assert time.monotonic() < deadline, f"pair {index} was never processed"
            time.sleep(0.01)
    counts = node.pipeline.rejections.counts()
    by_stream = {name: sum(v for k, v in counts.items() if k.startswith(name + "_"))
                 for name in rejected}
    assert by_stream == rejected, counts
    assert node.pipeline.frames == fused and node.worker.dropped == 0
    assert rejected["thermal"] >= 5 and rejected["colour"] >= 3 and fused >= 5
    h.wait_for(lambda: len(h.fused["fused/image"]) == fused)
