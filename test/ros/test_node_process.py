"""The node as its own process: starts with the params file, serves over DDS, and exits
cleanly on Ctrl-C (SIGINT) while frames are flowing; fails clearly when it cannot start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from ros_helpers import (  # noqa: F401  (fixtures)
    model_path_fixture,
    ros_fixture,
    sample_frames,
)

pytestmark = [pytest.mark.ros, pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parents[2]


def _start(*ros_args: str) -> tuple[subprocess.Popen, list[str], threading.Event]:
    """``python -m cldyn_ros.ros.node --ros-args ...`` from the checkout; stderr is collected
    by a thread and ``ready`` is set when the node logs that it is ready."""
    process = subprocess.Popen(
        [sys.executable, "-m", "cldyn_ros.ros.node", "--ros-args", *ros_args],
        cwd=REPO, env=dict(os.environ), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: list[str] = []

    def read():
        for line in process.stdout:
            lines.append(line)

    threading.Thread(target=read, daemon=True).start()
    return process, lines


def _finish(process: subprocess.Popen, timeout: float = 60) -> int:
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


def test_start_serve_and_ctrl_c(ros, model_path):
    process, lines = _start(
        "--params-file", str(REPO / "config" / "fusion.yaml"),
        "-p", f"model_path:={model_path}", "-p", "threads:=1", "-p", "task:=detection",
    )
    try:
        from cldyn_ros.ros.node import ready_service, wait_for_service

        # ready once its ready service is in the ROS graph
        assert wait_for_service(ready_service(), 90, alive=lambda: process.poll() is None), (
            "node did not start:\n" + "".join(lines))
        h = ros.harness()
        h.wait_connected()
        thermal, colour = sample_frames()
        fused = h.fuse(thermal, colour)
        assert fused.encoding == "rgb8"  # the default output_encoding
        # Keep frames flowing while Ctrl-C arrives.
        stop = threading.Event()

        def stream():
            while not stop.is_set():
                h.send_pair(thermal, colour)
                time.sleep(0.02)

        streamer = threading.Thread(target=stream)
        streamer.start()
        time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        code = _finish(process)
        stop.set()
        streamer.join()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = "".join(lines)
    assert code == 0, output
    assert "Traceback" not in output, output
    assert "did not stop" not in output, output
    assert "warmed up at 640x512" in output, output  # config/fusion.yaml asks for it


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("-p", "model_path:=/nonexistent/model.pt"), "file not found"),
        (("-p", "task:=bogus"), "unknown task 'bogus'"),
    ],
)
def test_cannot_start_exits_non_zero_with_the_reason(model_path, args, message):
    full = ("-p", f"model_path:={model_path}", *args)
    process, lines = _start(*full)
    code = _finish(process)
    output = "".join(lines)
    assert code == 1, output
    assert "cannot start" in output and message in output, output
    assert "Traceback" not in output, output
