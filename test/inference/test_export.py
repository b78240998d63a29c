"""ONNX export and the onnxruntime engine backend: parity with PyTorch on CPU."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from helpers import make_loaded, random_pair

from cldyn_ros.cli import main
from cldyn_ros.inference.checkpoint import save_checkpoint
from cldyn_ros.inference.engine import FusionEngine, TaskError
from cldyn_ros.inference.export import META_KEY, ExportError, OnnxRunner, export_onnx

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

H, W = 33, 47
TOL = dict(atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def loaded():
    return make_loaded(tasks=("detection", "segmentation", "saliency"))


@pytest.fixture(scope="module")
def pair():
    return random_pair(H, W, seed=7)


@pytest.fixture(scope="module")
def reference(loaded):
    return FusionEngine(loaded, device="cpu", optimize=False)


def _export(loaded, tasks, **kwargs) -> bytes:
    buf = io.BytesIO()
    export_onnx(loaded, tasks, buf, height=kwargs.pop("height", H),
                width=kwargs.pop("width", W), **kwargs)
    return buf.getvalue()


def test_baked_tasks_match_pytorch(loaded, pair, reference):
    model = _export(loaded, ["detection", "segmentation"])
    engine = FusionEngine(loaded, device="cpu", backend="onnx", onnx_path=model)
    reqs = ["none", "detection", "segmentation", engine.request("detection", 0.5, "half")]
    got = engine.fuse(*pair, reqs)
    ref = reference.fuse(*pair, reqs)
    torch.testing.assert_close(got.fused_y, ref.fused_y, **TOL)
    assert all(np.abs(got.images[k].astype(int) - ref.images[k].astype(int)).max() <= 1
               for k in ref.images)


def test_session_inputs_outputs_and_metadata(loaded):
    model = _export(loaded, ["segmentation"])
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["ir", "vis_y", "strength"]
    assert [o.name for o in sess.get_outputs()] == ["fused"]
    assert sess.get_outputs()[0].shape == [1, 1, H, W]
    meta = json.loads(sess.get_modelmeta().custom_metadata_map[META_KEY])
    assert meta["tasks"] == ["segmentation"] and meta["height"] == H and not meta["dynamic"]
    assert meta["selection"].startswith("static")


def test_strength_zero_is_plain_fusion(loaded):
    model = _export(loaded, ["detection"])
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(0)
    ir, vis = torch.rand(1, 1, H, W, generator=gen), torch.rand(1, 1, H, W, generator=gen)
    out = sess.run(None, {"ir": ir.numpy(), "vis_y": vis.numpy(),
                          "strength": np.zeros(1, np.float32)})[0]
    with torch.no_grad():
        plain = loaded.model(ir, vis)
    torch.testing.assert_close(torch.from_numpy(out), plain, **TOL)


def test_dynamic_export_runs_other_sizes(loaded, reference):
    model = _export(loaded, ["detection", "saliency"], dynamic=True)
    engine = FusionEngine(loaded, device="cpu", backend="onnx", onnx_path=model)
    for h, w in ((H, W), (40, 64), (24, 30)):
        pair = random_pair(h, w, seed=h)
        reqs = ["saliency", "none", "detection"]
        torch.testing.assert_close(engine.fuse(*pair, reqs).fused_y,
                                   reference.fuse(*pair, reqs).fused_y, **TOL)


def test_blend_weights_as_input(loaded, pair, reference):
    model = _export(loaded, ["detection", "segmentation"], blend_input=True, outputs=2)
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["ir", "vis_y", "strength", "weights"]
    engine = FusionEngine(loaded, device="cpu", backend="onnx", onnx_path=model)
    blend = engine.request({"detection": 0.3, "segmentation": 0.7}, 0.8, "blend")
    reqs = [blend, "segmentation", "none"]  # three requests: two runs of two outputs
    torch.testing.assert_close(engine.fuse(*pair, reqs).fused_y,
                               reference.fuse(*pair, reqs).fused_y, **TOL)


def test_requests_the_model_cannot_serve_are_task_errors(loaded, pair):
    model = _export(loaded, ["detection", "segmentation"])
    engine = FusionEngine(loaded, device="cpu", backend="onnx", onnx_path=model)
    with pytest.raises(TaskError, match="saliency|only has"):
        engine.fuse(*pair, ["saliency"])
    with pytest.raises(TaskError, match="blend"):
        engine.fuse(*pair, [engine.request({"detection": 1, "segmentation": 1})])
    with pytest.raises(TaskError, match="dynamic"):
        engine.fuse(*random_pair(H + 2, W, seed=1), ["detection"])


def test_same_task_twice_with_different_strengths(loaded, pair, reference):
    model = _export(loaded, ["detection"])
    engine = FusionEngine(loaded, device="cpu", backend="onnx", onnx_path=model)
    reqs = [engine.request("detection", 1.0, "a"), engine.request("detection", 0.3, "b")]
    torch.testing.assert_close(engine.fuse(*pair, reqs).fused_y,
                               reference.fuse(*pair, reqs).fused_y, **TOL)


def test_engine_exports_on_the_fly(loaded, pair, reference):
    engine = FusionEngine(loaded, device="cpu", backend="onnx", onnx_tasks=["saliency"])
    assert engine.onnx.tasks == ["saliency"]
    torch.testing.assert_close(engine.fuse(*pair, ["saliency"]).fused_y,
                               reference.fuse(*pair, ["saliency"]).fused_y, **TOL)


def test_reduced_embedding_is_exported(loaded, pair):
    model = _export(loaded, ["detection"], embed_max_side=16)
    engine = FusionEngine(loaded, device="cpu", backend="onnx", onnx_path=model)
    ref = FusionEngine(loaded, device="cpu", embed_max_side=16)
    torch.testing.assert_close(engine.fuse(*pair, ["detection"]).fused_y,
                               ref.fuse(*pair, ["detection"]).fused_y, **TOL)


def test_export_errors(loaded):
    with pytest.raises(ExportError, match="unknown task"):
        _export(loaded, ["tracking"])
    with pytest.raises(ExportError, match="none"):
        _export(loaded, ["none", "detection"])
    with pytest.raises(ExportError, match="at least one"):
        _export(loaded, [])
    with pytest.raises(ExportError, match="distinct"):
        _export(loaded, ["detection", "detection"])
    with pytest.raises(ExportError, match="not a cldyn_ros"):
        h = onnx.helper
        x = h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
        y = h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
        graph = h.make_graph([h.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
        m = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
        m.ir_version = 8
        OnnxRunner(m.SerializeToString(), loaded.task_vectors)


def test_cli_export_onnx(tmp_path, loaded, capsys):
    ckpt = save_checkpoint(tmp_path / "m.pt", loaded.model, loaded.task_vectors)
    out = tmp_path / "fusion.onnx"
    code = main(["export", "onnx", "--model", str(ckpt), "--tasks", "detection,saliency",
                 "--out", str(out), "--height", str(H), "--width", str(W), "--check"])
    assert code == 0 and out.is_file()
    text = capsys.readouterr().out
    assert "wrote" in text and "max abs difference" in text
    err = float(text.rsplit("difference", 1)[1])
    assert err < 1e-4
    code = main(["export", "onnx", "--model", str(ckpt), "--task", "nope", "--out",
                 str(tmp_path / "x.onnx")])
    assert code == 2 and "unknown task" in capsys.readouterr().err


def test_cli_export_dynamic(tmp_path, loaded):
    ckpt = save_checkpoint(tmp_path / "m.pt", loaded.model, loaded.task_vectors)
    out = tmp_path / "dyn.onnx"
    assert main(["export", "onnx", "--model", str(ckpt), "--task", "detection", "--out",
                 str(out), "--dynamic", "--height", "32", "--width", "40"]) == 0
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape[2:] == ["height", "width"]


@pytest.mark.parametrize("prior", ["none", "detail"])
def test_plain_export_of_a_model_without_rsc(pair, prior):
    from helpers import make_model

    from cldyn_ros.inference.checkpoint import LoadedModel

    model = make_model(with_rsc=False, prior=prior)
    torch.nn.init.normal_(model.vfn.decoder.tail[-1].weight, std=0.1)  # a non-zero correction
    vfn_only = LoadedModel(model)
    model = _export(vfn_only, ["none"], dynamic=True)
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["ir", "vis_y"]
    engine = FusionEngine(vfn_only, device="cpu", backend="onnx", onnx_path=model)
    ref = FusionEngine(vfn_only, device="cpu", optimize=False)
    torch.testing.assert_close(engine.fuse(*pair, ["none"]).fused_y,
                               ref.fuse(*pair, ["none"]).fused_y, **TOL)
    on_the_fly = FusionEngine(vfn_only, device="cpu", backend="onnx")
    assert on_the_fly.onnx.plain
