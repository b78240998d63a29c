#!/usr/bin/env python3
"""Post-training int8 quantisation of the plain fusion network against fp32, one process.

ONNX Runtime static quantisation (QDQ, per-channel int8 weights, uint8 activations,
convolutions only; calibrated on RoadScene training pairs, never on the evaluation sets) of
the fixed-size export of a checkpoint (``cldyn export onnx --task none``), timed
interleaved against the fp32 export in onnxruntime and the engine's torch fast path, and
scored (Q^AB/F, SSIM) on VIFB pairs resized to the export size. Prints a JSON report.

    PYTHONPATH=. python scripts/int8_study.py --model models/cldyn_default.pt \
        --size 640x512 --threads 1 --iterations 5 --json runs/int8_study.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="models/cldyn_default.pt")
    p.add_argument("--size", default="640x512", help="WIDTHxHEIGHT of the export")
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--calibration-pairs", type=int, default=8)
    p.add_argument("--eval-pairs", type=int, default=21)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--iterations", type=int, default=5)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    import cv2
    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from cldyn_ros.imaging.io import find_pairs
    from cldyn_ros.inference.checkpoint import load_checkpoint
    from cldyn_ros.inference.export import export_onnx
    from cldyn_ros.metrics import fusion_metrics
    from cldyn_ros.offline.evaluation import load_pair
    from cldyn_ros.tools.bench import machine_info

    torch.set_num_threads(args.threads)
    w, h = (int(v) for v in args.size.lower().split("x"))
    loaded = load_checkpoint(args.model)
    data = Path(args.data)

    def pairs(folder: Path, names: list[str] | None, limit: int):
        listing = find_pairs(folder / "ir", folder / "vi")
        out = []
        for name, ir_file, vi_file in listing.pairs:
            if names is not None and name not in names:
                continue
            ir, ycbcr = load_pair(ir_file, vi_file)
            ir = cv2.resize(ir[0, 0].numpy(), (w, h), interpolation=cv2.INTER_AREA)
            y = cv2.resize(ycbcr[0, 0].numpy(), (w, h), interpolation=cv2.INTER_AREA)
            out.append((name, ir[None, None].astype(np.float32), y[None, None].astype(np.float32)))
            if len(out) == limit:
                break
        return out

    test = set((data / "roadscene" / "test_split.txt").read_text().split())
    train_names = [n for n, _, _ in find_pairs(data / "roadscene" / "ir",
                                               data / "roadscene" / "vi").pairs
                   if n not in test]
    calib = pairs(data / "roadscene", train_names[:: max(1, len(train_names) // 50)],
                  args.calibration_pairs)
    evals = pairs(data / "vifb", None, args.eval_pairs)

    fp32 = io.BytesIO()
    export_onnx(loaded, ["none"], fp32, height=h, width=w)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"ir": ir, "vis_y": y} for _, ir, y in calib])

        def get_next(self):
            return next(self.items, None)

    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"cldyn_int8_{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "fp32.onnx").write_bytes(fp32.getvalue())
    t0 = time.perf_counter()
    quantize_static(str(tmp / "fp32.onnx"), str(tmp / "int8.onnx"), Reader(),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=["Conv"])
    calib_s = time.perf_counter() - t0

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    sessions = {name: ort.InferenceSession(str(tmp / f"{name}.onnx"), options,
                                           providers=["CPUExecutionProvider"])
                for name in ("fp32", "int8")}
    fast = loaded.model.fuse_for_inference().to(memory_format=torch.channels_last)

    def run_torch(ir, y):
        with torch.inference_mode():
            a = torch.from_numpy(ir).contiguous(memory_format=torch.channels_last)
            b = torch.from_numpy(y).contiguous(memory_format=torch.channels_last)
            return fast(a, b).numpy()

    runners = {"torch_fast_fp32": run_torch,
               **{f"onnx_{k}": (lambda ir, y, s=s: s.run(["fused"], {"ir": ir, "vis_y": y})[0])
                  for k, s in sessions.items()}}
    # quality: every path on the same resized VIFB pairs, output rounded to 8 bits
    scores: dict[str, dict[str, list[float]]] = {k: {} for k in runners}
    for _, ir, y in evals:
        for k, fn in runners.items():
            fused = np.round(np.clip(fn(ir, y), 0, 1) * 255) / 255
            vals = fusion_metrics(torch.from_numpy(fused.astype(np.float32)),
                                  torch.from_numpy(ir), torch.from_numpy(y), ("Qabf", "SSIM"))
            for m, v in vals.items():
                scores[k].setdefault(m, []).append(float(v[0]))
    # speed: interleaved, one frame each per round, after one warm-up frame each
    _, ir, y = evals[0]
    for fn in runners.values():
        fn(ir, y)
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(args.iterations):
        for k, fn in runners.items():
            t = time.perf_counter()
            fn(ir, y)
            times[k].append((time.perf_counter() - t) * 1000)
    base = float(np.median(times["onnx_fp32"]))
    report = {
        "command": "scripts/int8_study.py " + " ".join(sys.argv[1:]),
        "machine": machine_info(),
        "size": [h, w],
        "calibration_pairs": len(calib),
        "eval_pairs": len(evals),
        "calibration_s": calib_s,
        "results": {
            k: {"ms_p50": float(np.median(times[k])), "ms_all": times[k],
                "speedup_vs_onnx_fp32": base / float(np.median(times[k])),
                **{m: float(np.mean(v)) for m, v in scores[k].items()}}
            for k in runners
        },
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
