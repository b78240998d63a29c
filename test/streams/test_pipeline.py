"""The ROS-free frame pipeline: pairing session, strengths, fusion, metrics, health."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from helpers import make_loaded, random_pair

from cldyn_ros.inference.engine import FusionEngine
from cldyn_ros.streams.frame_input import ReceivedImage
from cldyn_ros.streams.pairing import Frame, Pair
from cldyn_ros.streams.pipeline import FramePipeline, InputImage
from cldyn_ros.streams.settings import FusionSettings

MS = 1_000_000
T0 = 1_000_000_000_000


def settings(**changes: object) -> FusionSettings:
    values = dict(FusionSettings().values(), **changes)
    return FusionSettings.from_values(values, ["none", "detection", "segmentation"])


@pytest.fixture
def engine() -> FusionEngine:
    return FusionEngine(make_loaded(), device="cpu")


def frames(stamp_ns: int, seed: int = 0, encoding: str = "rgb8") -> tuple[Frame, Frame]:
    thermal, color = random_pair(24, 32, seed)
    if encoding == "bgr8":
        color = np.ascontiguousarray(color[..., ::-1])
    return (Frame(stamp_ns, InputImage(thermal, "mono8"), "ir", stamp_ns),
            Frame(stamp_ns, InputImage(color, encoding, header=seed), "cam", stamp_ns))


def run(pipeline: FramePipeline, stamp_ns: int, seed: int = 0, encoding: str = "rgb8"):
    thermal, color = frames(stamp_ns, seed, encoding)
    pairs = pipeline.add("thermal", thermal) + pipeline.add("color", color)
    pairs += pipeline.add("thermal", frames(stamp_ns + 5 * MS, seed)[0])  # decides the colour
    assert len(pairs) == 1
    out = pipeline.fuse(pairs[0])
    assert out is not None
    return out, pipeline.finish(out, stamp_ns, stamp_ns, stamp_ns, {"dropped": 0})


def test_outputs_are_the_engines_in_the_output_encoding(engine: FusionEngine) -> None:
    pipeline = FramePipeline(engine, settings(task="detection", compensation_strength=0.6))
    out, _ = run(pipeline, T0)
    thermal, color = random_pair(24, 32, 0)
    reference = FusionEngine(make_loaded(), device="cpu",
                             normalizer=settings().thermal_normalizer())
    want = reference.fuse(thermal, color, [reference.request("detection", 0.6, "fused")])
    np.testing.assert_array_equal(out.images["fused"], want.images["fused"])
    # bgr8 out from an rgb8 input: channels reversed; bgr8 in and out: as the engine renders
    pipeline.update(settings(task="detection", compensation_strength=0.6,
                             output_encoding="bgr8"))
    out, _ = run(pipeline, T0 + 100 * MS)
    np.testing.assert_array_equal(out.images["fused"], want.images["fused"][..., ::-1])
    out, _ = run(pipeline, T0 + 200 * MS, encoding="bgr8")
    np.testing.assert_array_equal(out.images["fused"], out.result.images["fused"])


def test_multi_task_outputs_and_statuses(engine: FusionEngine) -> None:
    pipeline = FramePipeline(engine, settings(tasks=["none", "segmentation"],
                                              metrics_every_n=2), name="fusion")
    _, statuses = run(pipeline, T0)
    assert [s.name for s in statuses] == ["fusion: frame", "task: none", "task: segmentation"]
    assert dict(statuses[0].values)["metrics_computed"] is False
    out, statuses = run(pipeline, T0 + 100 * MS)
    assert set(out.images) == {"none", "segmentation"}
    frame = dict(statuses[0].values)
    assert frame["frame"] == 2 and frame["metrics_computed"] is True
    assert frame["pairing_pairs"] == 2
    task = dict(statuses[2].values)
    assert task["topic"] == "fused/segmentation/image" and task["strength"] == 1.0
    assert {"EN", "SD", "SF", "AG", "MI", "Qabf"} <= set(task)
    assert dict(statuses[1].values)["strength"] == 0.0


def test_time_jump_restarts_pairing_and_keeps_counting(engine: FusionEngine) -> None:
    events: list[str] = []
    pipeline = FramePipeline(engine, settings(), on_info=events.append)
    run(pipeline, T0)
    run(pipeline, T0 - 10_000 * MS)  # a bag loop: stamps 10 s back
    assert any("stamps jumped back by" in e and "pairing restarts" in e for e in events)
    assert pipeline.pairing_stats()["pairs"] == 2
    # a new pairer (other slop) keeps the counts of the old one
    pipeline.update(settings(slop=0.01))
    run(pipeline, T0)
    assert pipeline.pairing_stats()["pairs"] == 3


def test_closed_loop_feedback_moves_the_strength(engine: FusionEngine) -> None:
    pipeline = FramePipeline(engine, settings(task="detection", adaptive_strength=True,
                                              compensation_strength=0.5, adaptive_step=0.1))
    out, _ = run(pipeline, T0)
    assert out.strengths == {"detection": 0.5}
    pipeline.feedback(T0, [("detection", [("score", "0.7")]), ("bogus", [("score", "1")]),
                           ("detection", [("score", "nan")])])
    pipeline.feedback(T0 + 1, [("detection", [("score", "0.7")])])
    assert pipeline.feedback_counts == {"received": 4, "unknown_frame": 1, "unknown_task": 1,
                                        "invalid": 1}
    out, statuses = run(pipeline, T0 + 100 * MS)
    assert out.strengths["detection"] != 0.5  # the controller tried a step
    task = dict(statuses[1].values)
    assert task["controller_scores_fed"] == 1
    # a score for the first frame again: fused before the controller moved, so stale
    pipeline.feedback(T0, [("detection", [("score", "0.9")])])
    _, statuses = run(pipeline, T0 + 200 * MS)
    assert dict(statuses[1].values)["controller_scores_stale"] == 1
    # changing the loop's settings restarts the controllers
    pipeline.update(dataclasses.replace(pipeline.settings, adaptive_step=0.2))
    out, _ = run(pipeline, T0 + 300 * MS)
    assert out.strengths == {"detection": 0.5}


def test_errors_and_health(engine: FusionEngine) -> None:
    errors: list[tuple[str, bool]] = []
    pipeline = FramePipeline(engine, settings(), name="fusion",
                             on_error=lambda r, now: errors.append((r, now)))
    assert pipeline.health_status(1.0, 0).message == "waiting for thermal and colour images"
    thermal, color = frames(T0)
    bad = Frame(T0, InputImage(np.zeros((24, 32, 2), np.uint8), "rgb8"), "cam", T0)
    pairs = pipeline.add("thermal", thermal) + pipeline.add("color", bad)
    pairs += pipeline.add("thermal", frames(T0 + 5 * MS)[0])
    pipeline.received(3)
    assert pipeline.fuse(pairs[0]) is None
    assert pipeline.input_errors == 1 and errors[0][1] is True
    assert errors[0][0].startswith("frame pair rejected:")
    status = pipeline.health_status(1.0, 0)
    assert status.level == "ERROR" and "1 input error(s)" in status.message
    assert dict(status.values)["received"] == 3
    # a constant frame is fused, and reported
    flat = Frame(T0 + 100 * MS, InputImage(np.full((24, 32), 7, np.uint8), "mono8"), "ir", 0)
    pairs = pipeline.add("thermal", flat) + pipeline.add("color", frames(T0 + 100 * MS)[1])
    pairs += pipeline.add("thermal", frames(T0 + 105 * MS)[0])
    assert pipeline.fuse(pairs[0]) is not None
    assert "thermal frame is constant (every pixel 7)" in pipeline.last_error
    pipeline.warnings.append("a standing warning")
    assert pipeline.health_status(1.0, 0).level == "ERROR"
    assert pipeline.health_status(1.0, 0).level == "WARN"  # errors are per window


def received_pair(thermal: np.ndarray, thermal_encoding: str, stamp_ns: int = T0) -> Pair:
    color = random_pair(24, 32, 1)[1]
    return Pair(Frame(stamp_ns, ReceivedImage(color, "rgb8", "hdr"), "cam"),
                Frame(stamp_ns, ReceivedImage(thermal, thermal_encoding), "ir"), 0)


def test_fuse_received_converts_warns_once_on_float_thermal_and_rejects(
        engine: FusionEngine) -> None:
    warned: list[str] = []
    pipeline = FramePipeline(engine, settings(thermal_mode="fixed"), on_warning=warned.append)
    temperatures = random_pair(24, 32, 1)[0].astype(np.float32) / 255.0
    for _ in range(2):
        out = pipeline.fuse_received(received_pair(temperatures, "32FC1"))
        assert out is not None and out.images["fused"].shape == (24, 32, 3)
    assert len(warned) == 1 and "32FC1" in warned[0] and pipeline.warnings == warned
    assert pipeline.health_status(1.0, 0).level == "WARN"  # a standing warning
    two_channels = received_pair(np.zeros((24, 32, 2), np.uint8), "mono8")
    assert pipeline.fuse_received(two_channels) is None
    assert pipeline.rejections.counts() == {"thermal_invalid": 1}
    assert "must be 1-channel" in pipeline.last_error


def test_update_values_validates_against_the_engines_tasks(engine: FusionEngine) -> None:
    pipeline = FramePipeline(engine, settings())
    values = pipeline.settings.values()
    assert pipeline.update_values(dict(values, task="segmentation")).task == "segmentation"
    assert pipeline.settings.task == "segmentation"
    with pytest.raises(ValueError, match="saliency"):  # not a task of this model
        pipeline.update_values(dict(values, task="saliency"))
    assert pipeline.settings.task == "segmentation"
    assert pipeline.rejections.counts() == {"parameters": 1}


def test_warm_up_and_its_failure_is_a_standing_warning(
        engine: FusionEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    warned: list[str] = []
    pipeline = FramePipeline(engine, settings(warmup_width=32, warmup_height=24),
                             on_warning=warned.append)
    done, text = pipeline.warm_up()
    assert done and text.startswith("warmed up at 32x24 in ")
    assert "on cpu" in pipeline.describe() and "output none" in pipeline.describe()

    def out_of_memory(*args: object) -> None:
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")

    monkeypatch.setattr(engine, "warm_up", out_of_memory)
    done, text = pipeline.warm_up()
    assert not done and text == "warm-up at 32x24 failed: CUDA out of memory. Tried to " \
                                "allocate 2.00 GiB"
    assert warned == [text] and pipeline.warnings == [text]
    done, text = FramePipeline(engine, settings(warmup_width=0)).warm_up()
    assert done and text.startswith("no warm-up")


def test_health_reports_a_pause_for_want_of_subscribers(engine: FusionEngine) -> None:
    pipeline = FramePipeline(engine, settings())
    run(pipeline, T0)
    pipeline.received()
    assert pipeline.health_status(1.0, 0).message == "fusing none"
    assert pipeline.demand.admit(False) == (False, True)
    status = pipeline.health_status(1.0, 0)
    assert status.message == "paused: no subscriber to any output"
    values = dict(status.values)
    assert values["paused_no_subscriber"] is True and values["skipped_pairs_no_subscriber"] == 1
