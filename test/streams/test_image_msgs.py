"""Tests of cldyn_ros.streams.image_msgs: Image messages <-> numpy.

For duck-typed, rclpy and rosbags messages.
"""

from __future__ import annotations

import array
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from cldyn_ros.streams.image_msgs import (
    COLOR_ENCODINGS,
    THERMAL_ENCODINGS,
    ImageMessageError,
    encoding_info,
    image_to_numpy,
    numpy_to_image,
    stamp_to_ns,
)

ALL_ENCODINGS = THERMAL_ENCODINGS + COLOR_ENCODINGS


@dataclass
class FakeTime:
    sec: int = 0
    nanosec: int = 0


@dataclass
class FakeHeader:
    stamp: FakeTime = field(default_factory=FakeTime)
    frame_id: str = ""


@dataclass
class FakeImage:
    """The fields of sensor_msgs/Image, nothing more."""

    header: FakeHeader = field(default_factory=FakeHeader)
    height: int = 0
    width: int = 0
    encoding: str = ""
    is_bigendian: int = 0
    step: int = 0
    data: Any = field(default_factory=lambda: array.array("B"))


def sample(encoding: str, height: int = 5, width: int = 7, seed: int = 0) -> np.ndarray:
    dtype, channels = encoding_info(encoding)
    shape = (height, width) if channels == 1 else (height, width, channels)
    return np.random.default_rng(seed).integers(0, np.iinfo(dtype).max, shape, dtype=dtype)


def padded_message(arr: np.ndarray, encoding: str, pad: int, bigendian: bool = False) -> FakeImage:
    """A message whose rows carry ``pad`` bytes of junk after the pixels."""
    height, width = arr.shape[:2]
    wire = arr.astype(arr.dtype.newbyteorder(">" if bigendian else "<"))
    rows = wire.reshape(height, -1).view(np.uint8)
    junk = np.full((height, pad), 0xAB, np.uint8)
    data = np.concatenate([rows, junk], axis=1).tobytes()
    return FakeImage(height=height, width=width, encoding=encoding, is_bigendian=int(bigendian),
                     step=rows.shape[1] + pad, data=array.array("B", data))


# --- duck-typed messages ----------------------------------------------------------------------

@pytest.mark.parametrize("encoding", ALL_ENCODINGS)
def test_roundtrip_each_encoding(encoding):
    arr = sample(encoding)
    msg = numpy_to_image(arr, encoding, FakeImage())
    dtype, channels = encoding_info(encoding)
    assert (msg.height, msg.width, msg.encoding, msg.is_bigendian) == (5, 7, encoding, 0)
    assert msg.step == 7 * channels * dtype.itemsize
    assert isinstance(msg.data, array.array) and len(msg.data) == msg.step * msg.height
    back = image_to_numpy(msg)
    assert back.dtype == dtype and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)


@pytest.mark.parametrize("encoding", ALL_ENCODINGS)
def test_view_is_zero_copy(encoding):
    msg = numpy_to_image(sample(encoding), encoding, FakeImage())
    view = image_to_numpy(msg)
    assert np.shares_memory(view, np.frombuffer(msg.data, np.uint8))
    msg.data[0] ^= 0xFF  # the view follows the message
    assert view.reshape(-1).view(np.uint8)[0] == msg.data[0]


@pytest.mark.parametrize("encoding", ALL_ENCODINGS)
@pytest.mark.parametrize("pad", [1, 4])
def test_padded_rows_give_a_strided_view(encoding, pad):
    arr = sample(encoding, seed=3)
    msg = padded_message(arr, encoding, pad)
    view = image_to_numpy(msg)
    np.testing.assert_array_equal(view, arr)
    assert view.strides[0] == msg.step
    assert np.shares_memory(view, np.frombuffer(msg.data, np.uint8))  # no copy


@pytest.mark.parametrize("encoding", ["mono16", "16UC1"])
@pytest.mark.parametrize("pad", [0, 3])
def test_bigendian_16bit_is_swapped_to_host_order(encoding, pad):
    arr = sample(encoding, seed=4)
    msg = padded_message(arr, encoding, pad, bigendian=True)
    out = image_to_numpy(msg)
    assert out.dtype == np.uint16 and out.dtype.isnative
    np.testing.assert_array_equal(out, arr)
    assert not np.shares_memory(out, np.frombuffer(msg.data, np.uint8))  # swapped copy


def test_bigendian_flag_is_irrelevant_for_8bit():
    arr = sample("mono8")
    msg = numpy_to_image(arr, "mono8", FakeImage())
    msg.is_bigendian = 1
    np.testing.assert_array_equal(image_to_numpy(msg), arr)


@pytest.mark.parametrize(
    "data",
    [
        lambda raw: raw,  # bytes
        bytearray,
        memoryview,
        lambda raw: list(raw),  # no buffer: copied
        lambda raw: np.frombuffer(raw, np.uint8),
    ],
    ids=["bytes", "bytearray", "memoryview", "list", "ndarray"],
)
def test_data_container_types(data):
    arr = sample("rgb8")
    msg = FakeImage(height=5, width=7, encoding="rgb8", step=21, data=data(arr.tobytes()))
    np.testing.assert_array_equal(image_to_numpy(msg), arr)


def test_trailing_bytes_are_ignored():
    arr = sample("mono8")
    msg = FakeImage(height=5, width=7, encoding="mono8", step=7, data=arr.tobytes() + b"\0\0")
    np.testing.assert_array_equal(image_to_numpy(msg), arr)


def test_channel_order_is_kept():
    bgr = np.zeros((2, 2, 3), np.uint8)
    bgr[..., 0] = 255  # blue
    msg = numpy_to_image(bgr, "bgr8", FakeImage())
    assert list(msg.data[:3]) == [255, 0, 0]
    np.testing.assert_array_equal(image_to_numpy(msg), bgr)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"encoding": "nv12"}, "unsupported encoding 'nv12'"),
        ({"encoding": "16SC1"}, "unsupported encoding"),
        ({"encoding": ""}, "unsupported encoding"),
        ({"height": 0}, "zero size"),
        ({"width": 0}, "zero size"),
        ({"step": 6}, "step 6 is shorter than a row"),
        ({"data": array.array("B", bytes(34))}, "data has 34 bytes, shorter than height 5"),
        ({"data": array.array("B")}, "data has 0 bytes"),
    ],
)
def test_image_to_numpy_errors(changes, reason):
    msg = FakeImage(height=5, width=7, encoding="mono8", step=7, data=array.array("B", bytes(35)))
    for key, value in changes.items():
        setattr(msg, key, value)
    with pytest.raises(ImageMessageError, match=reason):
        image_to_numpy(msg)


def test_step_shorter_than_a_16bit_row_is_an_error():
    msg = FakeImage(height=2, width=4, encoding="mono16", step=7, data=bytes(16))
    with pytest.raises(ImageMessageError, match="step 7 is shorter than a row"):
        image_to_numpy(msg)


def test_image_message_error_is_a_value_error():
    assert issubclass(ImageMessageError, ValueError)


@pytest.mark.parametrize(
    ("arr", "encoding", "reason"),
    [
        (np.zeros((4, 4), np.uint16), "mono8", "needs uint8 pixels"),
        (np.zeros((4, 4), np.uint8), "mono16", "needs uint16 pixels"),
        (np.zeros((4, 4), np.float32), "16UC1", "needs uint16 pixels"),
        (np.zeros((4, 4), np.uint8), "rgb8", "needs an H x W x 3 array"),
        (np.zeros((4, 4, 4), np.uint8), "bgr8", "needs an H x W x 3 array"),
        (np.zeros((4, 4, 3), np.uint8), "mono8", "needs an H x W array"),
        (np.zeros(16, np.uint8), "mono8", "needs an H x W array"),
        (np.zeros((0, 4), np.uint8), "mono8", "zero size"),
        (np.zeros((4, 4), np.uint8), "yuv422", "needs an H x W x 2 array"),
        (np.zeros((4, 4), np.uint8), "nv12", "unsupported encoding"),
    ],
)
def test_numpy_to_image_errors(arr, encoding, reason):
    with pytest.raises(ImageMessageError, match=reason):
        numpy_to_image(arr, encoding, FakeImage())


def test_numpy_to_image_needs_a_message_or_factory():
    with pytest.raises(TypeError):
        numpy_to_image(np.zeros((2, 2), np.uint8), "mono8")
    msg = numpy_to_image(np.zeros((2, 2), np.uint8), "mono8", factory=FakeImage)
    assert isinstance(msg, FakeImage) and msg.height == 2


def test_numpy_to_image_accepts_strided_and_single_channel_3d_arrays():
    arr = sample("mono16", height=6, width=10)
    strided = arr[::2, ::3]
    msg = numpy_to_image(strided, "mono16", FakeImage())
    assert (msg.height, msg.width, msg.step) == (3, 4, 8)
    np.testing.assert_array_equal(image_to_numpy(msg), strided)
    msg = numpy_to_image(arr[:, :, None], "16UC1", FakeImage())
    np.testing.assert_array_equal(image_to_numpy(msg), arr)


def test_numpy_to_image_copies_and_sets_header():
    arr = sample("mono8")
    header = FakeHeader(stamp=FakeTime(3, 4), frame_id="thermal")
    msg = numpy_to_image(arr, "mono8", FakeImage(), header=header)
    assert msg.header is header
    arr[0, 0] ^= 0xFF
    assert msg.data[0] != arr[0, 0]  # the message does not alias the array


def test_numpy_to_image_keeps_bytes_and_ndarray_data_types():
    arr = sample("rgb8")
    msg = numpy_to_image(arr, "rgb8", FakeImage(data=b""))
    assert isinstance(msg.data, bytes)
    msg = numpy_to_image(arr, "rgb8", FakeImage(data=np.empty(0, np.uint8)))
    assert isinstance(msg.data, np.ndarray) and msg.data.dtype == np.uint8 and msg.data.ndim == 1
    assert not np.shares_memory(msg.data, arr)
    np.testing.assert_array_equal(image_to_numpy(msg), arr)


def test_encoding_info():
    assert encoding_info("mono16") == (np.dtype(np.uint16), 1)
    assert encoding_info("bgr8") == (np.dtype(np.uint8), 3)
    assert encoding_info("32FC1") == (np.dtype(np.float32), 1)
    assert encoding_info("yuv422") == (np.dtype(np.uint8), 2)
    with pytest.raises(ImageMessageError, match="unsupported encoding 'rgb32'.*supported: mono8"):
        encoding_info("rgb32")


def test_stamp_to_ns():
    header = FakeHeader(stamp=FakeTime(sec=12, nanosec=345_678_901))
    assert stamp_to_ns(header.stamp) == 12_345_678_901
    assert stamp_to_ns(header) == 12_345_678_901
    assert stamp_to_ns(FakeImage(header=header)) == 12_345_678_901


# --- rclpy messages ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ros_image():
    return pytest.importorskip("sensor_msgs.msg").Image


@pytest.mark.ros
@pytest.mark.parametrize("encoding", ALL_ENCODINGS)
@pytest.mark.parametrize("check_fields", [False, True])
def test_rclpy_roundtrip(ros_image, encoding, check_fields):
    arr = sample(encoding, height=4, width=6)
    msg = numpy_to_image(arr, encoding, ros_image(check_fields=check_fields))
    assert isinstance(msg.data, array.array) and msg.data.typecode == "B"
    view = image_to_numpy(msg)
    np.testing.assert_array_equal(view, arr)
    assert np.shares_memory(view, np.frombuffer(msg.data, np.uint8))


@pytest.mark.ros
def test_rclpy_factory_header_and_padded_rows(ros_image):
    from std_msgs.msg import Header

    header = Header(frame_id="camera")
    header.stamp.sec, header.stamp.nanosec = 7, 500
    msg = numpy_to_image(sample("bgr8"), "bgr8", factory=ros_image, header=header)
    assert msg.header.frame_id == "camera" and stamp_to_ns(msg) == 7_000_000_500

    arr = sample("mono16", seed=9)
    fake = padded_message(arr, "mono16", pad=2, bigendian=True)
    msg = ros_image(height=fake.height, width=fake.width, encoding=fake.encoding,
                    is_bigendian=1, step=fake.step, data=fake.data)
    np.testing.assert_array_equal(image_to_numpy(msg), arr)


@pytest.mark.ros
def test_rclpy_assignment_is_fast(ros_image):
    # Assigning bytes to a field-checked rclpy message checks every byte in Python (~0.2 s
    # for VGA colour); array.array is stored as is.
    arr = np.zeros((480, 640, 3), np.uint8)
    msg = ros_image(check_fields=True)
    t0 = time.perf_counter()
    numpy_to_image(arr, "rgb8", msg)
    assert time.perf_counter() - t0 < 0.05


@pytest.mark.ros
def test_rclpy_serialized_message_reads_back_with_rosbags(ros_image):
    serialization = pytest.importorskip("rclpy.serialization")
    typestore = rosbags_typestore()
    arr = sample("16UC1", height=3, width=5)
    raw = serialization.serialize_message(numpy_to_image(arr, "16UC1", ros_image()))
    msg = typestore.deserialize_cdr(raw, "sensor_msgs/msg/Image")
    np.testing.assert_array_equal(image_to_numpy(msg), arr)


# --- rosbags messages -------------------------------------------------------------------------

def rosbags_typestore():
    typesys = pytest.importorskip("rosbags.typesys")
    return typesys.get_typestore(typesys.Stores.ROS2_JAZZY)


def rosbags_factory(typestore):
    """rosbags messages are dataclasses without defaults: the factory fills every field."""
    types = typestore.types
    image_t = types["sensor_msgs/msg/Image"]
    header_t, time_t = types["std_msgs/msg/Header"], types["builtin_interfaces/msg/Time"]

    def make():
        return image_t(header=header_t(stamp=time_t(sec=0, nanosec=0), frame_id=""), height=0,
                       width=0, encoding="", is_bigendian=0, step=0,
                       data=np.empty(0, np.uint8))

    return make


@pytest.mark.parametrize("encoding", ALL_ENCODINGS)
def test_rosbags_roundtrip_through_cdr(encoding):
    typestore = rosbags_typestore()
    arr = sample(encoding, height=4, width=6)
    msg = numpy_to_image(arr, encoding, factory=rosbags_factory(typestore))
    assert isinstance(msg.data, np.ndarray) and msg.data.dtype == np.uint8
    raw = typestore.serialize_cdr(msg, msg.__msgtype__)
    back = typestore.deserialize_cdr(raw, msg.__msgtype__)
    view = image_to_numpy(back)
    np.testing.assert_array_equal(view, arr)
    assert np.shares_memory(view, back.data)  # zero-copy view of the deserialized buffer
    assert not view.flags.writeable  # ... which rosbags makes read-only


def test_rosbags_padded_bigendian_message():
    typestore = rosbags_typestore()
    arr = sample("mono16", seed=11)
    fake = padded_message(arr, "mono16", pad=5, bigendian=True)
    msg = rosbags_factory(typestore)()
    msg.height, msg.width, msg.encoding = fake.height, fake.width, fake.encoding
    msg.is_bigendian, msg.step = 1, fake.step
    msg.data = np.frombuffer(fake.data, np.uint8)
    raw = typestore.serialize_cdr(msg, msg.__msgtype__)
    np.testing.assert_array_equal(
        image_to_numpy(typestore.deserialize_cdr(raw, msg.__msgtype__)), arr
    )


@pytest.mark.ros
def test_rosbags_message_reads_back_with_rclpy(ros_image):
    serialization = pytest.importorskip("rclpy.serialization")
    typestore = rosbags_typestore()
    arr = sample("rgb8", height=3, width=4)
    msg = numpy_to_image(arr, "rgb8", factory=rosbags_factory(typestore))
    raw = typestore.serialize_cdr(msg, msg.__msgtype__)  # a memoryview; rclpy wants bytes
    back = serialization.deserialize_message(bytes(raw), ros_image)
    np.testing.assert_array_equal(image_to_numpy(back), arr)
