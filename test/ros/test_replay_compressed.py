"""Replay's publisher side for compressed bags, over real DDS: CompressedImage topics are
published as recorded on their own names (``<topic>/compressed``, where a node with the
``compressed`` transport listens), with the cameras' camera_info beside them.

The fusion node's compressed subscription is not part of this test: a plain rclpy node
subscribes instead and checks every message arrives byte for byte and decodes.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.ros
pytest.importorskip("rclpy")

from helpers import stop_process  # noqa: E402
from ros_helpers import ros_env  # noqa: E402

from cldyn_ros.offline.bags import (  # noqa: E402
    StreamSpec,
    bag_info,
    iter_messages,
    synthetic_stream,
    typestore_for,
    write_stream,
)

H, W = 48, 64


@pytest.mark.flaky(reruns=1)
def test_compressed_topics_and_camera_info_are_published_as_recorded(tmp_path: Path) -> None:
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, CompressedImage

    from cldyn_ros.ros.replay import ReplaySettings, _play, _State, create_input_publishers
    from cldyn_ros.streams.camera_info import CameraInfoData, pinhole_camera_info
    from cldyn_ros.streams.image_convert import color_from_message, thermal_from_message

    bag = tmp_path / "comp"
    spec = StreamSpec(rgb_rate=10, thermal_rate=20, thermal_bits=16)
    write_stream(bag, synthetic_stream(0.5, spec, H, W), compressed=True,
                 camera_info={"rgb": None}, storage="sqlite3")
    info = bag_info(bag)
    thermal, rgb = "/thermal/image/compressed", "/rgb/image/compressed"
    expected = {t: [bytes(r) for tt, _, _, r in iter_messages(bag) if tt == t]
                for t in (thermal, rgb, "/rgb/camera_info")}
    qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    received: dict[str, list[bytes]] = {t: [] for t in expected}
    decoded: list[str] = []
    lock = threading.Lock()

    with ros_env() as env:
        import rclpy

        sender = env.add(rclpy.create_node("replay_side", context=env.context))
        listener = env.add(rclpy.create_node("listener", context=env.context))

        def keep(topic: str, kind: type):
            def callback(raw: bytes) -> None:
                from rclpy.serialization import deserialize_message

                msg = deserialize_message(raw, kind)
                if kind is CompressedImage:
                    frame = (thermal_from_message(msg) if topic == thermal
                             else color_from_message(msg).image)
                    assert frame.shape[:2] == (H, W)
                    decoded.append(str(frame.dtype))
                else:
                    assert CameraInfoData.from_message(msg) == pinhole_camera_info(H, W)
                with lock:
                    received[topic].append(bytes(raw))
            return callback

        for topic in (thermal, rgb):
            listener.create_subscription(CompressedImage, topic, keep(topic, CompressedImage),
                                         qos, raw=True)
        listener.create_subscription(CameraInfo, "/rgb/camera_info",
                                     keep("/rgb/camera_info", CameraInfo), qos, raw=True)
        pubs, info_pubs = create_input_publishers(sender, info, thermal, rgb, qos)
        assert all(p.msg_type is CompressedImage for p in pubs.values())
        assert list(info_pubs) == ["/rgb/camera_info"]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not all(
                p.get_subscription_count() for p in [*pubs.values(), *info_pubs.values()]):
            time.sleep(0.05)
        time.sleep(0.3)
        settings = ReplaySettings(thermal, rgb, rate=2.0, progress=False)
        state = _State()
        counts = _play(bag, settings, pubs, None, state, typestore_for("kilted"), None, info,
                       info_pubs)
        assert counts == {"thermal": 10, "rgb": 5, "camera_info": 5}
        assert len(state.published) == 5  # colour stamps read from the compressed headers
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with lock:
                if all(len(received[t]) == len(expected[t]) for t in expected):
                    break
            time.sleep(0.05)
    for topic, raws in expected.items():
        assert received[topic] == raws, topic  # every message, in order, byte for byte
    assert decoded.count("uint16") == 10 and decoded.count("uint8") == 5
    assert np.all([len(r) > 0 for r in received[rgb]])


@pytest.mark.flaky(reruns=2)  # real time over real DDS on a shared 2-core machine
def test_compressed_bag_through_the_live_node_matches_eval_bag(tmp_path: Path) -> None:
    """A `cldyn bag from-images --compressed --camera-info --thermal-bits 16` bag (16-bit PNG
    thermal, JPEG colour, camera_info) replayed through a fusion_node process with the
    compressed transport on both inputs: pairs fused, a fused/<task>/camera_info with each
    fused image, and the images those of `cldyn eval bag` on the same bag."""
    import os
    import subprocess
    import sys

    from ros_helpers import write_checkpoint
    from rosbags.typesys import Stores, get_typestore

    from cldyn_ros.cli import main
    from cldyn_ros.inference.engine import FusionEngine
    from cldyn_ros.offline.bag_eval import BagEvalSettings, evaluate_bag
    from cldyn_ros.offline.bags import read_images
    from cldyn_ros.ros.node import ready_service, wait_for_service
    from cldyn_ros.ros.node_io import input_qos_overrides, ros_args
    from cldyn_ros.ros.replay import ReplaySettings, replay_bag
    from cldyn_ros.streams.camera_info import CameraInfoData, pinhole_camera_info

    bag, model = tmp_path / "drive", write_checkpoint(tmp_path / "small.pt")
    assert main(["bag", "from-images", "--synthetic", "1.5", "--size", str(H), str(W),
                 "--compressed", "--camera-info", "--thermal-bits", "16", "--rgb-rate", "10",
                 "--thermal-rate", "20", "--storage", "sqlite3", "--out", str(bag),
                 "--no-progress"]) == 0
    thermal, rgb = "/thermal/image/compressed", "/rgb/image/compressed"
    assert {thermal, rgb, "/rgb/camera_info"} <= set(bag_info(bag).topics)
    cmd = [sys.executable, "-m", "cldyn_ros.ros.node", "--ros-args",
           "-p", f"model_path:={model}", "-p", "threads:=1", "-p", "tasks:=['none']",
           "-p", "thermal_transport:=compressed", "-p", "rgb_transport:=compressed",
           *ros_args(input_qos_overrides("reliable", 50, transports=("compressed",
                                                                    "compressed")))]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    log = tmp_path / "node.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        assert wait_for_service(ready_service(), 90, alive=lambda: proc.poll() is None), \
            log.read_text()[-2000:]
        live = replay_bag(bag, ReplaySettings(thermal, rgb, metrics=("EN",), progress=False,
                                              settle_s=1.5), tmp_path / "live")
    finally:
        stop_process(proc)
    print(log.read_text()[-2000:])
    info = live["live"]
    assert info["pairs_offline"] == 15 and info["published_camera_info"] == 45  # both cameras
    assert info["pairs_received"] >= 10, info
    assert info["fused_camera_info"] == {"/fused/none/camera_info": info["pairs_received"]}
    live_bag = Path(live["output_bag"]["path"])
    store = get_typestore(Stores.ROS2_KILTED)
    infos = [store.deserialize_cdr(raw, "sensor_msgs/msg/CameraInfo")
             for topic, _, _, raw in iter_messages(live_bag) if topic == "/fused/none/camera_info"]
    assert len(infos) == info["pairs_received"]
    assert all(CameraInfoData.from_message(m) == pinhole_camera_info(H, W) for m in infos)
    fused_live = {r.stamp_ns: r.image for r in read_images(live_bag, ["/fused/none/image"])}
    assert {m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in infos} == set(fused_live)

    offline = evaluate_bag(bag, FusionEngine(model, device="cpu", threads=1),
                           BagEvalSettings(thermal, rgb, metrics=("EN",), write_bag=True,
                                           progress=False), tmp_path / "offline")
    fused_offline = {r.stamp_ns: r.image for r in read_images(
        Path(offline["output_bag"]["path"]), ["/fused/none/image"])}
    offline_gaps = {r["stamp_ns"]: r["gap_ms"] for r in offline["per_pair"]}
    same = [r["stamp_ns"] for r in live["per_pair"]
            if abs(r["gap_ms"] - offline_gaps.get(r["stamp_ns"], 1e9)) < 1e-3]
    assert len(same) >= 10
    for stamp in same:
        diff = np.abs(fused_live[stamp].astype(np.int16) - fused_offline[stamp].astype(np.int16))
        assert diff.max() <= 2, stamp
