"""Tests of cldyn_ros.streams.camera_info: camera_info content of the fused output."""

from __future__ import annotations

import numpy as np
import pytest

from cldyn_ros.streams.camera_info import (
    CameraInfoData,
    camera_info_from_yaml,
    camera_info_topic,
    fused_camera_info,
    pinhole_camera_info,
)

CALIB = CameraInfoData(
    480, 640, "plumb_bob", (-0.1, 0.01, 0.0, 0.0, 0.0),
    (500.0, 0.0, 320.5, 0.0, 505.0, 240.5, 0.0, 0.0, 1.0),
    p=(498.0, 0.0, 321.0, -49.8, 0.0, 503.0, 241.0, 0.0, 0.0, 0.0, 1.0, 0.0))


def _project(info: CameraInfoData, xyz: np.ndarray) -> np.ndarray:
    p = np.asarray(info.p).reshape(3, 4)
    uvw = p @ np.append(xyz, 1.0)
    return uvw[:2] / uvw[2]


def test_same_size_keeps_the_colour_calibration():
    assert fused_camera_info(CALIB, 480, 640) is CALIB


def test_resized_output_scales_the_intrinsics():
    """A 3-D point projects to the same relative image position in the resized image."""
    half = fused_camera_info(CALIB, 240, 320)
    assert (half.height, half.width) == (240, 320)
    assert half.k[0] == 250.0 and half.k[4] == 252.5 and half.d == CALIB.d
    xyz = np.array([0.4, -0.2, 3.0])
    np.testing.assert_allclose(_project(half, xyz), _project(CALIB, xyz) / 2.0, rtol=1e-12)


def test_binning_and_roi_are_folded_into_the_intrinsics():
    binned = CameraInfoData(960, 1280, k=(1000.0, 0, 641.0, 0, 1010.0, 481.0, 0, 0, 1),
                            p=(1000.0, 0, 641.0, 0, 0, 1010.0, 481.0, 0, 0, 0, 1, 0),
                            binning_x=2, binning_y=2, roi=(100, 60, 800, 1000, False))
    assert binned.image_size == (400, 500)
    assert fused_camera_info(binned, 400, 500) is binned
    out = fused_camera_info(binned, 200, 250)
    assert out.binning_x == 0 and out.roi == (0, 0, 0, 0, False)
    # full-res pixel (u, v) -> ROI -> binned -> halved
    xyz = np.array([0.3, 0.1, 2.0])
    u, v = _project(binned, xyz)
    np.testing.assert_allclose(_project(out, xyz), [(u - 100) / 4, (v - 60) / 4], rtol=1e-12)


def test_message_round_trip_rosbags_and_rclpy():
    from cldyn_ros.offline.bags import typestore_for

    store = typestore_for("kilted")
    msg = store.types["sensor_msgs/msg/CameraInfo"](
        header=store.types["std_msgs/msg/Header"](
            stamp=store.types["builtin_interfaces/msg/Time"](sec=1, nanosec=2), frame_id="c"),
        height=0, width=0, distortion_model="", d=np.zeros(0), k=np.zeros(9), r=np.zeros(9),
        p=np.zeros(12), binning_x=0, binning_y=0,
        roi=store.types["sensor_msgs/msg/RegionOfInterest"](
            x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))
    CALIB.fill(msg)
    assert isinstance(msg.k, np.ndarray)
    raw = store.serialize_cdr(msg, "sensor_msgs/msg/CameraInfo")
    back = store.deserialize_cdr(raw, "sensor_msgs/msg/CameraInfo")
    assert CameraInfoData.from_message(back) == CALIB
    sensor_msgs = pytest.importorskip("sensor_msgs.msg", reason="rclpy messages not installed")
    ros = CALIB.fill(sensor_msgs.CameraInfo())
    assert CameraInfoData.from_message(ros) == CALIB


def test_pinhole():
    info = pinhole_camera_info(240, 320, hfov_deg=90.0)
    assert info.k[0] == pytest.approx(160.0) and info.k[2] == 160.0 and info.k[5] == 120.0
    with pytest.raises(ValueError, match="field of view"):
        pinhole_camera_info(10, 10, 180.0)


def test_yaml(tmp_path):
    path = tmp_path / "cam.yaml"
    path.write_text("""image_width: 640
image_height: 480
camera_name: rgb
camera_matrix: {rows: 3, cols: 3, data: [500, 0, 320.5, 0, 505, 240.5, 0, 0, 1]}
distortion_model: plumb_bob
distortion_coefficients: {rows: 1, cols: 5, data: [-0.1, 0.01, 0, 0, 0]}
rectification_matrix: {rows: 3, cols: 3, data: [1, 0, 0, 0, 1, 0, 0, 0, 1]}
projection_matrix: {rows: 3, cols: 4, data: [498, 0, 321, -49.8, 0, 503, 241, 0, 0, 0, 1, 0]}
""")
    assert camera_info_from_yaml(path) == CALIB
    bad = tmp_path / "bad.yaml"
    bad.write_text("image_width: 4\nimage_height: 4\ncamera_matrix: {data: [1, 2]}\n")
    with pytest.raises(ValueError, match="'camera_matrix' must hold 9 numbers"):
        camera_info_from_yaml(bad)


def test_wrong_matrix_size():
    with pytest.raises(ValueError, match="k must have 9 numbers"):
        CameraInfoData(4, 4, k=(1.0, 2.0))


@pytest.mark.parametrize(("image", "info"), [
    ("/cam/image_raw", "/cam/camera_info"),
    ("/cam/image_raw/compressed", "/cam/camera_info"),
    ("fused/image", "fused/camera_info"),
    ("fused/detection/image", "fused/detection/camera_info"),
    ("image", "camera_info"),
])
def test_camera_info_topic(image, info):
    assert camera_info_topic(image) == info
