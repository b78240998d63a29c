"""Pinned outputs: the fused images and luminance of fixed inputs, bit for bit.

Fixed, seeded synthetic pairs go through the shipped models with several settings (8- and
16-bit thermal, temporal smoothing of the stretch, a resized thermal frame, a homography,
a task, a blend, several tasks in one pass, colour order) through the engine, and a
generated bag through the offline bag evaluation (fused images written to the output bag
and the per-pair metrics). The SHA-256 digests below were computed with the code as it
stood before the redesign of the settings, the frame pipeline and thermal normalisation;
a refactoring must leave every digest unchanged.

Floating-point results depend on the CPU (vendor and vector instructions pick different
oneDNN kernels) and on torch's version, so the digests are kept per platform
(``platform_key()``). The first set was made on an Intel Xeon; the AMD EPYC set on an
EPYC with the code of the commit that introduced the pins (the redesigned code gives the
same digests there). On a platform with no recorded set the test is
skipped with the key; ``python test/inference/test_output_pins.py`` prints the digests of
the checkout for a new set, to be made with the code before a change.
"""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path

import numpy as np
import pytest
import torch

from cldyn_ros.imaging.registration import Registration
from cldyn_ros.imaging.synthetic import generate_pairs
from cldyn_ros.imaging.thermal import ThermalNormalizer
from cldyn_ros.inference.engine import FusionEngine
from cldyn_ros.offline.bag_eval import BagEvalSettings, evaluate_bag
from cldyn_ros.offline.bags import StreamSpec, read_images, synthetic_stream, write_stream

H, W = 40, 56
MODELS = Path(__file__).resolve().parents[2] / "models"


def cpu_vendor() -> str:
    """The CPU's vendor string from /proc/cpuinfo ('unknown' where it is not readable)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("vendor_id"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def platform_key() -> str:
    return f"{platform.machine()} {cpu_vendor()} torch {torch.__version__}"


def digest(*arrays: np.ndarray | torch.Tensor) -> str:
    h = hashlib.sha256()
    for a in arrays:
        if isinstance(a, torch.Tensor):
            a = a.detach().cpu().contiguous().numpy()
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:32]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pairs() -> list:
    """Three frames of a generated scene: 16-bit thermal and 8-bit colour."""
    return generate_pairs(3, seed=7, height=H, width=W, thermal_bits=16)


def thermal8(pair) -> np.ndarray:
    return (pair.ir >> 8).astype(np.uint8)


def engine_for(model: str, smoothing: float, **kwargs) -> FusionEngine:
    return FusionEngine(MODELS / model, device="cpu",
                        normalizer=ThermalNormalizer(1.0, 99.0, smoothing), **kwargs)


def fuse_sequence(engine: FusionEngine, frames, requests, color_order="rgb") -> str:
    """Digest of every output image and fused luminance over a sequence of frames."""
    parts = []
    for thermal, color in frames:
        result = engine.fuse(thermal, color, requests, color_order=color_order)
        for label in sorted(result.images):
            parts.append(result.images[label])
        parts.append(result.fused_y.float())
        parts.append(result.ir.float())
    return digest(*parts)


ENGINE_PINS_BY_PLATFORM = {
    "x86_64 GenuineIntel torch 2.13.0+cpu": {
        "default_8bit_plain": "3563197a15066b2654ad7d7181becfdd",
        "default_16bit_smoothed": "ed6374be1d2400c20454dcf9a8b4f785",
        "default_16bit_unsmoothed_resized_bgr": "275043858937785a29de3277375645c6",
        "default_16bit_homography": "27ba40a0cd1e0e54c9a56f3817366cd6",
        "tasks_one_task": "7ef3cf470592837dc1ecd975fbb9ba1a",
        "tasks_blend": "f0a93e646e21963dbc94002038bf622f",
        "tasks_batched_bgr_output": "9fa6cf15d96bed46c91ea929d2d289a6",
    },
    "x86_64 AuthenticAMD torch 2.13.0+cpu": {
        "default_8bit_plain": "ef0394ee136c0dff2c76229fdab1f813",
        "default_16bit_smoothed": "37c20ad2a1ae8d0886020cf4e58ed973",
        "default_16bit_unsmoothed_resized_bgr": "0dfb7fab2823f02715c2ff0efc25725c",
        "default_16bit_homography": "ce7383aaa1b224ceb6a0f8582a225e7c",
        "tasks_one_task": "b3e50dd7b5f9789ab23b530b8ef452ec",
        "tasks_blend": "3d3db1480c12c80cdb90b02df74216c5",
        "tasks_batched_bgr_output": "9fa6cf15d96bed46c91ea929d2d289a6",
    },
}
BAG_PINS_BY_PLATFORM = {
    "x86_64 GenuineIntel torch 2.13.0+cpu": {
        "images": "525440f192f03656bf98dbf2e9e248a6",
        "metrics": "3dbe775ee227e16b4bf8d41c92587b7d"},
    "x86_64 AuthenticAMD torch 2.13.0+cpu": {
        "images": "8d70e1281e1620c52c7d605ec0e4b4be",
        "metrics": "f0c4ff677561988815d1b1e9cd0d9851"},
}
CASES = sorted(next(iter(ENGINE_PINS_BY_PLATFORM.values())))
ENGINE_PINS = ENGINE_PINS_BY_PLATFORM.get(platform_key())
BAG_PIN = BAG_PINS_BY_PLATFORM.get(platform_key())

pytestmark = pytest.mark.skipif(
    ENGINE_PINS is None or BAG_PIN is None,
    reason=f"no digests recorded for this platform ({platform_key()})")


def engine_case(name: str, pairs) -> str:
    frames16 = [(p.ir, p.vis) for p in pairs]
    if name == "default_8bit_plain":
        e = engine_for("cldyn_default.pt", 0.9)
        return fuse_sequence(e, [(thermal8(p), p.vis) for p in pairs], ["none"])
    if name == "default_16bit_smoothed":
        e = engine_for("cldyn_default.pt", 0.9)
        return fuse_sequence(e, frames16, ["none"])
    if name == "default_16bit_unsmoothed_resized_bgr":
        e = engine_for("cldyn_default.pt", 0.0, thermal_mode="percentile")
        small = [(p.ir[::2, ::2].copy(), p.vis[..., ::-1].copy()) for p in pairs]
        return fuse_sequence(e, small, ["none"], color_order="bgr")
    if name == "default_16bit_homography":
        e = engine_for("cldyn_default.pt", 0.9,
                       registration=Registration([1.0, 0.02, 2.0, -0.01, 1.0, -1.5, 0, 0, 1]))
        return fuse_sequence(e, frames16, ["none"])
    if name == "tasks_one_task":
        e = engine_for("cldyn_tasks.pt", 0.9)
        return fuse_sequence(e, frames16, [e.request("warm_objects", 0.7, label="fused")])
    if name == "tasks_blend":
        e = engine_for("cldyn_tasks.pt", 0.5)
        blend = {"warm_objects": 0.6, "visible_edges": 0.4}
        return fuse_sequence(e, frames16, [e.request(blend, 0.8, label="fused")])
    if name == "tasks_batched_bgr_output":
        e = engine_for("cldyn_tasks.pt", 0.9)
        reqs = [e.request(t, 1.0, label=t) for t in ("none", "visible_edges", "warm_objects")]
        parts = []
        for thermal, color in frames16:
            result = e.fuse(thermal, color, reqs)
            # The node's bgr8 output: channels reversed from the engine's colour order.
            parts += [result.images[t][..., ::-1] for t in sorted(result.images)]
        return digest(*parts)
    raise KeyError(name)


def test_every_platform_pins_the_same_cases() -> None:
    assert all(sorted(p) == CASES for p in ENGINE_PINS_BY_PLATFORM.values())
    assert set(BAG_PINS_BY_PLATFORM) == set(ENGINE_PINS_BY_PLATFORM)


@pytest.mark.parametrize("name", CASES)
def test_engine_outputs_are_pinned(name: str, pairs) -> None:
    assert ENGINE_PINS is not None
    assert engine_case(name, pairs) == ENGINE_PINS[name]


def bag_case(tmp_path: Path) -> dict[str, str]:
    bag = tmp_path / "drive"
    spec = StreamSpec(rgb_rate=10, thermal_rate=20, jitter_ms=2.0, thermal_bits=16,
                      rgb_encoding="bgr8")
    write_stream(bag, synthetic_stream(0.8, spec, H, W), storage="mcap")
    engine = engine_for("cldyn_tasks.pt", 0.9)
    settings = BagEvalSettings(tasks=("none", "warm_objects"), progress=False, batch_size=3,
                               metrics=("EN", "SD", "SF", "Qabf"), write_bag=True)
    report = evaluate_bag(bag, engine, settings, tmp_path / "out")
    assert report["frames"]["fused"] == 8
    images = []
    for task in settings.tasks:
        images += [r.image for r in read_images(tmp_path / "out" / "fused_bag",
                                                [f"/fused/{task}/image"])]
    metrics = [{k: v for k, v in r.items() if k not in ("timings_ms",)}
               for r in report["per_pair"]]
    got = {"images": digest(*images),
           "metrics": hashlib.sha256(json.dumps(metrics, sort_keys=True).encode())
           .hexdigest()[:32]}
    return got


def test_bag_evaluation_outputs_are_pinned(tmp_path: Path) -> None:
    assert bag_case(tmp_path) == BAG_PIN


if __name__ == "__main__":
    import tempfile

    torch.set_num_threads(1)
    print(f'"{platform_key()}": {{')
    pairs7 = generate_pairs(3, seed=7, height=H, width=W, thermal_bits=16)
    for case in CASES:
        print(f'    "{case}": "{engine_case(case, pairs7)}",')
    print("}")
    with tempfile.TemporaryDirectory() as d:
        print("bag:", bag_case(Path(d)))
