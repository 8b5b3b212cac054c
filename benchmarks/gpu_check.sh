#!/usr/bin/env bash
# The GPU check, in one go on a machine with a CUDA GPU (about 10 minutes
# on one recent GPU): the `gpu` tests, then fits of the default 2D config, volume3d and
# hires3d with and without bf16 autocast, and the synthesis of 500 volumes. Each
# measurement prints one JSON line (seconds per epoch, total seconds, peak GPU memory).
#
#   bash benchmarks/gpu_check.sh [SCANS] [EPOCHS_3D]     # defaults: sample_data 20
#
# Run from the repository root after `make install` (a CUDA build of torch).
set -euo pipefail
SCANS=${1:-sample_data}
EPOCHS_3D=${2:-20}
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-$(mktemp -d)}
BENCH="$PY benchmarks/bench_gpu.py"
start=$(date +%s)

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible to torch'; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

echo "== gpu tests"
$PY -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py

echo "== fits"
$BENCH fit --config default --scans "$SCANS" --out "$OUT/default"
$BENCH fit --config default --scans "$SCANS" --out "$OUT/default-fp32" --no-amp
$BENCH fit --config volume3d --scans "$SCANS" --epochs "$EPOCHS_3D" --out "$OUT/volume3d"
$BENCH fit --config volume3d --scans "$SCANS" --epochs "$EPOCHS_3D" --out "$OUT/volume3d-fp32" --no-amp
$BENCH fit --config hires3d --scans "$SCANS" --epochs "$EPOCHS_3D" --out "$OUT/hires3d"
$BENCH fit --config hires3d --scans "$SCANS" --epochs "$EPOCHS_3D" --out "$OUT/hires3d-fp32" --no-amp

echo "== synthesis of 500 volumes"
$BENCH synthesize --model "$OUT/volume3d" --n 500 --out "$OUT/synth-volume3d"
$BENCH synthesize --model "$OUT/hires3d" --n 500 --out "$OUT/synth-hires3d"

echo "== total $(( $(date +%s) - start )) s; outputs in $OUT"
