#!/usr/bin/env bash
# NeuroSQL vs VAE, GAN and DDPM at an equal wall-clock budget on the sample cohort (run it
# with the project's venv active): 3 seeds x 4 methods x 5 minutes of training, about
# 80 minutes on 2 CPU cores with the fast C2ST (79 min measured). Beyond the budgets, most of the time is the DDPM's
# sampling (50 DDIM steps; 3-8 minutes per seed for 128 samples on 2 cores) and scoring. The C2ST now uses
# the strong classifier by default: 7 tests per seed (4 methods, NeuroSQL's reconstructions, the held-out
# and blur controls), each about 12x the fast test's work (a training step costs 2.7x, times 3x
# the epochs and 1.5x the seeds). Extra arguments go to `nsql-med benchmark`, e.g. a first look:
#  benchmarks/run_benchmark.sh --budget-minutes 1 --seeds 0 --c2st fast  (~15 min)
#
# One intra-op thread (override with OMP_NUM_THREADS): on a CPU shared with other jobs,
# PyTorch's OpenMP workers spin while waiting for a busy core, and two threads on two
# contended cores made steps up to 15x slower, so a budget would buy different amounts
# of work depending on what else ran at the time.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec nsql-med benchmark sample_data --seeds 0,1,2 --budget-minutes 5 --out benchmark-out "$@"
