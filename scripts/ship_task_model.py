"""Ship a stage-2 result as the default model, and the task networks it was trained against.

The default model = the VFN of ``--base`` (unchanged, bit for bit) + the RSC and task
vectors of ``--rsc`` (a ``cldyn train rsc`` checkpoint trained with that VFN frozen). The
base's metadata (the VFN's provenance, its engine defaults) is kept; the stage-2 metadata
is added under ``rsc``. Refuses when the two VFNs differ, and checks that task ``none``
gives exactly the base's output. The task networks are copied in float16.

    python scripts/ship_task_model.py --rsc runs/rsc_tasks/cldyn_tasks3.pt \
        --base models/cldyn_default.pt --out models/cldyn_default.pt --networks runs/tasks
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from cldyn_ros.inference.checkpoint import load_checkpoint, save_checkpoint
from cldyn_ros.training.task_files import export_task_network

TASKS = ("detection", "segmentation", "saliency")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rsc", type=Path, required=True, help="cldyn train rsc checkpoint")
    p.add_argument("--base", type=Path, required=True, help="the VFN-only default model")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--networks", type=Path, help="folder with <task>.pt task networks")
    p.add_argument("--models", type=Path, default=Path("models"),
                   help="where the task networks go as task_<task>.pt")
    args = p.parse_args(argv)
    base, rsc = load_checkpoint(args.base), load_checkpoint(args.rsc)
    base_vfn, rsc_vfn = base.model.vfn.state_dict(), rsc.model.vfn.state_dict()
    differ = [k for k in base_vfn if not torch.equal(base_vfn[k], rsc_vfn[k])]
    if differ or set(base_vfn) != set(rsc_vfn):
        print(f"error: the VFN of {args.rsc} is not that of {args.base}: {differ[:5]}")
        return 1
    if {**base.model.config.to_dict(), "with_rsc": True} != rsc.model.config.to_dict():
        print("error: architecture settings differ besides with_rsc")
        return 1
    # Task none on a few inputs: exactly the base's output.
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for h, w in ((40, 56), (96, 128)):
            ir, y = torch.rand(2, 1, 1, h, w, generator=gen)
            if not torch.equal(base.model(ir, y), rsc.model(ir, y)):
                print("error: task none differs from the base model's output")
                return 1
    metadata = {k: v for k, v in base.metadata.items() if k not in ("created", "rsc")}
    metadata["rsc"] = {k: v for k, v in rsc.metadata.items() if k != "created"}
    metadata["rsc"]["created"] = rsc.metadata.get("created")
    save_checkpoint(args.out, rsc.model, rsc.task_vectors, metadata)
    print(f"wrote {args.out}: tasks {sorted(rsc.task_vectors)}")
    if args.networks:
        for task in TASKS:
            src = args.networks / f"{task}.pt"
            dst = args.models / f"task_{task}.pt"
            export_task_network(src, dst, half=True)
            print(f"wrote {dst} ({dst.stat().st_size / 1e6:.1f} MB, float16) from {src}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
