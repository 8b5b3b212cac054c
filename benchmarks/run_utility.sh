#!/usr/bin/env bash
# `nsql-med utility` on the sample cohort, in chunks of one seed (every k), so the grid runs in
# pieces of under 10 minutes that each take the shared CPU lock (/tmp/nsql-cpu.lock, when flock
# is installed) and release it between seeds. Several tasks run side by side inside a chunk, one
# process and one thread each (2 tasks on 2 cores). `--resume` skips what earlier chunks
# finished; the last call per task (the whole grid, nothing left to run) writes utility.md/.png.
#
#   benchmarks/run_utility.sh segment regress:age      # → utility-segment/, utility-regress-age/
#   KS="4 8" SEEDS="0 1" benchmarks/run_utility.sh segment    # a smaller grid
#   EXTRA="--synthetic-per-real 1" benchmarks/run_utility.sh segment
#   SCANS=realistic-cohort/bids HOLDOUT=realistic-cohort/heldout PREFIX=realistic- benchmarks/run_utility.sh segment
#
# Each chunk's wall time goes to OUT/chunks.log. One intra-op thread: see run_benchmark.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
KS="${KS:-4 8 16}"
SEEDS="${SEEDS:-0 1 2}"
nsql="${NSQL_MED:-nsql-med}"
SCANS="${SCANS:-sample_data}"
PREFIX="${PREFIX:-}"
EXTRA="${EXTRA:-}${HOLDOUT:+ --holdout $HOLDOUT}"
read -ra extra <<< "${EXTRA:-}"
lock=(); command -v flock >/dev/null && lock=(flock /tmp/nsql-cpu.lock)
out_of() { echo "${PREFIX}utility-${1//:/-}"; }
cell() {  # seed ks task: one seed of one task's grid
  local start; start=$(date +%s)
  "$nsql" utility "$SCANS" --task "$3" --train-subjects "$2" --seeds "$1" --out "$(out_of "$3")" \
    --resume --threads 1 "${extra[@]}" > /dev/null
  echo "seed $1 k $2: $(( $(date +%s) - start )) s" >> "$(out_of "$3")/chunks.log"
}
export -f cell out_of; export nsql EXTRA SCANS PREFIX
for seed in $SEEDS; do
  "${lock[@]}" bash -c 'read -ra extra <<< "${EXTRA:-}"; for t in "${@:3}"; do cell "$1" "$2" "$t" & done; wait' \
    _ "$seed" "${KS// /,}" "$@"
  echo "$(date +%T) seed $seed done"
done
for task in "$@"; do
  "$nsql" utility "$SCANS" --task "$task" --train-subjects "${KS// /,}" --seeds "${SEEDS// /,}" \
    --out "$(out_of "$task")" --resume --threads 1 "${extra[@]}"
done
