"""How long the label-agreement segmenter trains, and what Dice it reaches on held-out real slices.

    python benchmarks/bench_labels.py [SCANS] [--epochs N] [--config default]

Until the data layer reads label maps from disk, the scans' labels are made here by
thresholding the preprocessed images (background, CSF, GM, WM by intensity), which the
sample cohort's procedural tissues follow. The real subjects are split as `evaluate`
splits them without --holdout (20 % of subjects, seed 0); the segmenter is trained on the
rest with `evaluate`'s settings and timed, then scored on the held-out slices (the ceiling
a synthetic cohort's label agreement is read against).
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

from neurosql_med.config import load_config
from neurosql_med.data.cohort import load_cohort
from neurosql_med.evaluation.labels import EPOCHS, HOLDOUT_FRACTION, SEED, dice_per_class, segment, train_segmenter
from neurosql_med.evaluation.splits import split_by_subject

THRESHOLDS = (0.1, 0.35, 0.75)  # image intensity in [0, 1]: background | CSF | GM | WM


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scans", nargs="?", default="sample_data")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--config", default="default")
    args = parser.parse_args()
    cohort = load_cohort(args.scans, load_config(args.config).data)
    cohort = dataclasses.replace(cohort, labels=torch.bucketize(cohort.images, torch.tensor(THRESHOLDS)).long())
    train, held = split_by_subject(cohort, HOLDOUT_FRACTION, SEED)
    start = time.perf_counter()
    net = train_segmenter(train.images, train.labels, len(THRESHOLDS) + 1, epochs=args.epochs)
    seconds = time.perf_counter() - start
    dice = dice_per_class(segment(net, held.images), held.labels, len(THRESHOLDS) + 1)
    print(
        f"{len(train)} training samples {tuple(train.images.shape[2:])}, {args.epochs} epochs, "
        f"{torch.get_num_threads()} threads: {seconds:.1f} s; held-out Dice CSF/GM/WM "
        + " / ".join(f"{d:.3f}" for d in dice) + f" (mean {np.mean(dice):.3f})"
    )


if __name__ == "__main__":
    main()
