"""``cldyn export onnx``: write the fusion network as an ONNX model (TensorRT, onnxruntime)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..inference.checkpoint import load_checkpoint
from ..paths import default_model_path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export the fusion network (ONNX)",
        description="Export the fusion network with task vectors baked in, for onnxruntime "
        "or TensorRT (trtexec --onnx=FILE). The graph's inputs are ir and vis_y "
        "(1x1xHxW in [0,1]) and strength (T,) (0 gives plain fusion); with --blend-input "
        "also weights (TxK) over the K baked tasks. The output fused is Tx1xHxW.",
    )
    fmt = p.add_subparsers(dest="format", metavar="FORMAT", required=True)
    o = fmt.add_parser("onnx", help="ONNX (opset 17)")
    o.add_argument("--model", type=Path, help="checkpoint (default: the shipped model)")
    which = o.add_mutually_exclusive_group(required=True)
    which.add_argument("--task", help="one task to bake in ('none': plain fusion, the only "
                       "choice for a model without RSC)")
    which.add_argument("--tasks", help="comma-separated tasks to bake in (one output each)")
    o.add_argument("--out", type=Path, required=True, help="output .onnx file")
    o.add_argument("--dynamic", action="store_true",
                      help="free height and width (traced at --height x --width)")
    o.add_argument("--height", type=int, default=512, help="frame height (default 512)")
    o.add_argument("--width", type=int, default=640, help="frame width (default 640)")
    o.add_argument("--blend-input", action="store_true",
                   help="take blend weights over the baked tasks as an input")
    o.add_argument("--outputs", type=int, default=1,
                   help="outputs per run with --blend-input (default 1)")
    o.add_argument("--embed-max-side", type=int,
                   help="A2SI image-embedding size (0: full resolution; default: the model's)")
    o.add_argument("--check", action="store_true",
                   help="run the exported model once with onnxruntime and compare with PyTorch")
    o.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..inference.export import export_onnx

    tasks = [args.task] if args.task else [t.strip() for t in args.tasks.split(",") if t.strip()]
    loaded = load_checkpoint(args.model or default_model_path())
    meta = export_onnx(loaded, tasks, args.out, height=args.height, width=args.width,
                       dynamic=args.dynamic, blend_input=args.blend_input,
                       outputs=args.outputs, embed_max_side=args.embed_max_side)
    size = "dynamic" if args.dynamic else f"{args.width}x{args.height}"
    print(f"wrote {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB): tasks {tasks}, "
          f"{meta['outputs']} output(s), {size}, embedding max side "
          f"{meta['embed_max_side'] or 'full'}")
    if args.check:
        err = check_parity(loaded, args.out, tasks, args.height, args.width,
                           meta["embed_max_side"])
        print(f"onnxruntime vs PyTorch: max abs difference {err:.2e}")
    return 0


def check_parity(loaded, path: Path, tasks: list[str], height: int, width: int,
                 embed_max_side: int = 0) -> float:
    """Max abs difference between onnxruntime and the PyTorch engine on a synthetic frame."""
    from ..inference.engine import FusionEngine
    from ..tools.bench import synthetic_frames

    thermal, color = synthetic_frames(height, width)
    torch_engine = FusionEngine(loaded, device="cpu", embed_max_side=embed_max_side)
    onnx_engine = FusionEngine(loaded, device="cpu", backend="onnx", onnx_path=path)
    a = torch_engine.fuse(thermal, color, tasks).fused_y
    b = onnx_engine.fuse(thermal, color, tasks).fused_y
    return float((a - b).abs().max())
