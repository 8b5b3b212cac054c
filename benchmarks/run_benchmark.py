"""NeuroSQL vs VAE, GAN and DDPM at an equal wall-clock budget on the sample cohort.

    python benchmarks/run_benchmark.py                                  # the full run: 3 seeds x 5 minutes x 4 methods (~75 min on 2 CPU cores)
    python benchmarks/run_benchmark.py --budget-minutes 1 --seeds 0     # a first look (~8 min)

Needs the sample cohort (sample_data/generate.py). Writes benchmark.json, benchmark.md and
benchmark.png to --out and prints the table. On a CPU shared with other jobs, pass
--threads 1: PyTorch's OpenMP workers spin while they wait for a busy core, and with two
threads on two contended cores a step can take ten times longer, which would make the
budgets mean different amounts of work for different methods.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from rich.console import Console

from neurosql_med.benchmark import METHODS, N_SAMPLES, benchmark_table, run_benchmark

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scans", nargs="?", type=Path, default=ROOT / "sample_data")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), help=f"any of {', '.join(METHODS)}")
    parser.add_argument("--budget-minutes", type=float, default=5.0, help="training budget per method and seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n-samples", type=int, default=N_SAMPLES, help="synthetic samples scored per method and seed")
    parser.add_argument("--holdout", type=Path, help="folder of other subjects' scans to hold out (default: split by subject)")
    parser.add_argument("--holdout-fraction", type=float, default=0.2)
    parser.add_argument("--mode", choices=["2d", "3d"])
    parser.add_argument("--config", default="default")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=ROOT / "benchmark-out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    console = Console(width=240)
    result = run_benchmark(
        args.scans, methods=args.methods, budget_minutes=args.budget_minutes, n_samples=args.n_samples,
        holdout=args.holdout, holdout_fraction=args.holdout_fraction, mode=args.mode, config=args.config,
        seeds=args.seeds, device=args.device, out=args.out, log=console.log,
    )
    console.print(benchmark_table(result))
    console.print(f"written to {args.out}: benchmark.json, benchmark.md, benchmark.png")


if __name__ == "__main__":
    main()
