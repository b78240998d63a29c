"""Metric tables over folders: ``cldyn_ros.offline.evaluation`` and ``cldyn eval images``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import make_loaded

from cldyn_ros.cli import main
from cldyn_ros.imaging.io import find_pairs, read_color, read_thermal, write_image
from cldyn_ros.imaging.synthetic import generate_pairs, write_pairs
from cldyn_ros.inference.engine import FusionEngine
from cldyn_ros.offline.evaluation import baseline_method, engine_method, evaluate, folder_method

METRICS = ["EN", "SF", "Qabf", "SSIM"]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_pairs(generate_pairs(3, seed=2, height=48, width=64),
                       tmp_path_factory.mktemp("eval"))


def _max_folder(ir_dir: Path, vi_dir: Path, out: Path) -> Path:
    """Write the per-pixel maximum of IR and the visible image's grey as 'fused' files."""
    for name, ir_file, vi_file in find_pairs(ir_dir, vi_dir).pairs:
        vis = read_color(vi_file).astype(np.float32)
        y = vis @ np.array([0.299, 0.587, 0.114], np.float32)
        fused = np.maximum(read_thermal(ir_file).astype(np.float32), y)
        write_image(out / f"{name}.png", np.round(fused).clip(0, 255).astype(np.uint8))
    return out


def test_folder_of_max_outputs_scores_like_the_max_baseline(pairs, tmp_path):
    ir_dir, vi_dir = pairs
    folder = _max_folder(ir_dir, vi_dir, tmp_path / "max_files")
    table = evaluate(find_pairs(ir_dir, vi_dir),
                     {"max": baseline_method("max"), "files": folder_method(folder),
                      "average": baseline_method("average")}, METRICS, progress=False)
    for metric in METRICS:
        assert table.mean("files", metric) == pytest.approx(table.mean("max", metric), abs=0.02)
    ranks = table.ranks("SF")
    assert sorted(ranks.values()) == [1, 2, 3]
    assert ranks["average"] == 3  # averaging halves the contrast of edges


def test_missing_fused_file_is_recorded_not_fatal(pairs, tmp_path):
    ir_dir, vi_dir = pairs
    folder = _max_folder(ir_dir, vi_dir, tmp_path / "partial")
    victim = sorted(folder.iterdir())[0]
    victim.unlink()
    table = evaluate(find_pairs(ir_dir, vi_dir), {"partial": folder_method(folder)}, METRICS,
                     progress=False)
    assert len(table.failures["partial"]) == 1 and victim.stem in table.failures["partial"][0]
    assert np.isnan(table.values["partial"]["EN"][0])
    assert np.isfinite(table.mean("partial", "EN"))


def test_engine_method_matches_fuse_output(pairs):
    ir_dir, vi_dir = pairs
    engine = FusionEngine(make_loaded(), device="cpu")
    table = evaluate(find_pairs(ir_dir, vi_dir),
                     {"model": engine_method(engine, "detection")}, ["EN"], progress=False)
    assert len(table.values["model"]["EN"]) == 3
    assert all(v > 0 for v in table.values["model"]["EN"])


def test_eval_images_cli_writes_tables(pairs, tmp_path, capsys):
    ir_dir, vi_dir = pairs
    folder = _max_folder(ir_dir, vi_dir, tmp_path / "m")
    names = tmp_path / "names.txt"
    names.write_text("\n".join(sorted(p.stem for p in vi_dir.iterdir())[:2]))
    out = tmp_path / "report"
    code = main(["eval", "images", "--ir", str(ir_dir), "--vi", str(vi_dir), "--fused",
                 f"MAXFILES={folder}", "--no-model", "--names", str(names), "--metrics",
                 "EN,Qabf", "--out", str(out), "--no-progress"])
    assert code == 0
    data = json.loads((out / "table.json").read_text())
    assert len(data["pairs"]) == 2
    assert set(data["summary"]) == {"average", "max", "MAXFILES"}
    assert "| MAXFILES |" in (out / "table.md").read_text()
    assert (out / "table.csv").read_text().startswith("method,EN_mean,EN_std,EN_rank")
    capsys.readouterr()
    assert main(["eval", "images", "--ir", str(ir_dir), "--vi", str(vi_dir), "--no-model",
                 "--metrics", "EN,BOGUS"]) == 2
    assert "unknown metric(s) ['BOGUS']" in capsys.readouterr().err
    assert main(["eval", "images", "--ir", str(ir_dir), "--vi", str(vi_dir), "--fused",
                 "nodir"]) == 2


@pytest.mark.parametrize("factor", [0.5, 2.0])  # thermal larger, then smaller than colour
def test_evaluation_and_training_resize_thermal_frames_as_the_engine(tmp_path: Path,
                                                                    factor: float) -> None:
    import cv2

    from cldyn_ros.offline.evaluation import load_pair

    pair = generate_pairs(1, seed=4, height=48, width=64)[0]
    small = cv2.resize(pair.ir, None, fx=1 / factor, fy=1 / factor,
                       interpolation=cv2.INTER_NEAREST)
    write_image(tmp_path / "ir.png", small)
    write_image(tmp_path / "vi.png", pair.vis)
    ir, _ = load_pair(tmp_path / "ir.png", tmp_path / "vi.png")
    engine = FusionEngine(make_loaded(), device="cpu")
    result = engine.fuse(read_thermal(tmp_path / "ir.png"), read_color(tmp_path / "vi.png"))
    assert ir.shape == result.ir.shape == (1, 1, 48, 64)
    assert np.array_equal(ir.numpy(), result.ir.cpu().numpy())
