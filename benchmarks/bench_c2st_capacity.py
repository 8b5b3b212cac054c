"""Does a bigger, longer-trained C2ST classifier still tell a model's samples from real slices?

A C2ST is only as strong as its classifier. `evaluate --c2st fast` runs a small one
(widths 8/16/16, 8 epochs) so that it costs seconds, `--c2st strong` a wider one trained
longer (16/32/32, 24 epochs, 3 seeds); this re-runs the same grouped, cross-validated test
with any width, epochs and seeds, on the real-vs-real control, the model's samples with
their residual texture, and the same latents decoded without it (G(u) alone).

Usage (the model from `bench_generator.py run baseline`, trained on the 24/6 split):
    OMP_NUM_THREADS=1 python benchmarks/bench_c2st_capacity.py --width 16 --epochs 24 --repeats 3
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

import neurosql_med.evaluation.c2st as c2st
from neurosql_med.data.cohort import load_cohort
from neurosql_med.engine.lattice import reference_draws
from neurosql_med.engine.residual import texture_seeds
from neurosql_med.evaluation.splits import split_by_subject
from neurosql_med.io.model import load_model

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "benchmark-out" / "generator-ablation" / "models" / "baseline")
    parser.add_argument("--scans", type=Path, default=ROOT / "sample_data")
    parser.add_argument("--width", type=int, default=c2st.FAST.width)
    parser.add_argument("--epochs", type=int, default=c2st.FAST.epochs)
    parser.add_argument("--repeats", type=int, default=c2st.FAST.repeats)
    parser.add_argument("--n", type=int, default=500)
    args = parser.parse_args(argv)
    spec = c2st.Classifier("custom", args.width, args.epochs, args.repeats)
    model = load_model(args.model)
    train, _ = split_by_subject(load_cohort(args.scans, model.config.data), 0.2, seed=0)
    real, subjects = train.images, train.subjects
    index = np.arange(1, args.n + 1)
    z, _ = reference_draws(index, model.latent_dim, model.lattice_kind, 0)
    groups = [f"synthetic-{i}" for i in index]
    one, two = c2st.real_halves(subjects)
    tests = [
        ("real vs real", real[one], [subjects[i] for i in one], real[two], [subjects[i] for i in two]),
        ("samples, textured", real, subjects, model.sample(z, texture_seeds(0, index))[0], groups),
        ("samples, G(u) alone", real, subjects, model.decode(z), groups),
    ]
    for name, a, groups_a, b, groups_b in tests:
        started = time.monotonic()
        result = c2st.two_sample_test(a, groups_a, b, groups_b, spec=spec)
        print(f"{spec.describe()}, {spec.repeats} seeds | {name:20s} | "
              f"AUC {result['auc']:.3f} ± {result['auc_std']:.3f} | balanced accuracy {result['accuracy']:.3f} | "
              f"{time.monotonic() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
