"""Tests of cldyn_ros.imaging.io: reading, writing and pairing image files."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from cldyn_ros.imaging.io import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    PairListing,
    find_pairs,
    read_color,
    read_thermal,
    write_image,
)


def _rgb(shape=(24, 32), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    img[:, :, 0] = 250  # a strong red cast, so a channel swap cannot go unnoticed
    img[:, :, 2] = 10
    return img


def test_extensions():
    assert set(IMAGE_EXTENSIONS) == {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tif", ".tiff"])
def test_color_round_trip_lossless_is_rgb(tmp_path, ext):
    img = _rgb()
    path = write_image(tmp_path / f"a{ext}", img)
    out = read_color(path)
    assert out.dtype == np.uint8 and out.shape == img.shape
    np.testing.assert_array_equal(out, img)
    # On disk the file is BGR, as every other tool expects.
    np.testing.assert_array_equal(cv2.imread(str(path))[:, :, ::-1], img)


def test_color_round_trip_jpeg(tmp_path):
    img = np.zeros((32, 32, 3), np.uint8)
    img[:] = (200, 40, 20)
    out = read_color(write_image(tmp_path / "a.jpeg", img))
    assert np.abs(out.astype(int) - img).max() < 8


@pytest.mark.parametrize("ext", [".png", ".tif", ".tiff"])
def test_thermal_16bit_round_trip(tmp_path, ext):
    img = np.random.default_rng(1).integers(7000, 9000, (20, 30), dtype=np.uint16)
    out = read_thermal(write_image(tmp_path / f"t{ext}", img))
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, img)


def test_thermal_8bit_and_colour_file_to_grey(tmp_path):
    grey = np.arange(20 * 30, dtype=np.uint16).reshape(20, 30).astype(np.uint8)
    out = read_thermal(write_image(tmp_path / "g.png", grey))
    assert out.dtype == np.uint8 and out.shape == (20, 30)
    np.testing.assert_array_equal(out, grey)
    # A colour file (e.g. a false-colour export) is converted to one channel.
    colour = np.repeat(grey[:, :, None], 3, axis=2)
    out = read_thermal(write_image(tmp_path / "c.png", colour))
    assert out.shape == (20, 30)
    np.testing.assert_array_equal(out, grey)


def test_grey_file_read_as_colour(tmp_path):
    grey = np.random.default_rng(2).integers(0, 256, (10, 12), dtype=np.uint8)
    out = read_color(write_image(tmp_path / "g.png", grey))
    assert out.shape == (10, 12, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], grey)


def test_write_creates_parent_dirs_and_accepts_hw1(tmp_path):
    path = tmp_path / "a" / "b" / "c.png"
    write_image(path, np.zeros((4, 5, 1), np.uint8))
    assert path.is_file() and read_thermal(path).shape == (4, 5)


def test_write_rejects_bad_input(tmp_path):
    img = np.zeros((4, 5), np.uint8)
    with pytest.raises(ValueError, match="unsupported extension"):
        write_image(tmp_path / "a.gif", img)
    with pytest.raises(ValueError, match="unsupported extension"):
        write_image(tmp_path / "noext", img)
    with pytest.raises(ValueError, match="16-bit"):
        write_image(tmp_path / "a.jpg", img.astype(np.uint16))
    with pytest.raises(ValueError, match="dtype"):
        write_image(tmp_path / "a.png", img.astype(np.float32))
    with pytest.raises(ValueError, match="HxW"):
        write_image(tmp_path / "a.png", np.zeros((4, 5, 2), np.uint8))
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("reader", [read_color, read_thermal])
def test_missing_and_empty_files(tmp_path, reader):
    with pytest.raises(ImageReadError, match="not found") as info:
        reader(tmp_path / "missing.png")
    assert "missing.png" in str(info.value)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty") as info:
        reader(empty)
    assert "empty.png" in str(info.value) and info.value.path == empty
    with pytest.raises(ImageReadError, match="not a regular file"):
        reader(tmp_path)


@pytest.mark.parametrize("reader", [read_color, read_thermal])
def test_truncated_jpeg(tmp_path, reader):
    img = cv2.GaussianBlur(_rgb((64, 80)), (5, 5), 0)
    path = write_image(tmp_path / "t.jpg", img)
    data = path.read_bytes()
    reader(path)  # the complete file is fine
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="truncated JPEG") as info:
        reader(path)
    assert "t.jpg" in str(info.value)
    path.write_bytes(data[:40])  # cut inside the header
    with pytest.raises(ImageReadError, match="truncated JPEG"):
        reader(path)


def test_jpeg_with_trailing_bytes_is_accepted(tmp_path):
    path = write_image(tmp_path / "t.jpg", _rgb())
    path.write_bytes(path.read_bytes() + b"\x00\x00camera-metadata")
    assert read_color(path).shape == (24, 32, 3)


@pytest.mark.parametrize("reader", [read_color, read_thermal])
def test_truncated_png_and_garbage(tmp_path, reader):
    path = write_image(tmp_path / "t.png", _rgb((40, 40)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="truncated PNG"):
        reader(path)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not an image at all")
    with pytest.raises(ImageReadError, match="decoding failed"):
        reader(junk)


def _touch_images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"x")


def test_find_pairs_folders(tmp_path):
    ir, vi = tmp_path / "ir", tmp_path / "vi"
    _touch_images(ir, ["b.png", "a.png", "c.tiff", "only_ir.png", "notes.txt", ".hidden.png"])
    _touch_images(vi, ["a.jpg", "b.PNG", "c.png", "only_vi.jpeg"])
    (vi / "sub").mkdir()
    listing = find_pairs(ir, vi)
    assert isinstance(listing, PairListing)
    assert listing.pairs == [
        ("a", ir / "a.png", vi / "a.jpg"),
        ("b", ir / "b.png", vi / "b.PNG"),
        ("c", ir / "c.tiff", vi / "c.png"),
    ]
    assert listing.ir_only == [ir / "only_ir.png"]
    assert listing.vi_only == [vi / "only_vi.jpeg"]


def test_find_pairs_files_named_after_visible(tmp_path):
    _touch_images(tmp_path, ["therm_001.png", "rgb_001.jpg"])
    listing = find_pairs(str(tmp_path / "therm_001.png"), str(tmp_path / "rgb_001.jpg"))
    assert listing.pairs == [("rgb_001", tmp_path / "therm_001.png", tmp_path / "rgb_001.jpg")]
    assert listing.ir_only == [] and listing.vi_only == []


def test_find_pairs_errors(tmp_path):
    _touch_images(tmp_path / "ir", ["a.png"])
    _touch_images(tmp_path / "vi", ["a.png", "a.jpg"])
    with pytest.raises(ValueError, match="does not exist"):
        find_pairs(tmp_path / "nope", tmp_path / "vi")
    with pytest.raises(ValueError, match="both be files or both be folders"):
        find_pairs(tmp_path / "ir" / "a.png", tmp_path / "vi")
    with pytest.raises(ValueError, match="same name"):
        find_pairs(tmp_path / "ir", tmp_path / "vi")
