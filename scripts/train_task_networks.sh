#!/usr/bin/env bash
# Train the three downstream task networks one after the other (one CPU thread each):
#   detection (YOLOv8n), segmentation (LRASPP), saliency (U2NETP), on pairs fused by
#   models/cldyn_default.pt, with the configs config/train_task_*.yaml.
# Resumable: run it again and each training continues from runs/tasks/<task>.pt.state.pt
# (a finished one only rewrites its weights). Logs: runs/tasks/<task>.log.
#   nohup scripts/train_task_networks.sh > runs/tasks/chain.log 2>&1 &
# CLDYN: the cldyn command (default: this checkout's code with .venv's python).
set -uo pipefail
cd "$(dirname "$0")/.."
CLDYN=${CLDYN:-"env PYTHONPATH=$PWD .venv/bin/python -m cldyn_ros.cli"}
mkdir -p runs/tasks
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
for task in detection segmentation saliency; do
  echo "$(date -u +%FT%TZ) start $task"
  $CLDYN train task --config "config/train_task_$task.yaml" > "runs/tasks/$task.log" 2>&1
  rc=$?
  echo "$(date -u +%FT%TZ) end $task (exit $rc)"
done
