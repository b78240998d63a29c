"""``cldyn train task``: the fused-image cache with rule labels, the three task networks
(YOLOv8n, LRASPP, U2NETP) on generated pairs, resuming, and the weights file."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import yaml

from cldyn_ros.cli import main
from cldyn_ros.imaging.synthetic import generate_pairs, write_pairs
from cldyn_ros.inference.checkpoint import save_checkpoint
from cldyn_ros.model import CLDyN, CLDyNConfig
from cldyn_ros.training.sod import U2NetP, bce_iou_loss, sod_deep_loss
from cldyn_ros.training.task_train import (
    TaskTrainConfig,
    build_cache,
    detection_batch,
    export_task_network,
    load_task_network,
    mask_batch,
)

HAS_EXTRA = all(importlib.util.find_spec(m) is not None for m in ("torchvision", "ultralytics"))
needs_extra = pytest.mark.skipif(not HAS_EXTRA, reason="the 'tasks' extra (torchvision, "
                                 "ultralytics) is not installed: make tasks")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tasks")
    write_pairs(generate_pairs(6, seed=2, height=64, width=80, conditions=("night", "day")),
                root / "pairs")
    torch.manual_seed(0)
    save_checkpoint(root / "fusion.pt", CLDyN(CLDyNConfig()).eval(), {}, {})
    (root / "test.txt").write_text("0005_day\n")
    return {"root": root, "pairs": root / "pairs", "fusion": root / "fusion.pt",
            "exclude": root / "test.txt"}


def _config(setup: dict[str, Path], task: str, **kw: object) -> TaskTrainConfig:
    values = {"task": task, "out": str(setup["root"] / f"{task}.pt"),
              "ir_dir": str(setup["pairs"] / "ir"), "vi_dir": str(setup["pairs"] / "vi"),
              "fusion_model": str(setup["fusion"]), "exclude": str(setup["exclude"]),
              "cache": str(setup["root"] / "cache"), "val_fraction": 0.4, "size": (64, 64),
              "crop": 32, "batch_size": 2, "steps": 2, "warmup": 1, "eval_every": 1,
              "threads": 1, "bn_batches": 2}
    values.update(kw)
    return TaskTrainConfig(**values)


def test_cache_holds_fused_frames_and_labels_and_never_the_excluded_pairs(setup) -> None:
    cache = build_cache(_config(setup, "detection"), progress=False)
    train = (cache / "train.txt").read_text().split()
    val = (cache / "val.txt").read_text().split()
    assert len(train) == 3 and len(val) == 2 and not set(train) & set(val)
    assert "0005_day" not in train + val
    assert not (cache / "fused" / "0005_day.png").exists()
    for name in train + val:
        for sub, ext in (("fused", "png"), ("boxes", "txt"), ("seg", "png"), ("sal", "png")):
            assert (cache / sub / f"{name}.{ext}").is_file()
    with pytest.raises(ValueError, match="other settings"):
        build_cache(_config(setup, "detection", val_fraction=0.2), progress=False)


def test_batches_flip_boxes_and_crop_masks() -> None:
    img = torch.zeros(3, 40, 60, dtype=torch.uint8)
    img[:, :, :30] = 255
    boxes = torch.tensor([[0, 0.25, 0.5, 0.1, 0.2]])
    x, t = detection_batch([img, img], [boxes, boxes[:0]], (32, 64), [True, False])
    assert x.shape == (2, 3, 32, 64) and float(x[0, 0, 0, -1]) == 1.0
    assert t["batch_idx"].tolist() == [0.0] and t["bboxes"][0, 0] == pytest.approx(0.75)
    mask = torch.zeros(40, 60, dtype=torch.uint8)
    x, y = mask_batch([img], [mask], 16, (0.5, 1.0), torch.Generator().manual_seed(0))
    assert x.shape == (1, 3, 16, 16) and y.shape == (1, 16, 16) and y.dtype == torch.long


def test_u2netp_shapes_and_losses() -> None:
    torch.manual_seed(0)
    net = U2NetP(input_scale=0.5)
    assert 1.0e6 < sum(p.numel() for p in net.parameters()) < 1.2e6  # U2NETP: about 1.1 M
    x = torch.rand(2, 3, 64, 64)
    outs = net.train()(x)
    assert len(outs) == 7 and all(o.shape == (2, 1, 64, 64) for o in outs)
    target = (torch.rand(2, 1, 64, 64) > 0.5).float()
    with torch.no_grad():
        assert float(sod_deep_loss(outs, target)) > float(bce_iou_loss(outs, target)) > 0
    net.eval()
    with torch.no_grad():
        assert net(torch.rand(1, 3, 48, 80)).shape == (1, 1, 48, 80)
    perfect = torch.where(target > 0, 20.0, -20.0)
    assert float(bce_iou_loss(perfect, target)) < 0.01


@needs_extra
@pytest.mark.parametrize("task", ["detection", "segmentation", "saliency"])
def test_train_resume_and_load(setup, task: str) -> None:
    config = _config(setup, task)
    cfg_file = setup["root"] / f"{task}.yaml"
    values = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(config).items()}
    cfg_file.write_text(yaml.safe_dump(values))
    assert main(["train", "task", "--config", str(cfg_file), "--no-progress"]) == 0
    out = Path(config.out)
    state = torch.load(out.with_name(out.name + ".state.pt"), weights_only=True)
    assert state["step"] == 2
    assert main(["train", "task", "--config", str(cfg_file), "--steps", "3",
                 "--no-progress"]) == 0
    state = torch.load(out.with_name(out.name + ".state.pt"), weights_only=True)
    assert state["step"] == 3 and len(state["history"]) == 3
    loaded_task, spec, model, meta = load_task_network(out)
    assert loaded_task == task and meta["steps"] == 3 and not model.training
    assert meta["bn_recalibration_batches"] == 2 and meta["kept"] == "best"
    half = out.with_name(f"{task}_fp16.pt")
    export_task_network(out, half)
    assert half.stat().st_size < 0.6 * out.stat().st_size
    _, _, model16, _ = load_task_network(half)
    for (k, a), b in zip(model.state_dict().items(), model16.state_dict().values(), strict=True):
        assert a.dtype == b.dtype, k
        if a.is_floating_point():
            torch.testing.assert_close(a, b, atol=2e-3 * (1 + float(a.abs().max())), rtol=1e-2)
    assert (out.with_name(f"{task}.train.csv")).read_text().count("\n") == 4


def test_batch_norm_recalibration_sets_the_running_statistics(setup) -> None:
    from cldyn_ros.training.task_train import CachedSet, recalibrate_batch_norm

    config = _config(setup, "saliency")
    cache = build_cache(config, progress=False)
    train = CachedSet.load(cache, "train", "saliency")
    torch.manual_seed(0)
    net = U2NetP(input_scale=0.5)
    bn = net.stage1.inp[1]
    assert float(bn.running_var.mean()) == 1.0 and bn.num_batches_tracked == 0
    recalibrate_batch_norm(config, net, train, 3)
    assert bn.num_batches_tracked == 3 and bn.momentum == 0.1 and not net.training
    assert float((bn.running_var - 1).abs().mean()) > 1e-3


def test_unknown_settings_and_tasks_are_errors(setup, capsys) -> None:
    bad = setup["root"] / "bad.yaml"
    bad.write_text("task: detection\nout: x.pt\nir_dir: a\nvi_dir: b\nlearning_rate: 1\n")
    assert main(["train", "task", "--config", str(bad)]) == 2
    assert "unknown settings" in capsys.readouterr().err
    with pytest.raises(ValueError, match="task must be one of"):
        TaskTrainConfig(task="depth", out="x", ir_dir="a", vi_dir="b")
    with pytest.raises(ValueError, match="keep must be"):
        TaskTrainConfig(task="saliency", out="x", ir_dir="a", vi_dir="b", keep="first")
