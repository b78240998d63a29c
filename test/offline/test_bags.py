"""Bags written and read with rosbags: round trips, rclpy compatibility, stamps, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cldyn_ros.cli import main
from cldyn_ros.imaging.synthetic import SceneGenerator, generate_pairs, write_pairs
from cldyn_ros.offline.bags import (
    IMAGE_TYPE,
    BagError,
    ImageBagWriter,
    StreamSpec,
    bag_info,
    iter_messages,
    read_images,
    stream_stamps,
    synthetic_stream,
    write_stream,
)

H, W = 48, 64
TOPICS = ["/thermal/image", "/rgb/image"]


def make_bag(path: Path, seconds: float = 0.5, storage: str = "mcap", **spec: object) -> Path:
    stream_spec = StreamSpec(**spec)  # type: ignore[arg-type]
    write_stream(path, synthetic_stream(seconds, stream_spec, H, W), storage=storage,
                 rgb_encoding=stream_spec.rgb_encoding)
    return path


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
@pytest.mark.parametrize("bits", [8, 16])
def test_round_trip(tmp_path: Path, storage: str, bits: int) -> None:
    spec = StreamSpec(rgb_rate=10, thermal_rate=20, jitter_ms=1.0, thermal_bits=bits)
    bag = make_bag(tmp_path / "bag", 0.5, storage, rgb_rate=10, thermal_rate=20, jitter_ms=1.0,
                   thermal_bits=bits)
    info = bag_info(bag)
    assert info.storage == storage
    assert info.topics == {"/thermal/image": (IMAGE_TYPE, 10), "/rgb/image": (IMAGE_TYPE, 5)}
    expected = {(f.stream, f.stamp_ns): f for f in spec.frames(0.5)}
    gen = SceneGenerator(0, H, W, "night", bits)
    records = list(read_images(bag, TOPICS))
    assert len(records) == 15
    assert [r.log_ns for r in records] == sorted(r.log_ns for r in records)
    for rec in records:
        stream = "thermal" if rec.topic == "/thermal/image" else "rgb"
        frame = expected[(stream, rec.stamp_ns)]
        assert rec.log_ns == frame.log_ns > rec.stamp_ns
        pair = gen.render(frame.t)
        if stream == "thermal":
            assert rec.encoding == ("mono16" if bits == 16 else "mono8")
            assert rec.image.dtype == (np.uint16 if bits == 16 else np.uint8)
            np.testing.assert_array_equal(rec.image, pair.ir)
            assert rec.frame_id == "thermal_camera"
        else:
            assert rec.encoding == "rgb8"
            np.testing.assert_array_equal(rec.image, pair.vis)


@pytest.mark.parametrize("distro", ["humble", "jazzy", "kilted"])
def test_distros_and_bgr(tmp_path: Path, distro: str) -> None:
    spec = StreamSpec(rgb_rate=10, thermal_rate=10, rgb_encoding="bgr8")
    write_stream(tmp_path / "b", synthetic_stream(0.2, spec, H, W), storage="sqlite3",
                 distro=distro, rgb_encoding="bgr8")
    rgb = [r for r in read_images(tmp_path / "b", TOPICS) if r.topic == "/rgb/image"]
    assert rgb and rgb[0].encoding == "bgr8"
    vis = SceneGenerator(0, H, W).render(0.0).vis
    np.testing.assert_array_equal(rgb[0].image, vis[..., ::-1])


@pytest.mark.ros
@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_rclpy_deserialises_bag_messages(tmp_path: Path, storage: str) -> None:
    serialization = pytest.importorskip("rclpy.serialization")
    sensor_msgs = pytest.importorskip("sensor_msgs.msg")
    from cldyn_ros.streams.image_msgs import image_to_numpy, stamp_to_ns

    bag = make_bag(tmp_path / "bag", 0.3, storage, rgb_rate=10, thermal_rate=10,
                   thermal_bits=16)
    decoded = {(r.topic, r.stamp_ns): r for r in read_images(bag, TOPICS)}
    n = 0
    for topic, msgtype, _, raw in iter_messages(bag):
        assert msgtype == IMAGE_TYPE
        msg = serialization.deserialize_message(bytes(raw), sensor_msgs.Image)
        rec = decoded[(topic, stamp_to_ns(msg.header.stamp))]
        assert msg.encoding == rec.encoding and msg.header.frame_id == rec.frame_id
        np.testing.assert_array_equal(image_to_numpy(msg), rec.image)
        # Same length as rclpy's own serialisation (padding bytes may differ: CDR leaves
        # them unspecified).
        assert len(serialization.serialize_message(msg)) == len(raw)
        n += 1
    assert n == 6


def test_stream_stamps_jitter_gaps_and_offsets() -> None:
    rng = np.random.default_rng(1)
    frames = stream_stamps(2.0, 30, "rgb", jitter_ms=5.0, rng=rng, gaps=[(0.5, 1.0)])
    stamps = [f.stamp_ns for f in frames]
    assert all(b > a for a, b in zip(stamps, stamps[1:], strict=False))
    assert len(frames) == 60 - 15
    assert not any(0.5 <= f.t < 1.0 for f in frames)
    offsets = [(f.stamp_ns - 1_704_067_200_000_000_000) / 1e9 - f.t for f in frames]
    assert 0.002 < np.std(offsets) < 0.008  # about the 5 ms of jitter asked for
    assert all(2_500_000 <= f.log_ns - f.stamp_ns < 6_000_000 for f in frames)
    spec = StreamSpec(rgb_rate=30, thermal_rate=60, thermal_offset_ms=7)
    thermal = [f for f in spec.frames(1.0) if f.stream == "thermal"]
    assert len(thermal) == 60 and abs(thermal[0].t - 0.007) < 1e-9
    with pytest.raises(ValueError, match="rate"):
        stream_stamps(1.0, 0, "rgb")


def test_cli_from_images_folders_and_synthetic(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    ir_dir, vi_dir = write_pairs(generate_pairs(4, seed=2, height=H, width=W), tmp_path / "pairs")
    bag = tmp_path / "folder_bag"
    assert main(["bag", "from-images", "--ir", str(ir_dir), "--vi", str(vi_dir), "--out",
                 str(bag), "--storage", "sqlite3", "--rgb-rate", "10", "--thermal-rate", "20",
                 "--jitter-ms", "1", "--thermal-bits", "16", "--distro", "humble",
                 "--no-progress"]) == 0
    info = bag_info(bag)
    assert info.storage == "sqlite3"
    assert info.topics["/rgb/image"][1] == 4 and info.topics["/thermal/image"][1] == 8
    records = list(read_images(bag, TOPICS))
    thermal = [r for r in records if r.topic == "/thermal/image"]
    assert thermal[0].encoding == "mono16" and thermal[0].image.dtype == np.uint16

    syn = tmp_path / "syn"
    assert main(["bag", "from-images", "--synthetic", "0.5", "--size", "40", "56", "--out",
                 str(syn), "--rgb-rate", "10", "--thermal-rate", "30", "--gap",
                 "thermal:0.1:0.3", "--no-progress", "--thermal-topic", "/ir"]) == 0
    info = bag_info(syn)
    assert info.storage == "mcap"
    assert info.topics["/rgb/image"][1] == 5 and info.topics["/ir"][1] == 15 - 6
    capsys.readouterr()
    assert main(["bag", "info", str(syn)]) == 0
    out = capsys.readouterr().out
    assert "/ir  sensor_msgs/msg/Image  9" in out


def test_cli_from_images_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "b")
    assert "--synthetic" in one_line_error(capsys, ["bag", "from-images", "--out", out])
    ir_dir, vi_dir = write_pairs(generate_pairs(1, height=H, width=W), tmp_path / "p")
    assert "not both" in one_line_error(capsys, [
        "bag", "from-images", "--synthetic", "1", "--ir", str(ir_dir), "--vi", str(vi_dir),
        "--out", out])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no image pairs" in one_line_error(capsys, [
        "bag", "from-images", "--ir", str(empty), "--vi", str(empty), "--out", out])
    assert main(["bag", "from-images", "--synthetic", "0.1", "--size", "32", "32", "--out", out,
                 "--no-progress"]) == 0
    assert "already exists" in one_line_error(capsys, [
        "bag", "from-images", "--synthetic", "0.1", "--out", out])
    assert main(["bag", "from-images", "--synthetic", "0.1", "--size", "32", "32", "--out", out,
                 "--no-progress", "--overwrite"]) == 0
    with pytest.raises(SystemExit) as exc:
        main(["bag", "from-images", "--synthetic", "1", "--out", out, "--gap", "ir:0:1"])
    assert exc.value.code == 2


def test_reading_bad_bags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(BagError, match="does not exist"):
        bag_info(tmp_path / "missing")
    (tmp_path / "notabag").mkdir()
    with pytest.raises(BagError, match="no metadata.yaml"):
        bag_info(tmp_path / "notabag")
    (tmp_path / "file.txt").write_bytes(b"x")
    with pytest.raises(BagError, match="is a file"):
        bag_info(tmp_path / "file.txt")
    (tmp_path / "file.db3").write_bytes(b"x")  # a bare storage file is read directly
    with pytest.raises(BagError, match="not an SQLite database"):
        bag_info(tmp_path / "file.db3")
    broken = make_bag(tmp_path / "broken", 0.1, "sqlite3", rgb_rate=10, thermal_rate=10)
    (broken / "metadata.yaml").write_text("rosbag2_bagfile_information: [oops")
    info = bag_info(broken)  # the database is intact: read without the metadata
    assert "cannot open bag" in info.damaged and "salvaged 2 complete" in info.damaged
    assert main(["bag", "info", str(broken)]) == 0
    assert "damaged: cannot open bag" in capsys.readouterr().err
    (next(broken.glob("*.db3"))).write_bytes(b"garbage")
    with pytest.raises(BagError, match="not an SQLite database"):
        bag_info(broken)
    assert "not an SQLite database" in one_line_error(capsys, ["bag", "info", str(broken)])

    other = tmp_path / "other"
    with ImageBagWriter(other, "sqlite3") as writer:
        store = writer.typestore
        msg = store.types["std_msgs/msg/String"](data="hello")
        writer.write_raw("/chatter", 1, store.serialize_cdr(msg, "std_msgs/msg/String"),
                         "std_msgs/msg/String")
        writer.add_topic("/rgb/image")
    with pytest.raises(BagError, match="'/chatter' has message type 'std_msgs/msg/String'"):
        list(read_images(other, ["/chatter"]))
    with pytest.raises(BagError, match="'/thermal/image' is not in bag.*image topics in the "
                                       "bag: /rgb/image"):
        list(read_images(other, ["/thermal/image"]))
    with pytest.raises(BagError, match="no messages"):
        list(read_images(other, ["/rgb/image"]))
    with pytest.raises(BagError, match="unknown to the kilted type store"):
        with ImageBagWriter(tmp_path / "x", "mcap") as writer:
            writer.add_topic("/a", "my_msgs/msg/Thing")


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_truncated_bag_is_a_bag_error(tmp_path: Path, storage: str) -> None:
    """Never anything but a BagError (sqlite3: cannot open; MCAP: salvaged, then an error
    where the damage starts)."""
    bag = make_bag(tmp_path / "bag", 1.0, storage, rgb_rate=30, thermal_rate=30)
    data = next(p for p in bag.iterdir() if p.suffix in (".mcap", ".db3"))
    raw = data.read_bytes()
    data.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(BagError, match="truncated or corrupt|cannot open bag") as exc:
        for _ in read_images(bag, TOPICS):
            pass
    assert "\n" not in str(exc.value)


def test_help_of_bag_eval_and_replay_commands(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["bag", "from-images", "--help"], ["bag", "info", "--help"],
                 ["eval", "bag", "--help"], ["eval", "suite", "--help"], ["replay", "--help"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0
        assert "usage:" in capsys.readouterr().out


def test_truncated_mcap_is_salvaged_up_to_the_damage(tmp_path: Path) -> None:
    """An interrupted recording: the MCAP file has no footer (and maybe no metadata.yaml)."""
    bag = make_bag(tmp_path / "bag", 1.0, "mcap", rgb_rate=30, thermal_rate=30)
    intact = [(r.topic, r.stamp_ns) for r in read_images(bag, TOPICS)]
    data = next(bag.glob("*.mcap"))
    # The bare file of an intact bag reads completely, without metadata.yaml.
    info = bag_info(data)
    assert info.damaged is None and info.message_count == 60
    assert [m[0] for m in iter_messages(data)] == [t for t, _ in intact]

    raw = data.read_bytes()
    data.write_bytes(raw[: len(raw) // 2])
    info = bag_info(bag)
    assert 20 <= info.message_count < 60
    assert "salvaged" in info.damaged and "File end magic" in info.damaged
    got = []
    with pytest.raises(BagError, match="truncated or corrupt: read .* intact message"):
        for rec in read_images(bag, TOPICS):
            got.append((rec.topic, rec.stamp_ns))
    assert got == intact[: len(got)] and len(got) == info.message_count
    (bag / "metadata.yaml").unlink()
    assert "no metadata.yaml" in bag_info(bag).damaged
    # Cut inside the first records: nothing to salvage, and the error says why.
    data.write_bytes(raw[:100])
    with pytest.raises(BagError, match="not in bag.*the bag is damaged"):
        list(read_images(bag, TOPICS))
    data.write_bytes(b"not an mcap file at all")
    with pytest.raises(BagError, match="not an MCAP file"):
        bag_info(bag)


# ------------------------------------------------------------------ damaged bags: salvage


def _storage_file(bag: Path) -> Path:
    return next(p for p in bag.iterdir() if p.suffix in (".mcap", ".db3"))


def _read_all(bag: Path) -> tuple[list[tuple[str, int]], BagError | None]:
    """Every image record read before the error (if any), and the error."""
    got = []
    try:
        for rec in read_images(bag, TOPICS):
            got.append((rec.topic, rec.stamp_ns))
    except BagError as e:
        assert "\n" not in str(e)
        return got, e
    return got, None


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_bag_without_metadata_is_read_completely(tmp_path: Path, storage: str) -> None:
    """A recorder killed before it wrote metadata.yaml: the storage file is complete."""
    bag = make_bag(tmp_path / "bag", 1.0, storage, rgb_rate=30, thermal_rate=30)
    intact, _ = _read_all(bag)
    (bag / "metadata.yaml").unlink()
    info = bag_info(bag)
    assert "no metadata.yaml" in info.damaged and "salvaged 60 complete" in info.damaged
    assert info.storage == storage and info.topics["/rgb/image"] == (IMAGE_TYPE, 30)
    got, error = _read_all(bag)
    assert got == intact and len(got) == 60
    if storage == "sqlite3":
        assert error is None  # the database itself is whole
    assert bag_info(_storage_file(bag)).damaged is None  # the bare file: nothing missing


def test_truncated_sqlite3_is_salvaged_up_to_the_cut(tmp_path: Path) -> None:
    bag = make_bag(tmp_path / "bag", 1.0, "sqlite3", rgb_rate=30, thermal_rate=30)
    intact, _ = _read_all(bag)
    data = _storage_file(bag)
    raw = data.read_bytes()
    data.write_bytes(raw[: len(raw) // 2])
    info = bag_info(bag)
    assert "cannot open bag" in info.damaged and "cut off at byte" in info.damaged
    assert 15 <= info.message_count < 60
    got, error = _read_all(bag)
    assert error is not None and "truncated or corrupt" in str(error)
    assert f"read {len(got)} intact message(s)" in str(error)
    assert "cut off at byte" in str(error)
    assert got == intact[: len(got)] and len(got) == info.message_count
    # Cut inside the first pages: the topics are gone too; the error says so.
    data.write_bytes(raw[:2000])
    with pytest.raises(BagError, match="not in bag.*the bag is damaged.*topics table"):
        list(read_images(bag, TOPICS))


def test_corrupt_sqlite3_page_costs_only_its_messages(tmp_path: Path) -> None:
    """A bad page in the middle: the regular reader fails part-way; the salvage reads on
    past it, so every readable message is read once, in order."""
    bag = make_bag(tmp_path / "bag", 1.0, "sqlite3", rgb_rate=30, thermal_rate=30)
    intact, _ = _read_all(bag)
    data = _storage_file(bag)
    raw = bytearray(data.read_bytes())
    page = 4096
    middle = (len(raw) // page // 2) * page
    raw[middle:middle + page] = b"\xff" * page
    data.write_bytes(bytes(raw))
    got, error = _read_all(bag)
    assert error is not None and "truncated or corrupt" in str(error)
    assert len(set(got)) == len(got), "a message was read twice"
    assert set(got) <= set(intact)
    assert len(got) >= 50, len(got)  # a page holds a few 64x48 images at most
    assert sorted(got, key=intact.index) == got


def test_corrupt_mcap_chunk_costs_only_that_chunk(tmp_path: Path) -> None:
    """A record length inside the second of three chunks is garbage: the regular reader
    fails there; the salvage skips the rest of that chunk and reads the third."""
    import struct

    bag = tmp_path / "bag"
    write_stream(bag, synthetic_stream(2.0, StreamSpec(rgb_rate=30, thermal_rate=30), 96,
                                       128), storage="mcap")
    intact = [(t, n) for t, _, n, _ in iter_messages(bag)]
    data = _storage_file(bag)
    raw = bytearray(data.read_bytes())
    chunks, pos = [], 8
    while pos + 9 <= len(raw) and raw[pos] != 0x02:  # up to the footer
        (length,) = struct.unpack_from("<Q", raw, pos + 1)
        if raw[pos] == 0x06:
            chunks.append(pos)
        pos += 9 + length
    assert len(chunks) >= 3, "want several chunks"
    body = chunks[1] + 9
    (compression_len,) = struct.unpack_from("<I", raw, body + 28)
    first_record = body + 28 + 4 + compression_len + 8
    raw[first_record + 1:first_record + 9] = struct.pack("<Q", 10**12)
    data.write_bytes(bytes(raw))
    got = []
    with pytest.raises(BagError, match="truncated or corrupt.*inside a chunk"):
        for topic, _, log_ns, _ in iter_messages(bag):
            got.append((topic, log_ns))
    assert len(set(got)) == len(got) and set(got) < set(intact)
    assert got[-1] == intact[-1], "the chunk after the damage was not read"


# ------------------------------------------------------------------ output bags: all or nothing


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_a_crash_while_writing_leaves_no_bag(tmp_path: Path, storage: str,
                                             caplog: pytest.LogCaptureFixture) -> None:
    def frames_then_crash():
        for n, item in enumerate(synthetic_stream(1.0, StreamSpec(), H, W)):
            if n == 20:
                raise RuntimeError("camera driver crashed")
            yield item

    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="camera driver crashed"):
        write_stream(out, frames_then_crash(), storage=storage)
    assert list(tmp_path.iterdir()) == []  # neither the bag nor its staging folder
    assert f"bag '{out}' was not written" in caplog.text
    # An existing bag is replaced only by a complete one.
    make_bag(out, 0.2, storage, rgb_rate=10, thermal_rate=10)
    before = [(r.topic, r.stamp_ns) for r in read_images(out, TOPICS)]
    with pytest.raises(RuntimeError):
        write_stream(out, frames_then_crash(), storage=storage, overwrite=True)
    assert [(r.topic, r.stamp_ns) for r in read_images(out, TOPICS)] == before
    assert bag_info(out).damaged is None
    counts = write_stream(out, synthetic_stream(0.5, StreamSpec(), H, W), storage=storage,
                          overwrite=True)
    assert bag_info(out).message_count == sum(counts.values()) != len(before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert next(p for p in out.iterdir() if p.suffix != ".yaml").stem == "out"


def test_ctrl_c_during_bag_from_images_leaves_no_bag(tmp_path: Path) -> None:
    """SIGINT to a real `cldyn bag from-images` run while it writes: exit 130, the target
    does not exist, the staging folder is gone, and stderr says so."""
    import os
    import signal
    import subprocess
    import sys
    import time

    repo = Path(__file__).resolve().parents[2]
    out = tmp_path / "drive"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cldyn_ros.cli", "bag", "from-images", "--synthetic", "600",
         "--out", str(out), "--no-progress"],
        cwd=repo, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
        # As from a terminal: a run started in the background by a non-interactive shell
        # (nohup ... &) passes SIGINT on as ignored, and the child would never see it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 90
        staged = []
        while time.monotonic() < deadline and proc.poll() is None:
            staged = [p for p in tmp_path.iterdir() if ".partial-" in p.name]
            if staged and any(f.stat().st_size > 0 for f in staged[0].rglob("*.mcap")):
                break
            time.sleep(0.05)
        assert staged, "the writer never started"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "was not written" in err, err
    assert "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------- compressed images and camera_info
@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_compressed_bag_with_camera_info(tmp_path: Path, storage: str) -> None:
    """16-bit PNG thermal + JPEG colour on <topic>/compressed, CameraInfo beside them."""
    from cldyn_ros.offline.bags import (
        CAMERA_INFO_TYPE,
        COMPRESSED_TYPE,
        decode_camera_info,
        typestore_for,
    )
    from cldyn_ros.streams.camera_info import pinhole_camera_info

    spec = StreamSpec(rgb_rate=10, thermal_rate=20, thermal_bits=16)
    counts = write_stream(tmp_path / "bag", synthetic_stream(0.5, spec, H, W), storage=storage,
                          compressed=True, camera_info={"rgb": None, "thermal": None})
    info = bag_info(tmp_path / "bag")
    assert info.topics == {
        "/thermal/image/compressed": (COMPRESSED_TYPE, 10),
        "/rgb/image/compressed": (COMPRESSED_TYPE, 5),
        "/thermal/camera_info": (CAMERA_INFO_TYPE, 10),
        "/rgb/camera_info": (CAMERA_INFO_TYPE, 5),
    } and counts["/rgb/camera_info"] == 5
    gen = SceneGenerator(0, H, W, "night", 16)
    frames = {(f.stream, f.stamp_ns): f for f in spec.frames(0.5)}
    records = list(read_images(tmp_path / "bag", ["/thermal/image/compressed",
                                                  "/rgb/image/compressed"]))
    assert len(records) == 15
    for rec in records:
        stream = "thermal" if rec.topic.startswith("/thermal") else "rgb"
        pair = gen.render(frames[(stream, rec.stamp_ns)].t)
        assert rec.msgtype == COMPRESSED_TYPE
        if stream == "thermal":  # PNG: lossless, 16 bits kept
            assert rec.encoding == "mono16" and rec.image.dtype == np.uint16
            np.testing.assert_array_equal(rec.image, pair.ir)
        else:  # JPEG: lossy; stored BGR ("compressed bgr8"), handed back as rgb8
            import cv2

            assert rec.encoding == "rgb8"
            msg = typestore_for("kilted").deserialize_cdr(rec.raw, COMPRESSED_TYPE)
            assert msg.format == "rgb8; jpeg compressed bgr8"
            bgr = cv2.imdecode(np.asarray(msg.data), cv2.IMREAD_UNCHANGED)
            np.testing.assert_array_equal(rec.image, bgr[..., ::-1])
            assert np.abs(rec.image.astype(int) - pair.vis).mean() < 10
    store = typestore_for("kilted")
    infos = [decode_camera_info(raw, store, t) for t, _, _, raw in
             iter_messages(tmp_path / "bag", ["/rgb/camera_info"])]
    rgb_stamps = sorted(r.stamp_ns for r in records if r.topic.startswith("/rgb"))
    assert [s for s, _, _ in infos] == rgb_stamps
    assert all(f == "rgb_camera" and c == pinhole_camera_info(H, W) for _, f, c in infos)


@pytest.mark.ros
def test_rclpy_deserialises_compressed_and_camera_info(tmp_path: Path) -> None:
    serialization = pytest.importorskip("rclpy.serialization")
    sensor_msgs = pytest.importorskip("sensor_msgs.msg")
    from cldyn_ros.streams.camera_info import CameraInfoData, pinhole_camera_info
    from cldyn_ros.streams.compressed import decode_compressed

    spec = StreamSpec(rgb_rate=10, thermal_rate=10, thermal_bits=16)
    write_stream(tmp_path / "bag", synthetic_stream(0.2, spec, H, W), compressed=True,
                 camera_info={"rgb": None})
    seen = set()
    for topic, msgtype, _, raw in iter_messages(tmp_path / "bag"):
        seen.add(topic)
        if msgtype.endswith("CameraInfo"):
            msg = serialization.deserialize_message(bytes(raw), sensor_msgs.CameraInfo)
            assert CameraInfoData.from_message(msg) == pinhole_camera_info(H, W)
        else:
            msg = serialization.deserialize_message(bytes(raw), sensor_msgs.CompressedImage)
            decoded = decode_compressed(msg)
            assert decoded.image.shape[:2] == (H, W)
    assert seen == {"/thermal/image/compressed", "/rgb/image/compressed", "/rgb/camera_info"}


def test_cli_from_images_compressed_with_calibration(tmp_path: Path) -> None:
    from cldyn_ros.offline.bags import typestore_for
    from cldyn_ros.streams.camera_info import camera_info_from_yaml

    calib = tmp_path / "rgb.yaml"
    calib.write_text(f"""image_width: {W}
image_height: {H}
camera_matrix: {{rows: 3, cols: 3, data: [50, 0, 32, 0, 50, 24, 0, 0, 1]}}
distortion_model: plumb_bob
distortion_coefficients: {{rows: 1, cols: 5, data: [0.1, 0, 0, 0, 0]}}
projection_matrix: {{rows: 3, cols: 4, data: [50, 0, 32, 0, 0, 50, 24, 0, 0, 0, 1, 0]}}
""")
    out = tmp_path / "bag"
    assert main(["bag", "from-images", "--synthetic", "0.2", "--size", str(H), str(W),
                 "--out", str(out), "--compressed", "--rgb-calibration", str(calib),
                 "--thermal-bits", "16", "--storage", "sqlite3", "--no-progress"]) == 0
    topics = bag_info(out).topics
    assert set(topics) == {"/thermal/image/compressed", "/rgb/image/compressed",
                           "/thermal/camera_info", "/rgb/camera_info"}
    from cldyn_ros.offline.bags import decode_camera_info

    store = typestore_for("kilted")
    raw = next(r for *_, r in iter_messages(out, ["/rgb/camera_info"]))
    assert decode_camera_info(raw, store)[2] == camera_info_from_yaml(calib)
