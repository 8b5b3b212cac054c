"""What real new brains score: the reference line for the benchmark's sample metrics.

    python benchmarks/bench_reference.py [SCANS] [--seeds 0,1,2]

For each seed, the subjects `nsql-med benchmark` would hold out are treated as if they
were a generator's samples and scored against that seed's training subjects, exactly as
the benchmark scores synthetic samples: nearest-real MAE / SSIM / PSNR, diversity ratio
and the memorization audit. A generator whose samples beat these figures is not more
realistic than real anatomy: it is collapsing onto the most typical training images
(higher SSIM) or copying them (more flags).
"""
from __future__ import annotations

import argparse

from neurosql_med.evaluation.benchmark import split_by_subject
from neurosql_med.config import load_config
from neurosql_med.data.cohort import load_cohort
from neurosql_med.metrics import TAU, audit, diversity, fidelity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scans", nargs="?", default="sample_data")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--holdout-fraction", type=float, default=0.2)
    args = parser.parse_args()
    cohort = load_cohort(args.scans, load_config("default").data)
    for seed in (int(s) for s in args.seeds.split(",")):
        train, held = split_by_subject(cohort, args.holdout_fraction, seed)
        close = fidelity(held.images, train.images)
        flags = audit(train.images, held.images, TAU)
        ratio = diversity(held.images, train.images)["ratio"]
        print(
            f"seed {seed}: {len(held)} held-out real slices vs {len(train)} training slices: "
            f"MAE {close['mae']:.4f}  SSIM {close['ssim']:.3f}  PSNR {close['psnr']:.1f} dB  "
            f"diversity ratio {ratio:.2f}  flagged as copies {flags['fraction_flagged']:.1%} "
            f"(training slices below tau: {flags['train_fraction_below_tau']:.1%})"
        )


if __name__ == "__main__":
    main()
