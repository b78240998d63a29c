"""Offline bag evaluation: pairing statistics, batched multi-task fusion, reports, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import make_loaded, make_model, task_vectors

from cldyn_ros.cli import main
from cldyn_ros.inference.checkpoint import save_checkpoint
from cldyn_ros.inference.engine import FusionEngine
from cldyn_ros.offline.bag_eval import BagEvalSettings, evaluate_bag, pair_bag
from cldyn_ros.offline.bags import (
    ImageBagWriter,
    StreamSpec,
    read_images,
    synthetic_stream,
    write_stream,
)
from cldyn_ros.streams.pairing import ApproximateTimePairer, Frame

H, W = 48, 64
FAST = ("EN", "SD", "Qabf")


def make_bag(path: Path, seconds: float = 1.0, storage: str = "mcap", **spec: object) -> Path:
    stream_spec = StreamSpec(**spec)  # type: ignore[arg-type]
    write_stream(path, synthetic_stream(seconds, stream_spec, H, W), storage=storage)
    return path


@pytest.fixture(scope="module")
def engine() -> FusionEngine:
    return FusionEngine(make_loaded(), device="cpu")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_checkpoint(path, make_model(), task_vectors(), {"trained_on": "random test weights"})
    return path


@pytest.fixture(scope="module")
def small_bag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bag(tmp_path_factory.mktemp("bags") / "small", 1.0, "mcap", rgb_rate=10,
                    thermal_rate=20, jitter_ms=1.0)


def cli_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def expected_stats(spec: StreamSpec, seconds: float, slop: float = 0.02) -> dict[str, int]:
    """Pairing statistics straight from the generated stamps (no bag involved)."""
    pairer = ApproximateTimePairer(slop)
    for f in spec.frames(seconds):
        frame = Frame(f.stamp_ns, None)
        (pairer.add_thermal if f.stream == "thermal" else pairer.add_color)(frame)
    pairer.flush()
    return pairer.stats.as_dict()


def test_multi_task_report(small_bag: Path, engine: FusionEngine, tmp_path: Path) -> None:
    settings = BagEvalSettings(tasks=("none", "detection", "segmentation"), progress=False,
                               batch_size=4)
    report = evaluate_bag(small_bag, engine, settings, tmp_path / "out", model_label="tiny")
    assert report["pairing"]["pairs"] == 10 == report["frames"]["fused"]
    assert report["pairing"]["color_unmatched"] == 0
    assert report["warnings"] == []
    assert set(report["summary"]) == {"none", "detection", "segmentation"}
    from cldyn_ros.metrics import METRIC_NAMES

    assert set(report["summary"]["detection"]) == set(METRIC_NAMES)
    for record in report["per_pair"]:
        assert set(record["metrics"]) == {"none", "detection", "segmentation"}
        assert abs(record["gap_ms"]) <= 20
        assert {"preprocess", "fuse", "postprocess", "decode", "total"} <= set(
            record["timings_ms"])
    # Compensation changes the image, so the task rows differ.
    assert report["summary"]["none"]["SD"]["mean"] != report["summary"]["detection"]["SD"][
        "mean"]
    out = tmp_path / "out"
    for name in ("report.json", "report.md", "metrics_over_time.png", "latency_histogram.png",
                 "contact_sheet.png"):
        assert (out / name).stat().st_size > 0, name
    loaded = json.loads((out / "report.json").read_text())
    assert loaded["pairing"]["pairs"] == 10 and loaded["mode"] == "offline"
    md = (out / "report.md").read_text()
    assert "| detection |" in md and "## Latency per stage" in md and "none\n" in md


def test_metrics_match_a_direct_computation(small_bag: Path, engine: FusionEngine) -> None:
    """Batched scoring gives the numbers of scoring each pair on its own."""
    from cldyn_ros.metrics import fusion_metrics
    from cldyn_ros.offline.bag_eval import image_luminance

    settings = BagEvalSettings(tasks=("detection",), metrics=FAST, progress=False,
                               batch_size=3)
    report = evaluate_bag(small_bag, engine, settings)
    first = report["per_pair"][0]
    records = {r.stamp_ns: r for r in read_images(small_bag, ["/thermal/image", "/rgb/image"])}
    thermal, color = records[first["thermal_stamp_ns"]], records[first["stamp_ns"]]
    fresh = FusionEngine(make_loaded(), device="cpu")
    result = fresh.fuse(thermal.image.copy(), color.image.copy(), ["detection"])
    fused = image_luminance(result.images["detection"])
    direct = fusion_metrics(fused, result.ir, result.vis_y, FAST)
    for k in FAST:
        assert first["metrics"]["detection"][k] == pytest.approx(float(direct[k][0]), rel=1e-5)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_pairing_statistics_with_gaps_and_jitter(tmp_path: Path, storage: str) -> None:
    spec = dict(rgb_rate=20, thermal_rate=40, jitter_ms=3.0, thermal_gaps=[(0.3, 0.6)],
                rgb_gaps=[(1.2, 1.3)], seed=4)
    bag = make_bag(tmp_path / "gappy", 1.5, storage, **spec)
    pairs, stats, warnings = pair_bag(bag, "/thermal/image", "/rgb/image", slop=0.02)
    assert warnings == []
    assert stats == expected_stats(StreamSpec(**spec), 1.5)  # type: ignore[arg-type]
    assert stats["color_received"] == 30 - 2 and stats["thermal_received"] == 60 - 12
    # The colour frames inside the thermal gap (0.3-0.6 s) have no partner.
    assert 5 <= stats["color_unmatched"] <= 7
    assert stats["pairs"] + stats["color_unmatched"] == stats["color_received"]
    assert all(abs(p.gap_ns) <= 20_000_000 for p in pairs)
    report_stats = evaluate_bag(bag, FusionEngine(make_loaded(), device="cpu"),
                                BagEvalSettings(metrics=(), progress=False))["pairing"]
    assert {k: report_stats[k] for k in stats} == stats


def test_sixteen_bit_bgr_bag_and_output_bag(tmp_path: Path, engine: FusionEngine) -> None:
    spec = StreamSpec(rgb_rate=10, thermal_rate=10, thermal_bits=16, rgb_encoding="bgr8")
    bag = tmp_path / "b16"
    write_stream(bag, synthetic_stream(0.5, spec, H, W), storage="sqlite3",
                 rgb_encoding="bgr8")
    settings = BagEvalSettings(tasks=("none", "detection"), metrics=FAST, write_bag=True,
                               progress=False)
    report = evaluate_bag(bag, engine, settings, tmp_path / "ev")
    assert report["pairing"]["pairs"] == 5
    out_bag = Path(report["output_bag"]["path"])
    topics = ["/fused/none/image", "/fused/detection/image", "/thermal/image", "/rgb/image"]
    records = list(read_images(out_bag, topics))
    by_topic: dict[str, list] = {}
    for r in records:
        by_topic.setdefault(r.topic, []).append(r)
    assert {t: len(v) for t, v in by_topic.items()} == {
        "/fused/none/image": 5, "/fused/detection/image": 5, "/thermal/image": 5,
        "/rgb/image": 5}
    fused = by_topic["/fused/detection/image"][0]
    assert fused.encoding == "bgr8" and fused.image.shape == (H, W, 3)
    assert fused.stamp_ns == by_topic["/rgb/image"][0].stamp_ns
    assert by_topic["/thermal/image"][0].image.dtype == np.uint16


def test_cli_eval_bag(small_bag: Path, model_file: Path, tmp_path: Path,
                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rep"
    assert main(["eval", "bag", str(small_bag), "--model", str(model_file), "--tasks",
                 "none,detection", "--metrics", "EN,SD", "--out", str(out), "--no-progress",
                 "--device", "cpu", "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "10 pairs fused" in text and "detection: EN" in text
    assert json.loads((out / "report.json").read_text())["settings"]["tasks"] == [
        "none", "detection"]


def test_cli_error_paths(small_bag: Path, model_file: Path, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--model", str(model_file), "--no-progress", "--metrics", "EN"]
    err = cli_error(capsys, ["eval", "bag", str(small_bag), "--thermal-topic", "/ir", *base])
    assert "topic '/ir' is not in bag" in err and "/thermal/image" in err
    err = cli_error(capsys, ["eval", "bag", str(tmp_path / "nope"), *base])
    assert "does not exist" in err
    err = cli_error(capsys, ["eval", "bag", str(small_bag), "--tasks", "flying", *base])
    assert "unknown task 'flying'" in err
    err = cli_error(capsys, ["eval", "bag", str(small_bag), "--metrics", "XYZ",
                             "--model", str(model_file)])
    assert "unknown metric" in err

    other = tmp_path / "strings"
    with ImageBagWriter(other, "mcap") as writer:
        store = writer.typestore
        msg = store.types["std_msgs/msg/String"](data="hi")
        for topic in ("/thermal/image", "/rgb/image"):
            writer.write_raw(topic, 5, store.serialize_cdr(msg, "std_msgs/msg/String"),
                             "std_msgs/msg/String")
    err = cli_error(capsys, ["eval", "bag", str(other), *base])
    assert "has message type 'std_msgs/msg/String', not sensor_msgs/msg/Image" in err

    garbage = make_bag(tmp_path / "garbage", 0.5, "sqlite3", rgb_rate=10, thermal_rate=10)
    next(garbage.glob("*.db3")).write_bytes(b"not a database")
    err = cli_error(capsys, ["eval", "bag", str(garbage), *base])
    assert "not an SQLite database" in err


def test_truncated_mcap_is_evaluated_up_to_the_damage(tmp_path: Path, model_file: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    bag = make_bag(tmp_path / "cut", 1.0, "mcap", rgb_rate=10, thermal_rate=20)
    data = next(bag.glob("*.mcap"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size * 2 // 3])
    out = tmp_path / "rep"
    assert main(["eval", "bag", str(bag), "--model", str(model_file), "--out", str(out),
                 "--no-progress", "--metrics", "EN"]) == 0
    assert "warning: bag" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert 3 <= report["pairing"]["pairs"] < 10
    assert report["bag"]["damaged"]
    assert any("every intact message" in w for w in report["warnings"])


@pytest.mark.parametrize("damage", ["cut", "no-metadata"])
def test_damaged_sqlite3_bag_is_evaluated_on_every_intact_message(
        tmp_path: Path, model_file: Path, capsys: pytest.CaptureFixture[str],
        damage: str) -> None:
    bag = make_bag(tmp_path / "bag", 1.0, "sqlite3", rgb_rate=10, thermal_rate=20)
    data = next(bag.glob("*.db3"))
    if damage == "cut":
        data.write_bytes(data.read_bytes()[: data.stat().st_size * 2 // 3])
    else:
        (bag / "metadata.yaml").unlink()
    out = tmp_path / "rep"
    assert main(["eval", "bag", str(bag), "--model", str(model_file), "--out", str(out),
                 "--no-progress", "--metrics", "EN"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["bag"]["damaged"] and report["bag"]["storage"] == "sqlite3"
    if damage == "cut":
        assert 3 <= report["pairing"]["pairs"] < 10
        assert any("every intact message" in w for w in report["warnings"])
        assert "warning: bag" in capsys.readouterr().out
    else:
        assert report["pairing"]["pairs"] == 10


def test_unpaired_streams(tmp_path: Path, model_file: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    # The thermal camera exposes 50 ms after the colour one: nothing is within 20 ms.
    bag = make_bag(tmp_path / "offset", 0.5, "sqlite3", rgb_rate=10, thermal_rate=10,
                   thermal_offset_ms=50)
    out = tmp_path / "rep"
    err = cli_error(capsys, ["eval", "bag", str(bag), "--model", str(model_file), "--out",
                             str(out), "--no-progress", "--metrics", "EN"])
    assert "no frame pairs" in err and "unpaired streams" in err
    report = json.loads((out / "report.json").read_text())
    assert report["pairing"]["pairs"] == 0 and report["pairing"]["color_unmatched"] == 5
    assert any("unpaired streams" in w for w in report["warnings"])
    assert "unpaired streams" in (out / "report.md").read_text()
    # A larger slop pairs them, with a warning-free report.
    assert main(["eval", "bag", str(bag), "--model", str(model_file), "--out", str(out),
                 "--no-progress", "--metrics", "EN", "--slop", "0.06"]) == 0


def test_undecodable_messages_are_warnings(tmp_path: Path, engine: FusionEngine) -> None:
    """A damaged message (bad encoding, short data) is skipped with a warning."""
    bag = tmp_path / "damaged"
    spec = StreamSpec(rgb_rate=10, thermal_rate=10)
    with ImageBagWriter(bag, "mcap") as writer:
        for frame, image in synthetic_stream(0.5, spec, H, W):
            topic = "/thermal/image" if frame.stream == "thermal" else "/rgb/image"
            encoding = "mono8" if frame.stream == "thermal" else "rgb8"
            if frame.stream == "thermal" and frame.t == pytest.approx(0.2):
                encoding = "nv12"
                image = np.zeros((H, W), np.uint8)
                msg = writer.typestore.types["sensor_msgs/msg/Image"]
                raw = writer.typestore.serialize_cdr(msg(
                    header=writer.typestore.types["std_msgs/msg/Header"](
                        stamp=writer.typestore.types["builtin_interfaces/msg/Time"](
                            sec=frame.stamp_ns // 10**9, nanosec=frame.stamp_ns % 10**9),
                        frame_id="t"),
                    height=H, width=W, encoding=encoding, is_bigendian=0, step=W,
                    data=image.reshape(-1)), "sensor_msgs/msg/Image")
                writer.write_raw(topic, frame.log_ns, raw)
                continue
            writer.write_image(topic, image, encoding, frame.stamp_ns, "cam", frame.log_ns)
    report = evaluate_bag(bag, engine, BagEvalSettings(metrics=("EN",), progress=False))
    assert report["frames"]["decode_errors"] == 1
    assert any("unsupported encoding 'nv12'" in w for w in report["warnings"])
    assert report["pairing"]["pairs"] == 4


# ------------------------------------------------------------------ quality suite tables
def fake_data(root: Path) -> Path:
    """A miniature ../shared/data: vifb with two 'published' methods, tno, roadscene."""
    from cldyn_ros.imaging.io import write_image
    from cldyn_ros.imaging.synthetic import generate_pairs, write_pairs

    pairs = generate_pairs(3, seed=5, height=H, width=W)
    for name in ("vifb", "tno", "roadscene"):
        write_pairs(pairs, root / name)
    for method, weight in (("PeerA", 0.3), ("PeerB", 0.7)):
        for p in pairs[:2]:  # PeerB misses nothing, PeerA misses the third pair
            blend = weight * p.ir[..., None] + (1 - weight) * p.vis
            write_image(root / "vifb" / "fused" / method / f"{p.name}.png",
                        blend.astype(np.uint8))
        if method == "PeerB":
            blend = weight * pairs[2].ir[..., None] + (1 - weight) * pairs[2].vis
            write_image(root / "vifb" / "fused" / method / f"{pairs[2].name}.png",
                        blend.astype(np.uint8))
    (root / "roadscene" / "test_split.txt").write_text(
        "\n".join(f"{p.name}.png" for p in pairs[1:]) + "\n")
    return root


def test_quality_suite_regenerates_only_its_section(tmp_path: Path, model_file: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    data = fake_data(tmp_path / "data")
    doc = tmp_path / "docs" / "benchmarks.md"
    cache = tmp_path / "cache.json"
    argv = ["eval", "suite", "--data", str(data), "--out", str(doc), "--cache", str(cache),
            "--model", str(model_file), "--metrics", "EN,SD,SSIM", "--no-progress", "--device",
            "cpu", "--threads", "1"]
    assert main(argv) == 0
    assert "0 reused, 22 computed" in capsys.readouterr().out
    text = doc.read_text()
    assert text.startswith("# Benchmarks") and "## Speed" in text and "## Quality" in text
    assert text.count("<!-- BEGIN quality -->") == 1 and text.count("<!-- END quality -->") == 1
    vifb = text[text.index("### VIFB"):text.index("### TNO")]
    assert "(3 pairs; 2 published methods)" in vifb
    for row in ("| **CLDyN (ours)** |", "| average |", "| max |", "| PeerA |", "| PeerB |"):
        assert row in vifb, row
    assert "PeerA failed on 1 pair(s)" in vifb
    tno = text[text.index("### TNO"):text.index("### RoadScene")]
    assert "| PeerA |" not in tno and "| max |" in tno
    assert "### RoadScene test split (2 pairs)" in text
    assert f"cldyn eval suite --data {data} --out {doc} --model {model_file}" in text
    # The other engineer's speed section survives a regeneration, and so does the rest.
    edited = text.replace("Not generated yet.", "| engine | fps |\n|---|---|\n| cpu | 12 |")
    doc.write_text(edited + "\nA closing note.\n")
    assert main(["eval", "suite", "--data", str(data), "--out", str(doc), "--cache", str(cache),
                 "--metrics", "EN,SD,SSIM", "--no-progress", "--no-model", "--sets",
                 "tno,vifb"]) == 0
    # Baselines and published methods come from the cache (PeerA lacks one output file).
    assert "17 reused, 1 computed" in capsys.readouterr().out
    again = doc.read_text()
    assert vifb.split("| average |")[1].split("\n")[0] in again
    assert "| cpu | 12 |" in again and again.endswith("A closing note.\n")
    assert "**CLDyN (ours)**" not in again and "### RoadScene" not in again
    assert again.count("<!-- BEGIN quality -->") == 1


def test_quality_suite_errors_and_missing_sets(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    doc = tmp_path / "b.md"
    doc.write_text("# B\n\n<!-- BEGIN quality -->\nold\n")
    err = cli_error(capsys, ["eval", "suite", "--data", str(tmp_path), "--out", str(doc),
                             "--no-model", "--metrics", "EN", "--no-progress", "--no-cache"])
    assert "only one of the markers" in err
    err = cli_error(capsys, ["eval", "suite", "--data", str(tmp_path), "--sets", "kitti",
                             "--no-model"])
    assert "unknown set" in err
    doc.write_text("# B\n")
    assert main(["eval", "suite", "--data", str(tmp_path), "--out", str(doc), "--no-model",
                 "--metrics", "EN", "--no-progress", "--no-cache"]) == 0
    assert "Not generated: no pairs in" in doc.read_text()


@pytest.mark.data
def test_quality_suite_on_real_vifb(shared_data: Path, tmp_path: Path) -> None:
    """One VIFB pair, every published method: the layout the benchmark table relies on."""
    doc = tmp_path / "b.md"
    assert main(["eval", "suite", "--data", str(shared_data), "--out", str(doc),
                 "--no-model", "--sets", "vifb,roadscene", "--limit", "1", "--metrics",
                 "EN,SD", "--no-progress", "--cache", str(tmp_path / "c.json")]) == 0
    text = doc.read_text()
    assert "(1 pairs; 20 published methods)" in text
    for method in ("ADF", "CBF", "GTF", "LatLRR", "VSMWLS", "average", "max"):
        assert f"| {method} |" in text
    assert "failed" not in text


def test_output_bag_skips_topics_it_cannot_copy(tmp_path: Path, engine: FusionEngine) -> None:
    bag = tmp_path / "custom"
    spec = StreamSpec(rgb_rate=10, thermal_rate=10)
    with ImageBagWriter(bag, "mcap") as writer:
        for frame, image in synthetic_stream(0.3, spec, H, W):
            topic = "/thermal/image" if frame.stream == "thermal" else "/rgb/image"
            writer.write_image(topic, image, "mono8" if frame.stream == "thermal" else "rgb8",
                               frame.stamp_ns, "cam", frame.log_ns)
        msg = writer.typestore.types["std_msgs/msg/String"](data="note")
        writer.write_raw("/notes", 1, writer.typestore.serialize_cdr(msg, "std_msgs/msg/String"),
                         "std_msgs/msg/String")
    # Rename the type in the metadata and the MCAP schema to one rosbags cannot know.
    data = next(bag.glob("*.mcap"))
    data.write_bytes(data.read_bytes().replace(b"std_msgs/msg/String", b"my_msgs/msg/Stringy"))
    meta = bag / "metadata.yaml"
    meta.write_text(meta.read_text().replace("std_msgs/msg/String", "my_msgs/msg/Stringy"))
    report = evaluate_bag(bag, engine, BagEvalSettings(metrics=(), write_bag=True,
                                                       progress=False), tmp_path / "ev")
    assert report["pairing"]["pairs"] == 3
    assert any("'/notes' not copied" in w for w in report["warnings"])
    assert set(report["output_bag"]["topics"]) == {"/thermal/image", "/rgb/image",
                                                   "/fused/none/image"}


@pytest.mark.ros
def test_rclpy_reads_the_output_bag(small_bag: Path, engine: FusionEngine,
                                    tmp_path: Path) -> None:
    serialization = pytest.importorskip("rclpy.serialization")
    sensor_msgs = pytest.importorskip("sensor_msgs.msg")
    from cldyn_ros.offline.bags import iter_messages
    from cldyn_ros.streams.image_msgs import image_to_numpy

    report = evaluate_bag(small_bag, engine, BagEvalSettings(
        tasks=("detection",), metrics=(), write_bag=True, progress=False), tmp_path)
    fused = [raw for topic, _, _, raw in iter_messages(report["output_bag"]["path"])
             if topic == "/fused/detection/image"]
    assert len(fused) == 10
    for raw in fused:
        msg = serialization.deserialize_message(raw, sensor_msgs.Image)
        assert msg.encoding == "rgb8" and image_to_numpy(msg).shape == (H, W, 3)


def test_a_crash_mid_evaluation_leaves_no_output_bag(tmp_path: Path, monkeypatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A bug raised inside the fusion loop: no half-written output bag, an old complete one
    stays as it was, and the log says the bag was not written."""
    bag = make_bag(tmp_path / "in", 1.0, "sqlite3", rgb_rate=10, thermal_rate=10)
    engine = FusionEngine(make_loaded(), device="cpu")
    out = tmp_path / "ev"
    settings = BagEvalSettings(tasks=("none",), metrics=(), write_bag=True, progress=False)
    first = evaluate_bag(bag, engine, settings, out)
    old = {p.name: p.stat().st_size for p in (out / "fused_bag").iterdir()}
    assert first["output_bag"]["topics"]["/fused/none/image"] == 10
    real_fuse = engine.fuse
    calls = []

    def fuse_then_crash(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyError("a bug")
        return real_fuse(*args, **kwargs)

    monkeypatch.setattr(engine, "fuse", fuse_then_crash)
    with pytest.raises(KeyError):
        evaluate_bag(bag, engine, settings, out)
    assert {p.name: p.stat().st_size for p in (out / "fused_bag").iterdir()} == old
    assert [p.name for p in out.iterdir() if ".partial-" in p.name] == []
    assert "was not written" in caplog.text
    # Without an old bag, nothing appears at all.
    fresh = tmp_path / "ev2"
    calls.clear()
    with pytest.raises(KeyError):
        evaluate_bag(bag, engine, settings, fresh)
    assert not (fresh / "fused_bag").exists()
    assert [p.name for p in fresh.iterdir() if ".partial-" in p.name] == []


# ------------------------------------------------- compressed topics and camera_info
@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_compressed_bag_with_camera_info(tmp_path: Path, engine: FusionEngine,
                                         storage: str) -> None:
    """16-bit PNG thermal + JPEG colour with camera_info: evaluated like the raw bag (same
    pairs; thermal bit-exact, so the fused images differ only by the JPEG loss), and the
    output bag carries the camera_info plus /fused/<task>/camera_info per fused frame."""
    from cldyn_ros.offline.bags import (
        COMPRESSED_TYPE,
        bag_info,
        decode_camera_info,
        iter_messages,
        typestore_for,
    )
    from cldyn_ros.streams.camera_info import pinhole_camera_info

    spec = StreamSpec(rgb_rate=10, thermal_rate=20, thermal_bits=16, jitter_ms=1.0)
    raw_bag, comp_bag = tmp_path / "raw", tmp_path / "comp"
    write_stream(raw_bag, synthetic_stream(0.6, spec, H, W), storage=storage)
    write_stream(comp_bag, synthetic_stream(0.6, spec, H, W), storage=storage, compressed=True,
                 camera_info={"rgb": None, "thermal": None})
    assert bag_info(comp_bag).topics["/rgb/image/compressed"][0] == COMPRESSED_TYPE
    settings = BagEvalSettings("/thermal/image/compressed", "/rgb/image/compressed",
                               tasks=("none", "detection"), metrics=FAST, write_bag=True,
                               progress=False)
    report = evaluate_bag(comp_bag, engine, settings, tmp_path / "ev")
    reference = evaluate_bag(raw_bag, engine, BagEvalSettings(tasks=("none", "detection"),
                                                               metrics=FAST, progress=False))
    assert report["pairing"]["pairs"] == reference["pairing"]["pairs"] == 6
    assert report["frames"]["decode_errors"] == 0 and report["warnings"] == []
    assert report["camera_info"] == {"topic": "/rgb/camera_info", "received": 6,
                                     "errors": 0, "written": 12}
    for task in ("none", "detection"):
        a = report["summary"][task]["EN"]["mean"]
        b = reference["summary"][task]["EN"]["mean"]
        assert abs(a - b) < 0.2 * abs(b)
    out_bag = Path(report["output_bag"]["path"])
    topics = bag_info(out_bag).topics
    for topic in ("/thermal/image/compressed", "/rgb/image/compressed", "/rgb/camera_info",
                  "/thermal/camera_info"):
        assert topic in topics  # carried over unchanged
    assert topics["/fused/detection/camera_info"][1] == 6
    store = typestore_for("kilted")
    fused_stamps = sorted(r.stamp_ns for r in read_images(out_bag, ["/fused/none/image"]))
    infos = [decode_camera_info(raw, store) for *_, raw in
             iter_messages(out_bag, ["/fused/none/camera_info"])]
    assert sorted(s for s, _, _ in infos) == fused_stamps
    assert all(f == "rgb_camera" and c == pinhole_camera_info(H, W) for _, f, c in infos)
    assert "colour camera_info: `/rgb/camera_info`" in (tmp_path / "ev" / "report.md").read_text()


def test_camera_info_topic_errors_and_opt_out(tmp_path: Path, engine: FusionEngine,
                                              model_file: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    spec = StreamSpec(rgb_rate=10, thermal_rate=10)
    bag = tmp_path / "b"
    write_stream(bag, synthetic_stream(0.3, spec, H, W), camera_info={"rgb": None})
    report = evaluate_bag(bag, engine, BagEvalSettings(metrics=(), progress=False,
                                                       rgb_camera_info=None))
    assert report["camera_info"]["topic"] is None
    err = cli_error(capsys, ["eval", "bag", str(bag), "--model", str(model_file),
                             "--rgb-camera-info", "/rgb/image", "--no-progress"])
    assert "camera_info topic '/rgb/image' is of type 'sensor_msgs/msg/Image'" in err
    err = cli_error(capsys, ["eval", "bag", str(bag), "--model", str(model_file),
                             "--rgb-camera-info", "/nope", "--no-progress"])
    assert "camera_info topic '/nope' is not in the bag" in err


def test_driver_encodings_in_a_bag(tmp_path: Path, engine: FusionEngine) -> None:
    """bgra8 colour and 32FC1 temperatures (with NaN) evaluate like rgb8 / counts."""
    spec = StreamSpec(rgb_rate=10, thermal_rate=10, thermal_bits=16)
    bag = tmp_path / "drv"
    with ImageBagWriter(bag, "mcap") as writer:
        for frame, image in synthetic_stream(0.5, spec, H, W):
            if frame.stream == "thermal":
                temps = image.astype(np.float32) / 100.0 - 273.15
                temps[0, :4] = np.nan
                writer.write_image("/thermal/image", temps, "32FC1", frame.stamp_ns, "t",
                                   frame.log_ns)
            else:
                bgra = np.concatenate([image[..., ::-1], np.full((H, W, 1), 255, np.uint8)], 2)
                writer.write_image("/rgb/image", bgra, "bgra8", frame.stamp_ns, "c",
                                   frame.log_ns)
    report = evaluate_bag(bag, engine, BagEvalSettings(metrics=FAST, progress=False))
    assert report["pairing"]["pairs"] == 5 == report["frames"]["fused"]
    assert report["frames"]["decode_errors"] == 0 and report["warnings"] == []
    assert all(np.isfinite(r["metrics"]["none"]["EN"]) for r in report["per_pair"])
