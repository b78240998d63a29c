"""The shipped task-network and closed-loop recipes: the RoadScene ones keep the evaluation
sets out; the method's protocol (M3FD detection, FMB segmentation, VT5000 saliency, then
the closed loop) runs end to end on small generated data in those layouts."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from cldyn_ros.cli import main
from cldyn_ros.imaging.synthetic import generate_pairs
from cldyn_ros.inference.checkpoint import load_checkpoint, save_checkpoint
from cldyn_ros.model import CLDyN, CLDyNConfig
from cldyn_ros.training.task_train import TaskTrainConfig

REPO = Path(__file__).resolve().parents[2]
HAS_EXTRA = all(importlib.util.find_spec(m) is not None
                for m in ("torchvision", "ultralytics", "transformers"))
ROADSCENE_TASKS = ("detection", "segmentation", "saliency")


@pytest.mark.parametrize("task", ROADSCENE_TASKS)
def test_roadscene_task_recipes_exclude_the_evaluation_sets(task: str) -> None:
    values = yaml.safe_load((REPO / "config" / f"train_task_{task}.yaml").read_text())
    config = TaskTrainConfig(**values)
    assert config.task == task and config.fusion_model == "models/cldyn_default.pt"
    assert config.exclude and config.exclude.endswith("roadscene/test_split.txt")
    assert "roadscene" in config.ir_dir and "roadscene" in config.vi_dir
    for banned in ("vifb", "tno", "msrs"):
        assert banned not in yaml.safe_dump(values).lower()


def test_roadscene_closed_loop_recipe_trains_on_the_task_networks_training_pairs() -> None:
    values = yaml.safe_load((REPO / "config" / "train_rsc_tasks.yaml").read_text())
    assert values["vfn"] == "models/cldyn_default.pt" and values["fidelity_weight"] > 0
    assert [t["name"] for t in values["tasks"]] == list(ROADSCENE_TASKS)
    for t in values["tasks"]:
        weights = t["network"]["weights"]
        assert weights == f"models/task_{t['name']}.pt"  # the shipped networks
        assert (REPO / weights).is_file()
        assert t["data"]["names"] == "runs/tasks/cache/train.txt"
        assert t["val"]["names"] == "runs/tasks/cache/val.txt"
        assert "roadscene" in t["data"]["ir"]


def _write(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), image)


def _method_data(root: Path) -> dict[str, Path]:
    pairs = generate_pairs(5, seed=7, height=48, width=64, conditions=("night", "day"))
    m3fd, fmb, vt = root / "M3FD", root / "FMB", root / "VT5000"
    for i, p in enumerate(pairs):
        name = f"{i:05d}"
        m = p.warm_mask.astype(np.uint8)
        _write(m3fd / "Ir" / f"{name}.png", p.ir)
        _write(m3fd / "Vis" / f"{name}.png", p.vis[..., ::-1])
        n, _, stats, _ = cv2.connectedComponentsWithStats(m)
        rows = [f"{1 if bw > bh else 0} {(x + bw / 2) / 64} {(y + bh / 2) / 48} {bw / 64} "
                f"{bh / 48}" for x, y, bw, bh, _ in stats[1:]]
        (m3fd / "labels").mkdir(exist_ok=True)
        (m3fd / "labels" / f"{name}.txt").write_text("\n".join(rows) + "\n")
        split = "train" if i < 3 else "test"
        _write(fmb / split / "Infrared" / f"{name}.png", p.ir)
        _write(fmb / split / "Visible" / f"{name}.png", p.vis[..., ::-1])
        label = np.where(m > 0, 3, 0).astype(np.uint8)
        label[:2] = 255  # ignored
        _write(fmb / split / "Label" / f"{name}.png", label)
        vsplit = "Train" if i < 3 else "Test"
        _write(vt / vsplit / "T" / f"{name}.jpg", p.ir)
        _write(vt / vsplit / "RGB" / f"{name}.jpg", p.vis[..., ::-1])
        _write(vt / vsplit / "GT" / f"{name}.png", m * 255)
    (m3fd / "train.txt").write_text("00000\n00001\n00002\n")
    (m3fd / "val.txt").write_text("00003\n00004\n")
    return {"/data/M3FD": m3fd, "/data/FMB": fmb, "/data/VT5000": vt}


def _localise(value, roots: dict[str, Path]):
    if isinstance(value, dict):
        return {k: _localise(v, roots) for k, v in value.items()}
    if isinstance(value, list):
        return [_localise(v, roots) for v in value]
    if isinstance(value, str):
        for prefix, path in roots.items():
            if value.startswith(prefix):
                return str(path) + value[len(prefix):]
    return value


@pytest.mark.skipif(not HAS_EXTRA, reason="the 'tasks' extra (torchvision, ultralytics, "
                    "transformers) is not installed: make tasks")
def test_method_protocol_runs_on_generated_data_in_its_layouts(tmp_path: Path) -> None:
    roots = _method_data(tmp_path / "data")
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "vfn.pt", CLDyN(CLDyNConfig()).eval(), {}, {})
    weights = {}
    for name, task in (("m3fd", "detection"), ("fmb", "segmentation"),
                       ("vt5000", "saliency")):
        values = _localise(yaml.safe_load(
            (REPO / "config" / f"train_task_{name}.yaml").read_text()), roots)
        assert values["task"] == task and values["data"]["root"].startswith(str(tmp_path))
        values.update({"out": str(tmp_path / f"{task}.pt"), "cache": str(tmp_path / name),
                       "fusion_model": str(tmp_path / "vfn.pt"), "steps": 1, "warmup": 1,
                       "eval_every": 1, "size": [64, 64], "crop": 32, "batch_size": 2,
                       "threads": 1})
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(yaml.safe_dump(values))
        assert main(["train", "task", "--config", str(cfg), "--no-progress"]) == 0
        weights[task] = tmp_path / f"{task}.pt"
        cache = tmp_path / name
        train = (cache / "train.txt").read_text().split()
        val = (cache / "val.txt").read_text().split()
        assert len(train) == 3 and len(val) == 2  # the layouts' own splits
    seg = cv2.imread(str(tmp_path / "fmb" / "seg" / "00000.png"), cv2.IMREAD_GRAYSCALE)
    assert set(np.unique(seg)) <= {0, 3, 255} and (seg[:2] == 255).all()  # labels kept as is
    values = _localise(yaml.safe_load(
        (REPO / "config" / "train_rsc_method.yaml").read_text()), roots)
    for t in values["tasks"]:
        t["network"]["weights"] = str(weights[t["name"]])
        for key in ("data", "val"):
            if "size" in t[key]:
                t[key]["size"] = [64, 64]
    values.update({"vfn": str(tmp_path / "vfn.pt"), "out": str(tmp_path / "rsc.pt"),
                   "steps": 1, "crop": 32, "batch_size": 2, "eval_every": 1,
                   "vector_batches": 1, "threads": 1})
    tasks_file = tmp_path / "rsc.yaml"
    tasks_file.write_text(yaml.safe_dump(values))
    assert main(["train", "rsc", "--tasks", str(tasks_file), "--no-progress"]) == 0
    loaded = load_checkpoint(tmp_path / "rsc.pt")
    assert sorted(loaded.task_vectors) == ["detection", "saliency", "segmentation"]
    assert loaded.metadata["training"]["fidelity_weight"] == values["fidelity_weight"]
