#!/usr/bin/env bash
# Re-make every figure of docs/results/realistic.md, step by step (each step resumable):
#   1. the cohort (make realistic-cohort);
#   2. the classic arm's strength and the downstream step count, chosen on the real arm of bids/;
#   3. `nsql-med utility` for segment, classify:CDR and regress:age, tested on heldout/;
#   4. a default fit on bids/, 500 samples, and `evaluate --c2st strong` against heldout/ and against bids/ (which
#      adds the reconstruction C2ST);
#   5. `nsql-med benchmark` against VAE, GAN and DDPM at an equal budget;
#   6. the generator ablation: step 4 for each generator-v2 switch (benchmarks/ablation.py), two rows at a time;
#   7. the same for volume3d (its default, the pyramid loss, the residual decoder, the per-tissue texture);
#   8. where the strong classifier looks: benchmarks/c2st_probe.py on step 4's model.
# STEPS="1 2" runs only those steps. One intra-op thread per process; two processes at a time.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS="${STEPS:-1 2 3 4 5 6 7 8}"
nsql="${NSQL_MED:-.venv/bin/nsql-med}"
py="${PYTHON:-.venv/bin/python}"
cohort="${COHORT:-realistic-cohort}"
runs="${RUNS:-realistic-runs}"
mkdir -p "$runs"
has() { [[ " $STEPS " == *" $1 "* ]]; }
if has 1; then make realistic-cohort OUT="$cohort"; fi
if has 2; then
  OMP_NUM_THREADS=1 "$py" benchmarks/tune_classic.py "$cohort/bids" --out "$runs/tune-400" --steps 400 --strengths 0,0.5,1,1.5 &
  OMP_NUM_THREADS=1 "$py" benchmarks/tune_classic.py "$cohort/bids" --out "$runs/tune-1000" --steps 1000 --strengths 0,0.5,1 &
  wait
fi
if has 3; then
  SCANS="$cohort/bids" HOLDOUT="$cohort/heldout" PREFIX="$runs/" NSQL_MED="$nsql" \
    benchmarks/run_utility.sh segment classify:CDR regress:age
fi
if has 4; then
  # The ablation's first row: writes $runs/ablation/default/{model,synth,report,report-train}.
  "$py" benchmarks/ablation.py run default --cohort "$cohort" --runs "$runs/ablation" --threads 2
fi
if has 5; then
  # The budget is wall-clock, so each method gets one core to itself (taskset where there is one). The strong C2ST
  # takes ~15 min per method and seed on one CPU thread (3 h for the table); C2ST=strong asks for it anyway.
  pin=(); command -v taskset >/dev/null && (( $(nproc) > 1 )) && pin=(taskset -c 1)
  "${pin[@]}" "$nsql" benchmark "$cohort/bids" --holdout "$cohort/heldout" --seeds 0,1,2 --threads 1 \
    --c2st "${C2ST:-fast}" --out "$runs/benchmark"
fi
# ablation BASE RUNS ROW...: the rows two at a time, one core each, then the table.
ablation() {
  local base=$1 out=$2 rows=("${@:3}")
  pin() { if command -v taskset >/dev/null && (( $(nproc) > 1 )); then taskset -c "$1" "${@:2}"; else "${@:2}"; fi; }
  for ((i = 0; i < ${#rows[@]}; i += 2)); do
    for j in 0 1; do
      [[ -n "${rows[i + j]:-}" ]] && pin "$j" "$py" benchmarks/ablation.py run "${rows[i + j]}" --base "$base" \
        --cohort "$cohort" --runs "$out" &
    done
    wait
  done
  "$py" benchmarks/ablation.py table --runs "$out" > "$out/table.md"
}
if has 6; then  # default: skipped when step 4 ran
  ablation default "$runs/ablation" default levels subjects residual pyramid latent8 refiner no-texture near combined residual-spectrum
fi
if has 7; then
  ablation volume3d "$runs/ablation-3d" default pyramid residual tissue
fi
if has 8; then
  OMP_NUM_THREADS=1 "$py" benchmarks/c2st_probe.py "$runs/ablation/default/model" "$cohort" \
    as-fitted,blur1,highpass,subject-nearest,subject-random,site-nearest,flat-amplitude,label-background,spectral
fi
