"""Model, precision and device faults of the fusion node: a one-line reason at start, an
ERROR diagnostic at run time, and the node keeps serving where it can."""

from __future__ import annotations

import pytest
import torch
from diagnostic_msgs.msg import DiagnosticStatus
from ros_helpers import (  # noqa: F401  (fixtures)
    model_path_fixture,
    ros_fixture,
    sample_frames,
    status_values,
)

from cldyn_ros.inference import engine as engine_module
from cldyn_ros.inference.checkpoint import FORMAT_VERSION
from cldyn_ros.ros.node import FusionNode, StartupError

pytestmark = [pytest.mark.ros, pytest.mark.timeout(120)]


def _start(ros, **params) -> None:
    from rclpy.parameter import Parameter

    overrides = [Parameter(k, value=v) for k, v in params.items()]
    node = FusionNode(context=ros.context, parameter_overrides=overrides)
    node.destroy_node()


def _startup_error(ros, **params) -> str:
    with pytest.raises(StartupError) as info:
        _start(ros, **params)
    text = str(info.value)
    assert "\n" not in text, text
    return text


def _variant(model_path, tmp_path, name: str, **changes) -> str:
    payload = torch.load(model_path, map_location="cpu", weights_only=True)
    path = tmp_path / name
    torch.save({**payload, **changes}, path)
    return str(path)


# ------------------------------------------------------------------ precision


def test_bf16_and_fp16_are_refused_at_start_on_a_cpu_without_them(ros, model_path,
                                                                   monkeypatch):
    monkeypatch.setattr(engine_module, "cpu_features", lambda: frozenset({"avx", "avx2"}))
    for precision in ("bf16", "fp16"):
        text = _startup_error(ros, model_path=str(model_path), precision=precision,
                              device="cpu")
        assert f"precision '{precision}' is refused" in text
        assert "use precision fp32" in text


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_diagnostics_and_ready_line_name_the_effective_precision(ros, model_path, monkeypatch,
                                                                 precision):
    # Declared native so that bf16 starts on every machine (emulated where it is not).
    monkeypatch.setattr(engine_module, "cpu_features", lambda: frozenset({"avx512_bf16"}))
    node = ros.fusion_node(model_path, precision=precision, diagnostics_period=0.2)
    h = ros.harness()
    h.wait_connected()
    h.fuse(*sample_frames())
    status = h.wait_for(lambda: h.diagnostics_of_node())[-1]
    assert status_values(status)["precision"] == precision
    assert node.engine.precision == precision


# ------------------------------------------------------------------ checkpoints


def test_every_bad_checkpoint_is_a_one_line_reason_at_start(ros, model_path, tmp_path):
    data = model_path.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    state_dict = tmp_path / "state_dict.pt"
    torch.save({"weight": torch.zeros(3)}, state_dict)
    payload = torch.load(model_path, map_location="cpu", weights_only=True)
    dim = payload["config"]["task_dim"]
    cases = {
        str(tmp_path / "missing.pt"): "file not found",
        str(cut): "truncated or corrupt",
        str(state_dict): "not a cldyn_ros.checkpoint file",
        _variant(model_path, tmp_path, "future.pt", format_version=FORMAT_VERSION + 1):
            "newer than supported",
        _variant(model_path, tmp_path, "old.pt", format_version=0): "invalid format version",
        _variant(model_path, tmp_path, "arch.pt",
                 config={**payload["config"], "num_blocks": 5}): "incompatible weights",
        _variant(model_path, tmp_path, "dim.pt",
                 task_vectors={"detection": torch.zeros(dim + 1)}):
            f"the model's RSC takes ({dim},)",
        _variant(model_path, tmp_path, "no_rsc.pt",
                 config={**payload["config"], "with_rsc": False},
                 state_dict={k: v for k, v in payload["state_dict"].items()
                             if not k.startswith("rsc.")}): "no RSC",
    }
    for path, reason in cases.items():
        text = _startup_error(ros, model_path=path)
        assert path in text and reason in text, (path, text)


# ------------------------------------------------------------------ device faults


def test_out_of_memory_inside_the_engine_is_an_error_and_the_next_frame_is_fused(
        ros, model_path):
    """A CUDA out-of-memory raised by the network (injected into the engine's runner on
    this CPU machine) goes through the engine's device-failure path: one ERROR on
    /diagnostics naming it, the frame is dropped, and the next frame is fused."""
    node = ros.fusion_node(model_path, diagnostics_period=0.3)
    h = ros.harness()
    h.wait_connected()
    thermal, colour = sample_frames()
    before = h.fuse(thermal, colour)
    runner = node.engine.runner
    real_plain = runner.plain
    raised = []

    def plain(*args):
        if not raised:
            raised.append(1)
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_plain(*args)

    runner.plain = plain
    with h.cond:
        seen = len(h.diagnostics)
    h.send_pair(thermal, colour)

    def error():
        for msg in h.diagnostics[seen:]:
            for status in msg.status:
                if status.level == DiagnosticStatus.ERROR and "out of memory" in status.message:
                    return status
        return None

    status = h.wait_for(error)
    assert "fusion failed on cpu" in status.message and "\n" not in status.message
    after = h.fuse(thermal, colour)
    assert bytes(after.data) == bytes(before.data)
    assert raised and node.pipeline.fusion_errors == 1 and node.worker.errors == 0
    assert node.engine.last_device_error.startswith("RuntimeError: CUDA out of memory")


def test_truncated_checkpoint_exits_1_with_cannot_start(model_path, tmp_path):
    """The real entry point, as ``ros2 run`` starts it: exit code 1 and one fatal line."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    cut = tmp_path / "cut.pt"
    cut.write_bytes(model_path.read_bytes()[:5000])
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-m", "cldyn_ros.ros.node", "--ros-args", "-p",
         f"model_path:={cut}"],
        cwd=repo, env=dict(os.environ), stdin=subprocess.DEVNULL, capture_output=True,
        text=True, timeout=120,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    fatal = [line for line in output.splitlines() if "cannot start" in line]
    assert len(fatal) == 1 and str(cut) in fatal[0] and "truncated or corrupt" in fatal[0], output
    assert "Traceback" not in output, output
