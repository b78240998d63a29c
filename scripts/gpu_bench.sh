#!/usr/bin/env bash
# The whole GPU speed benchmark of issue 6 in one short run (a few minutes on an H100):
#   1. machine description (nvidia-smi, torch, onnxruntime providers)
#   2. the CUDA parity tests (fp32/fp16/bf16, compiled graphs, device preprocessing)
#   3. model-level bench: 640x512 and 1280x1024, fp32/fp16/bf16, 1 and 3 tasks, eager
#      (plain fp32 baseline, same run) and fast paths, full and reduced embedding
#   4. compiled (torch.compile + CUDA graphs) and ONNX paths at 640x512, fp16
#   5. soak: steady GPU memory over many frames (growth check)
#   6. node level: the real node over real DDS at 30 Hz colour / 60 Hz thermal, 640x512,
#      fp16, default model: stamp -> fused frame latency, drops, node RSS/GPU memory
#      (skipped without rclpy)
# Results (JSON + markdown) go to $OUT (or ./gpu_bench_out). Every setting can be shrunk
# through the environment, which the CPU test of this script does:
#   CLDYN_BENCH_DEVICE (cuda), CLDYN_BENCH_SIZES (640x512,1280x1024),
#   CLDYN_BENCH_ITERATIONS (100), CLDYN_BENCH_COMPILED_SIZES (640x512),
#   CLDYN_BENCH_PRECISIONS (fp32,fp16,bf16), CLDYN_BENCH_LOW (fp16),
#   CLDYN_BENCH_SOAK_FRAMES (10000), CLDYN_BENCH_SKIP_TESTS (unset),
#   CLDYN_BENCH_COMPILE_BACKEND (inductor), CLDYN_BENCH_NODE_FRAMES (300),
#   CLDYN_BENCH_NODE_SIZE (640x512), CLDYN_BENCH_SKIP_NODE (unset), PYTHON.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-gpu_bench_out}"
mkdir -p "$OUT_DIR"
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3; fi
DEVICE="${CLDYN_BENCH_DEVICE:-cuda}"
SIZES="${CLDYN_BENCH_SIZES:-640x512,1280x1024}"
ITER="${CLDYN_BENCH_ITERATIONS:-100}"
CSIZES="${CLDYN_BENCH_COMPILED_SIZES:-640x512}"
PRECS="${CLDYN_BENCH_PRECISIONS:-fp32,fp16,bf16}"
LOW="${CLDYN_BENCH_LOW:-fp16}"
SOAK="${CLDYN_BENCH_SOAK_FRAMES:-10000}"
NODE_FRAMES="${CLDYN_BENCH_NODE_FRAMES:-300}"
NODE_SIZE="${CLDYN_BENCH_NODE_SIZE:-640x512}"
CBACKEND=()
[ -n "${CLDYN_BENCH_COMPILE_BACKEND:-}" ] && CBACKEND=(--compile-backend "$CLDYN_BENCH_COMPILE_BACKEND")
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0
log() { echo "[gpu_bench $(date -u +%H:%M:%S)] $*" | tee -a "$OUT_DIR/log.txt"; }

log "machine"
{
  date -u
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  "$PY" -c "import torch, json; print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, 'gpu': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}))"
  "$PY" -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())" 2>&1
} > "$OUT_DIR/machine.txt" 2>&1

if [ -z "${CLDYN_BENCH_SKIP_TESTS:-}" ]; then
  log "CUDA parity tests"
  "$PY" -m pytest -q -p no:cacheprovider test/inference/test_speed_paths.py -k "cuda or compile or oom or fall" \
    > "$OUT_DIR/tests.txt" 2>&1 || { log "parity tests FAILED (see tests.txt)"; status=1; }
  tail -3 "$OUT_DIR/tests.txt" | tee -a "$OUT_DIR/log.txt"
fi

log "model-level bench: $SIZES, $PRECS, tasks 1,3, eager+fast, embedding full+160"
"$PY" -m cldyn_ros.cli bench --devices "$DEVICE" --sizes "$SIZES" --precisions "$PRECS" \
  --tasks 1,3 --paths eager,fast --embed-max-sides 0,160 --iterations "$ITER" --warmup 3 \
  --metrics --json "$OUT_DIR/bench_model.json" --markdown "$OUT_DIR/bench_model.md" \
  > "$OUT_DIR/bench_model.txt" 2>>"$OUT_DIR/log.txt" || { log "model bench FAILED"; status=1; }

log "compiled + ONNX paths: $CSIZES, $LOW"
"$PY" -m cldyn_ros.cli bench --devices "$DEVICE" --sizes "$CSIZES" --precisions "$LOW" \
  --tasks 1,3 --paths compiled,onnx --embed-max-sides 160 --iterations "$ITER" --warmup 3 \
  "${CBACKEND[@]}" \
  --json "$OUT_DIR/bench_compiled.json" --markdown "$OUT_DIR/bench_compiled.md" \
  > "$OUT_DIR/bench_compiled.txt" 2>>"$OUT_DIR/log.txt" || { log "compiled bench FAILED"; status=1; }

log "soak: $SOAK frames, $LOW, one task, 640x512"
"$PY" - "$DEVICE" "$LOW" "$SOAK" "$OUT_DIR/soak.json" <<'PYEOF' 2>>"$OUT_DIR/log.txt" || { log "soak FAILED"; status=1; }
import json, sys, time
import torch
from cldyn_ros.tools.bench import bench_model, machine_info, peak_host_memory_mb, percentiles, synthetic_frames
from cldyn_ros.inference.engine import FusionEngine
device, precision, frames, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
loaded = bench_model(tasks=1)
engine = FusionEngine(loaded, device=device, precision=precision, embed_max_side=160,
                      warmup=(512, 640))
thermal, color = synthetic_frames(512, 640)
reqs = [engine.request("task0")]
cuda = engine.device.type == "cuda"
mem = lambda: torch.cuda.memory_allocated(engine.device) / 2**20 if cuda else peak_host_memory_mb()
for _ in range(20):
    engine.fuse(thermal, color, reqs)
start, samples, marks = mem(), [], []
t0 = time.perf_counter()
for i in range(frames):
    t = time.perf_counter()
    engine.fuse(thermal, color, reqs)
    samples.append((time.perf_counter() - t) * 1000)
    if i % max(1, frames // 10) == 0:
        marks.append(mem())
wall = time.perf_counter() - t0
report = {"kind": "soak", "machine": machine_info(), "frames": frames, "precision": precision,
          "memory_start_mb": start, "memory_end_mb": mem(), "memory_marks_mb": marks,
          "peak_gpu_mb": torch.cuda.max_memory_allocated(engine.device) / 2**20 if cuda else None,
          "reserved_gpu_mb": torch.cuda.memory_reserved(engine.device) / 2**20 if cuda else None,
          "frame_ms": percentiles(samples), "fps": frames / wall}
json.dump(report, open(out, "w"), indent=2)
print(json.dumps({k: report[k] for k in ("memory_start_mb", "memory_end_mb", "fps")}))
PYEOF

if [ -z "${CLDYN_BENCH_SKIP_NODE:-}" ]; then
  if "$PY" -c "import rclpy" >/dev/null 2>&1; then
    log "node level: $NODE_FRAMES colour frames, $NODE_SIZE, $LOW, 30/60 Hz"
    "$PY" -m cldyn_ros.cli bench node --frames "$NODE_FRAMES" --size "$NODE_SIZE" \
      --rgb-rate 30 --thermal-rate 60 --device "$DEVICE" --precision "$LOW" \
      --out "$OUT_DIR/node" > "$OUT_DIR/bench_node.txt" 2>>"$OUT_DIR/log.txt" \
      || { log "node bench FAILED (see node/node.log)"; status=1; }
  else
    log "node level: skipped (no rclpy)"
  fi
fi

{
  echo "# GPU benchmark ($(date -u +%Y-%m-%dT%H:%MZ))"
  echo; echo '```'; cat "$OUT_DIR/machine.txt"; echo '```'
  [ -f "$OUT_DIR/tests.txt" ] && { echo; echo "## Parity tests"; echo '```'; tail -3 "$OUT_DIR/tests.txt"; echo '```'; }
  echo; echo "## Model level (eager fp32 = baseline, same run)"; cat "$OUT_DIR/bench_model.md" 2>/dev/null
  echo; echo "## Compiled / ONNX"; cat "$OUT_DIR/bench_compiled.md" 2>/dev/null
  echo; echo "## Soak"; echo '```'; cat "$OUT_DIR/soak.json" 2>/dev/null | head -30; echo '```'
  [ -f "$OUT_DIR/node/bench_node.md" ] && { echo; echo "## Node level (real DDS, 30/60 Hz)"; cat "$OUT_DIR/node/bench_node.md"; }
} > "$OUT_DIR/summary.md"
log "done (status $status): $OUT_DIR/summary.md"
exit $status
