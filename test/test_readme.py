"""Every command in the README's ``bash`` blocks either runs here or is skipped with a reason.

The ``cldyn`` commands run in README order, in one scratch folder (a later command uses
what an earlier one wrote, e.g. ``eval bag comp_bag`` the bag of ``bag from-images ...
--out comp_bag``), as subprocesses of this interpreter with the working tree on
``PYTHONPATH``, against the shipped model: the ament index is pointed at a prefix whose
``share/cldyn_ros`` is this checkout, so "the default model" is ``models/cldyn_default.pt``
of the code under test, not an installed copy. Placeholders become small generated inputs
(two 48x64 pairs, a 0.3 s bag); optional ``[...]`` parts are left out; the few long-running
settings are shrunk (``--synthetic 10`` -> 0.3 s at 48x64, ``--sizes`` -> 64x48); the
rewrites are listed in :data:`SMALL_INPUTS`. A README command that no rule below matches
fails :func:`test_every_readme_command_is_classified`, so new examples get tested.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import stop_process

REPO_ROOT = Path(__file__).resolve().parent.parent
README = REPO_ROOT / "README.md"
DEFAULT_TOPICS = {"T": "/thermal/image", "R": "/rgb/image"}
HAS_TASKS_EXTRA = all(importlib.util.find_spec(m) is not None
                      for m in ("torchvision", "ultralytics"))

# (regex on the command, action, reason). First match wins. Actions: run (a cldyn
# command, here), node (start the fusion node and wait until it is ready), skip.
RULES: list[tuple[str, str, str]] = [
    (r"^make (demo|test)\b", "skip",
     "builds the project's venv and runs the demo / the whole suite: CI's own entry point"),
    (r"^(source|mkdir|cd|rosdep|python3 -m venv|python -m pip|python -m colcon)\b", "skip",
     "robot installation step (needs a ROS 2 distro, apt, sudo); the colcon build of the "
     "package is tested by test/test_colcon.py"),
    (r"^ros2 .*task(s)?:=detection", "skip",
     "needs the ros2 command line (a ROS 2 distro); test_readme_task_example_with_the_"
     "default_model runs the node with the example's task and tasks"),
    (r"^ros2 ", "skip", "needs the ros2 command line (a ROS 2 distro)"),
    (r"^python -m cldyn_ros\.ros\.node ", "node", ""),
    (r"^cldyn eval tasks\b", "skip", "needs the 'tasks' extra: "
     "test_readme_eval_tasks_example runs it with the shipped task networks where the extra "
     "is installed, and test/training/test_task_eval.py with networks it trains"),
    (r"^cldyn train ", "skip", "training runs for minutes to hours; test/training covers it"),
    (r"^cldyn eval suite ", "skip",
     "needs ../shared/data and runs for tens of minutes; test/offline/test_bag_eval.py runs "
     "it on generated sets"),
    (r"^cldyn (replay|bench node)\b", "skip",
     "needs a running fusion node over DDS: test/ros/test_replay.py, test/tools/test_bench.py"),
    (r"^cldyn demo\b", "run", ""),
    (r"^cldyn ", "run", ""),
]
# Rewrites that keep a README command's meaning but make it small (regex -> replacement).
SMALL_INPUTS = [
    (r"--synthetic \d+(\.\d+)?", "--synthetic 0.3 --size 48 64"),
    (r"--sizes \S+", "--sizes 64x48"),
    (r"^cldyn demo$", "cldyn demo --offline --out demo_output"),  # the ROS-free variant
]


def readme_commands() -> list[str]:
    """The commands of the README's bash blocks: continuation lines joined, comments cut."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(re.sub(r"\s+", " ", line))
    return commands


def rule_for(command: str) -> tuple[str, str]:
    for pattern, action, reason in RULES:
        if re.search(pattern, command):
            return action, reason
    return "unclassified", ""


def concrete(command: str, workdir: Path) -> list[str]:
    """The argv of a README command with placeholders filled and optional parts left out."""
    text = command
    while re.search(r"\s*\[[^\[\]]*\]", text):
        text = re.sub(r"\s*\[[^\[\]]*\]", "", text)
    for pattern, replacement in SMALL_INPUTS:
        text = re.sub(pattern, replacement, text)
    args = shlex.split(text)
    out = []
    for i, arg in enumerate(args):
        previous = args[i - 1] if i else ""
        if previous == "--ir" and arg.isupper() or arg == "IR_DIR":
            arg = str(workdir / "pairs" / "ir")
        elif previous == "--vi" and arg.isupper() or arg == "VI_DIR":
            arg = str(workdir / "pairs" / "vi")
        elif arg == "BAG":
            arg = "readme_bag"
        elif arg == "DIR|rules":  # label folders: the rule labels (generated pairs)
            arg = "rules"
        elif arg in ("DIR", "OUT_DIR"):
            arg = f"out_{i}_{args[1]}"
        elif previous == "--thermal-topic" and arg in DEFAULT_TOPICS:
            arg = DEFAULT_TOPICS[arg]
        elif previous == "--rgb-topic" and arg in DEFAULT_TOPICS:
            arg = DEFAULT_TOPICS[arg]
        elif previous == "--task" and arg == "NAME":
            arg = "none"
        elif arg.startswith("models/"):  # the checkout's shipped files
            arg = str(REPO_ROOT / arg)
        elif arg == "model.pt" and previous.startswith("model_path"):
            arg = str(REPO_ROOT / "models" / "cldyn_default.pt")
        elif arg.startswith("model_path:=") and arg.endswith("model.pt"):
            arg = f"model_path:={REPO_ROOT / 'models' / 'cldyn_default.pt'}"
        out.append(arg)
    return out


COMMANDS = readme_commands()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Scratch folder with two small pairs, and an ament prefix whose share/cldyn_ros is
    this checkout (so the default model is the working tree's)."""
    from cldyn_ros.imaging.synthetic import generate_pairs, write_pairs

    root = tmp_path_factory.mktemp("readme")
    write_pairs(generate_pairs(2, 0, 48, 64), root / "pairs")
    prefix = root / "prefix" / "share"
    (prefix / "ament_index" / "resource_index" / "packages").mkdir(parents=True)
    (prefix / "ament_index" / "resource_index" / "packages" / "cldyn_ros").touch()
    (prefix / "cldyn_ros").symlink_to(REPO_ROOT, target_is_directory=True)
    return root


def _env(workdir: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1",
               AMENT_PREFIX_PATH=str(workdir / "prefix"))
    return env


def test_readme_has_commands():
    assert any(c.startswith("cldyn bag from-images") for c in COMMANDS)
    assert any(c.startswith("ros2 launch") for c in COMMANDS)


def test_every_readme_command_is_classified():
    unclassified = [c for c in COMMANDS if rule_for(c)[0] == "unclassified"]
    assert not unclassified, "README commands no rule in test/test_readme.py covers: " + \
        "; ".join(unclassified)


def test_placeholders_are_filled(tmp_path: Path):
    argv = concrete("cldyn eval bag BAG --thermal-topic T --rgb-topic R [--tasks a,b] "
                    "[--out DIR]", tmp_path)
    assert argv == ["cldyn", "eval", "bag", "readme_bag", "--thermal-topic", "/thermal/image",
                    "--rgb-topic", "/rgb/image"]
    argv = concrete("cldyn bag from-images --synthetic 10 --out drive_bag", tmp_path)
    assert argv[4:8] == ["0.3", "--size", "48", "64"]


@pytest.mark.parametrize("command", COMMANDS, ids=[c[:60] for c in COMMANDS])
def test_readme_command(command: str, workdir: Path):
    action, reason = rule_for(command)
    if action == "skip":
        pytest.skip(reason)
    argv = concrete(command, workdir)
    if action == "node":
        _start_node(argv, workdir)
        return
    assert argv[0] == "cldyn", argv
    result = subprocess.run([sys.executable, "-m", "cldyn_ros.cli", *argv[1:]], cwd=workdir,
                            env=_env(workdir), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (
        f"README command failed ({result.returncode}): {' '.join(argv)}\n"
        f"{(result.stdout + result.stderr)[-3000:]}")


def _start_node(argv: list[str], workdir: Path) -> None:
    """Start the node as the README says and wait until it is ready (then stop it)."""
    pytest.importorskip("rclpy", reason="the node needs rclpy")
    assert argv[:3] == ["python", "-m", "cldyn_ros.ros.node"], argv
    argv = [sys.executable, *argv[1:]]
    if "--params-file" in argv:  # relative to the repository root in the README
        i = argv.index("--params-file") + 1
        argv[i] = str(REPO_ROOT / argv[i])
    log = workdir / "node.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, cwd=workdir, env=_env(workdir), stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            if "ready:" in log.read_text():
                break
            time.sleep(0.2)
        text = log.read_text()
        assert proc.poll() is None and "ready:" in text, f"node did not start:\n{text[-3000:]}"
    finally:
        stop_process(proc, timeout=20)


@pytest.mark.skipif(not HAS_TASKS_EXTRA, reason="the 'tasks' extra (torchvision, "
                    "ultralytics) is not installed: make tasks")
def test_readme_eval_tasks_example(workdir: Path):
    """``cldyn eval tasks`` as the README shows it, with the shipped task networks and the
    default model's task vectors."""
    (command,) = [c for c in COMMANDS if c.startswith("cldyn eval tasks")]
    argv = concrete(command, workdir)
    result = subprocess.run([sys.executable, "-m", "cldyn_ros.cli", *argv[1:]], cwd=workdir,
                            env=_env(workdir), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]


def test_readme_task_example_with_the_default_model(workdir: Path):
    """``ros2 run cldyn_ros fusion_node --ros-args -p task:=detection`` as the README shows
    it, run without the ros2 CLI, and the node with the launch example's
    ``tasks:=detection,segmentation`` (as the launch file passes it): both need the
    task-carrying default model."""
    (command,) = [c for c in COMMANDS if c.startswith("ros2 run cldyn_ros fusion_node")]
    args = command.split("fusion_node", 1)[1].split()
    _start_node(["python", "-m", "cldyn_ros.ros.node", *args], workdir)
    (launch,) = [c for c in COMMANDS if c.startswith("ros2 launch") and "tasks:=" in c]
    tasks = re.search(r"\btasks:=(\S+)", launch).group(1)
    assert tasks == "detection,segmentation"
    _start_node(["python", "-m", "cldyn_ros.ros.node", "--ros-args", "-p",
                 f"tasks:=[{tasks}]"], workdir)
