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
