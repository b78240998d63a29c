"""RejectionCounter and the causes image conversion reports."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from cldyn_ros.streams.image_msgs import ImageMessageError, image_to_numpy, numpy_to_image
from cldyn_ros.streams.rejections import RejectionCounter


class _Msg:
    def __init__(self, height=2, width=3, encoding="mono8", step=3, data=bytes(6),
                 is_bigendian=0):
        self.height, self.width, self.encoding = height, width, encoding
        self.step, self.data, self.is_bigendian = step, data, is_bigendian


def test_counts_by_cause_sorted_and_total():
    counter = RejectionCounter()
    assert counter.counts() == {} and counter.total == 0
    counter.add("thermal_encoding")
    counter.add("colour_short_data", 3)
    counter.add("thermal_encoding")
    assert counter.counts() == {"colour_short_data": 3, "thermal_encoding": 2}
    assert list(counter.counts()) == sorted(counter.counts())
    assert counter.total == 5
    counts = counter.counts()
    counts["x"] = 1  # a copy
    assert "x" not in counter.counts()
    with pytest.raises(ValueError):
        counter.add("x", -1)


def test_counts_are_exact_across_threads():
    counter = RejectionCounter()

    def work(key):
        for _ in range(5000):
            counter.add(key)

    threads = [threading.Thread(target=work, args=(k,)) for k in ("a", "b", "a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counter.counts() == {"a": 10000, "b": 10000}


@pytest.mark.parametrize(("msg", "kind"), [
    (_Msg(encoding="nv21"), "encoding"),
    (_Msg(height=0), "zero_size"),
    (_Msg(step=2), "step"),
    (_Msg(data=bytes(5)), "short_data"),
])
def test_image_errors_name_their_cause(msg, kind):
    with pytest.raises(ImageMessageError) as info:
        image_to_numpy(msg)
    assert info.value.kind == kind


def test_array_errors_name_their_cause():
    with pytest.raises(ImageMessageError) as info:
        numpy_to_image(np.zeros((2, 2), np.float32), "mono8", _Msg())
    assert info.value.kind == "dtype"
    with pytest.raises(ImageMessageError) as info:
        numpy_to_image(np.zeros((2, 2, 2), np.uint8), "rgb8", _Msg())
    assert info.value.kind == "shape"
    assert ImageMessageError("x").kind == "invalid"
