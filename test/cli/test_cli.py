"""The ``cldyn`` command line: fuse, info, train vfn, demo, and their error paths."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_model, task_vectors

from cldyn_ros.cli import main
from cldyn_ros.imaging.io import read_color, write_image
from cldyn_ros.imaging.synthetic import generate_pairs, write_pairs
from cldyn_ros.inference.checkpoint import load_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_checkpoint(path, make_model(), task_vectors(), {"trained_on": "random test weights"})
    return path


@pytest.fixture(scope="module")
def pair_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pairs")
    return write_pairs(generate_pairs(3, seed=1, height=40, width=56), root)


def test_every_subcommand_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], ["fuse", "--help"], ["info", "--help"], ["train", "vfn", "--help"],
                 ["demo", "--help"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0
        assert "usage:" in capsys.readouterr().out


def test_fuse_folders_end_to_end(model_file: Path, pair_dirs: tuple[Path, Path],
                                 tmp_path: Path) -> None:
    ir_dir, vi_dir = pair_dirs
    out = tmp_path / "fused"
    proc = subprocess.run(
        [sys.executable, "-m", "cldyn_ros.cli", "fuse", "--ir", str(ir_dir), "--vi", str(vi_dir),
         "--out", str(out), "--model", str(model_file), "--task", "detection",
         "--strength", "0.5", "--device", "cpu"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.stem for p in vi_dir.iterdir())
    assert sorted(p.stem for p in out.iterdir()) == names
    img = read_color(out / f"{names[0]}.png")
    assert img.shape == (40, 56, 3)
    assert "fused 3 of 3" in proc.stdout


def test_fuse_single_pair_to_file_and_task_changes_output(
    model_file: Path, pair_dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    ir_dir, vi_dir = pair_dirs
    name = sorted(p.name for p in vi_dir.iterdir())[0]
    outs = {}
    for task in ("none", "detection"):
        out = tmp_path / f"{task}.png"
        code = main(["fuse", "--ir", str(ir_dir / name), "--vi", str(vi_dir / name), "--out",
                     str(out), "--model", str(model_file), "--task", task, "--device", "cpu"])
        assert code == 0
        outs[task] = read_color(out).astype(int)
    assert np.abs(outs["none"] - outs["detection"]).mean() > 0.1


def test_fuse_blend_and_zero_strength(model_file: Path, pair_dirs: tuple[Path, Path],
                                      tmp_path: Path) -> None:
    ir_dir, vi_dir = pair_dirs
    name = sorted(p.name for p in vi_dir.iterdir())[0]
    args = ["fuse", "--ir", str(ir_dir / name), "--vi", str(vi_dir / name), "--model",
            str(model_file), "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "b.png"),
                 "--task", "detection:0.7,segmentation:0.3"]) == 0
    assert main([*args, "--out", str(tmp_path / "z.png"), "--task", "detection",
                 "--strength", "0"]) == 0
    assert main([*args, "--out", str(tmp_path / "n.png")]) == 0
    assert np.array_equal(read_color(tmp_path / "z.png"), read_color(tmp_path / "n.png"))


def test_fuse_reports_unmatched_and_unreadable_pairs(
    model_file: Path, pair_dirs: tuple[Path, Path], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ir_src, vi_src = pair_dirs
    ir_dir, vi_dir = tmp_path / "ir", tmp_path / "vi"
    ir_dir.mkdir()
    vi_dir.mkdir()
    for p in ir_src.iterdir():
        (ir_dir / p.name).write_bytes(p.read_bytes())
    for p in vi_src.iterdir():
        (vi_dir / p.name).write_bytes(p.read_bytes())
    write_image(ir_dir / "only_ir.png", np.zeros((8, 8), np.uint8))
    broken = sorted(vi_dir.iterdir())[0]
    broken.write_bytes(broken.read_bytes()[:40])  # truncated PNG
    code = main(["fuse", "--ir", str(ir_dir), "--vi", str(vi_dir), "--out", str(tmp_path / "o"),
                 "--model", str(model_file), "--device", "cpu", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1
    assert "fused 2 of 3" in captured.out
    assert broken.stem in captured.err and "only_ir" in captured.err
    assert len(list((tmp_path / "o").iterdir())) == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--task", "nonexistent"], "unknown task 'nonexistent'"),
        (["--strength", "1.5"], "strength must be in [0, 1]"),
        (["--precision", "fp16", "--device", "cuda"], "CUDA is not available"),
    ],
)
def test_fuse_bad_arguments_exit_2(
    extra: list[str], message: str, model_file: Path, pair_dirs: tuple[Path, Path],
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    if "cuda" in extra:
        import torch

        if torch.cuda.is_available():
            pytest.skip("CUDA is present: this error path cannot happen")
    ir_dir, vi_dir = pair_dirs
    code = main(["fuse", "--ir", str(ir_dir), "--vi", str(vi_dir), "--out", str(tmp_path),
                 "--model", str(model_file), "--device", "cpu", *extra]
                if "cuda" not in extra else
                ["fuse", "--ir", str(ir_dir), "--vi", str(vi_dir), "--out", str(tmp_path),
                 "--model", str(model_file), *extra])
    assert code == 2
    assert message in capsys.readouterr().err


def test_fuse_missing_inputs_and_bad_model(
    model_file: Path, pair_dirs: tuple[Path, Path], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ir_dir, vi_dir = pair_dirs
    assert main(["fuse", "--ir", str(tmp_path / "nope"), "--vi", str(vi_dir), "--out",
                 str(tmp_path / "o"), "--model", str(model_file)]) == 2
    assert "nope" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(model_file.read_bytes()[:1000])
    assert main(["fuse", "--ir", str(ir_dir), "--vi", str(vi_dir), "--out", str(tmp_path / "o"),
                 "--model", str(corrupt)]) == 2
    err = capsys.readouterr().err
    assert "corrupt.pt" in err and "truncated or corrupt" in err
    assert main(["info", "--model", str(tmp_path / "missing.pt")]) == 2
    assert "file not found" in capsys.readouterr().err


def test_info_json(model_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--model", str(model_file), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"] == {"vfn": 34761, "rsc": 458704, "total": 34761 + 458704}
    assert info["tasks"] == ["none", "detection", "segmentation"]
    assert info["metadata"]["trained_on"] == "random test weights"
    assert main(["info", "--model", str(model_file)]) == 0
    assert "VFN 34,761" in capsys.readouterr().out


def test_train_vfn_runs_resumes_and_writes_checkpoint(
    pair_dirs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ir_dir, vi_dir = pair_dirs
    excluded = sorted(p.stem for p in vi_dir.iterdir())[0]
    (tmp_path / "exclude.txt").write_text(excluded + "\n")
    config = tmp_path / "train.yaml"
    config.write_text(f"ir_dir: {ir_dir}\nvi_dir: {vi_dir}\ncrop: 24\nbatch_size: 2\n"
                      "resize: 0\nval_fraction: 0.5\n")
    out = tmp_path / "vfn.pt"
    base = ["train", "vfn", "--config", str(config), "--out", str(out), "--exclude",
            str(tmp_path / "exclude.txt"), "--no-progress", "--threads", "1"]
    assert main([*base, "--epochs", "2"]) == 0
    assert main(["info", "--model", str(out), "--json"]) == 0
    capsys.readouterr()
    assert main([*base, "--epochs", "3"]) == 0  # resumes from vfn.pt.state.pt
    capsys.readouterr()
    assert main(["info", "--model", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    training = info["metadata"]["training"]
    assert training["steps"] == 3  # one pair trains, one validates: 1 step per epoch
    assert info["metadata"]["trained_on"]["train_pairs"] == 1
    assert info["parameters"]["rsc"] == 0
    log = (tmp_path / "vfn.train.csv").read_text().splitlines()
    assert log[0].startswith("epoch,step,train_loss,val_loss") and len(log) == 4

    # Fine-tuning with the structure terms starts from --init (lr 0: the weights stay).
    tuned = tmp_path / "tuned.pt"
    assert main([*base[:5], str(tuned), *base[6:], "--epochs", "1", "--init", str(out),
                 "--lr", "0", "--qabf-weight", "1", "--ssim-weight", "0.5",
                 "--gradient-weight", "0", "--qabf-border", "zeros"]) == 0
    start, end = load_checkpoint(out).model.state_dict(), load_checkpoint(tuned).model
    for name, value in end.state_dict().items():
        if value.is_floating_point():  # batch-norm statistics move in train mode
            assert torch.equal(value, start[name]) or "running" in name, name
    training = load_checkpoint(tuned).metadata["training"]
    assert training["init"] == str(out) and training["qabf_weight"] == 1.0


def test_train_vfn_missing_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "vfn", "--ir", "x"]) == 2
    assert "missing --vi, --out" in capsys.readouterr().err


def test_demo_writes_outputs(model_file: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--offline", "--out", str(out), "--pairs", "2", "--height", "48",
                 "--width", "64", "--model", str(model_file), "--device", "cpu",
                 "--threads", "1"]) == 0
    assert (out / "contact_sheet.png").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics) == 2
    first = next(iter(metrics.values()))
    assert set(first) == {"none", "detection", "segmentation"}
    assert len(list((out / "fused" / "detection").iterdir())) == 2
    assert str(out.resolve()) in capsys.readouterr().out


def test_training_augmentations_are_seeded_and_validated(pair_dirs: tuple[Path, Path]) -> None:
    from cldyn_ros.training.vfn import (
        AUGMENTATIONS,
        VFNTrainConfig,
        load_pairs,
        random_batch,
        train_vfn,
    )

    pairs = load_pairs(*pair_dirs)
    batches = [
        random_batch(pairs, 4, 24, torch.Generator().manual_seed(1), (0.5, 1.5),
                     AUGMENTATIONS, 1.0)
        for _ in range(2)
    ]
    (ir, y), (ir2, y2) = batches
    assert ir.shape == y.shape == (4, 1, 24, 24)
    assert torch.equal(ir, ir2) and torch.equal(y, y2)  # the generator decides everything
    assert ir.min() >= 0 and ir.max() <= 1 and y.min() >= 0 and y.max() <= 1
    plain = random_batch(pairs, 4, 24, torch.Generator().manual_seed(1))
    assert not torch.equal(plain[1], y)  # the augmentations changed the visible images
    with pytest.raises(ValueError, match="unknown augmentation"):
        train_vfn(VFNTrainConfig(*map(str, pair_dirs), out="x.pt", augment=("rain",)))
    with pytest.raises(ValueError, match="scale_range"):
        train_vfn(VFNTrainConfig(*map(str, pair_dirs), out="x.pt", scale_range=(1.5, 0.5)))


def test_two_stage_recipe_is_one_command(pair_dirs: tuple[Path, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    ir_dir, vi_dir = pair_dirs
    common = (f"ir_dir: {ir_dir}\nvi_dir: {vi_dir}\ncrop: 24\nbatch_size: 2\nresize: 0\n"
              "val_fraction: 0.5\nthreads: 1\n")
    (tmp_path / "stage1.yaml").write_text(common + f"out: {tmp_path / 'stage1.pt'}\n"
                                          "epochs: 2\n")
    (tmp_path / "stage2.yaml").write_text(
        common + f"out: {tmp_path / 'stage2.pt'}\nepochs: 1\n"
        f"init_recipe: {tmp_path / 'stage1.yaml'}\nprior: detail\nqabf_weight: 1.0\n"
        "ssim_weight: 0.5\ngradient_weight: 0.0\nintensity_weight: 0.0\n"
    )
    assert main(["train", "vfn", "--config", str(tmp_path / "stage2.yaml"),
                 "--no-progress"]) == 0
    capsys.readouterr()
    first, second = load_checkpoint(tmp_path / "stage1.pt"), load_checkpoint(tmp_path / "stage2.pt")
    assert first.metadata["training"]["steps"] == 2
    assert second.metadata["training"]["init"] == str(tmp_path / "stage1.pt")
    assert second.model.config.prior == "detail"
    # The encoders start from stage 1 (one step of Adam moves them only a little).
    a = first.model.vfn.encoder_ir.stem[0][0].weight
    b = second.model.vfn.encoder_ir.stem[0][0].weight
    assert (a - b).abs().max() < 0.01


def test_train_vfn_at_a_reduced_internal_scale(pair_dirs: tuple[Path, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Fine-tuning for the engine's CPU mode: the network trains at half the crop size and
    the checkpoint records the scale, which the engine then uses by default."""
    from cldyn_ros.inference.engine import FusionEngine

    ir_dir, vi_dir = pair_dirs
    start = tmp_path / "start.pt"
    model = make_model(with_rsc=False, prior="detail")
    with torch.no_grad():  # a non-zero correction, so its gradient reaches every layer
        model.vfn.decoder.tail[-1].weight.normal_(0.0, 0.1)
    save_checkpoint(start, model, {}, {})
    out = tmp_path / "cpu.pt"
    argv = ["train", "vfn", "--ir", str(ir_dir), "--vi", str(vi_dir), "--out", str(out),
            "--init", str(start), "--prior", "detail", "--internal-scale", "0.5", "--crop", "32",
            "--batch-size", "2", "--resize", "0", "--val-fraction", "0.5", "--epochs", "2",
            "--qabf-weight", "1", "--ssim-weight", "0.5", "--gradient-weight", "0",
            "--intensity-weight", "0", "--anchor-weight", "5", "--threads", "1",
            "--no-progress"]
    assert main(argv) == 0
    capsys.readouterr()
    tuned = load_checkpoint(out)
    assert tuned.metadata["internal_scale"] == 0.5
    assert tuned.metadata["training"]["internal_scale"] == 0.5
    before = model.vfn.encoder_ir.stem[0][0].weight
    assert not torch.equal(tuned.model.vfn.encoder_ir.stem[0][0].weight, before)
    assert FusionEngine(out, device="cpu").internal_scale == 0.5
    # The method's VFN (no prior) has no correction to compute at a reduced scale.
    bad = [*argv[:7], str(tmp_path / "bad.pt"), "--prior", "none", *argv[12:]]
    assert main(bad) == 2
    assert "internal_scale < 1 needs a prior" in capsys.readouterr().err


@pytest.mark.parametrize("recipe", sorted((REPO / "config").glob("train_vfn_*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_training_recipes_are_valid_and_exclude_the_test_split(recipe: Path) -> None:
    from cldyn_ros.training.vfn import read_recipe, vfn_config

    config = vfn_config(read_recipe(recipe))
    assert config.exclude and config.exclude.endswith("roadscene/test_split.txt")
    assert "roadscene" in config.ir_dir  # never TNO or VIFB, the evaluation sets
    if config.init_recipe:
        assert (REPO / config.init_recipe).is_file()


def test_fuse_reports_an_out_of_memory_pair_and_fuses_the_others(
    model_file: Path, pair_dirs: tuple[Path, Path], tmp_path: Path, monkeypatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A device failure on one pair (injected into the network call, as CUDA raises it) is
    one line on stderr, the other pairs are fused, and the exit code says something failed."""
    from cldyn_ros.inference import engine as engine_module

    real_plain = engine_module.TorchRunner.plain
    calls = []

    def plain_out_of_memory_once(self, *args):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_plain(self, *args)

    monkeypatch.setattr(engine_module.TorchRunner, "plain", plain_out_of_memory_once)
    ir_dir, vi_dir = pair_dirs
    out = tmp_path / "fused"
    assert main(["fuse", "--ir", str(ir_dir), "--vi", str(vi_dir), "--out", str(out),
                 "--model", str(model_file), "--device", "cpu", "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "fused 2 of 3" in captured.out
    skipped = [line for line in captured.err.splitlines() if "skipped" in line]
    assert len(skipped) == 1 and "out of memory" in skipped[0], captured.err
    assert len(list(out.iterdir())) == 2


def test_device_failure_of_a_command_is_one_line_and_exit_1(
    model_file: Path, pair_dirs: tuple[Path, Path], tmp_path: Path, monkeypatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from cldyn_ros.cli import fuse as fuse_command
    from cldyn_ros.inference.engine import DeviceError

    def fail(args):
        raise DeviceError("fusion failed on cuda: OutOfMemoryError: CUDA out of memory")

    monkeypatch.setattr(fuse_command, "run", fail)
    ir_dir, vi_dir = pair_dirs
    assert main(["fuse", "--ir", str(ir_dir), "--vi", str(vi_dir), "--out", str(tmp_path),
                 "--model", str(model_file)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("cldyn fuse: error: fusion failed on cuda: OutOfMemoryError: CUDA out of "
                   "memory")
