"""Choose the classic arm's augmentation strength and the downstream step count once, on the real arm.

The tuning uses only the training folder (test subjects drawn from it per seed), never the
held-out folder a utility grid reports on, so the grid's test subjects play no part in the
choice. For each seed, k training subjects, each step count and each strength (0: no
augmentation), the segmentation network of `nsql-med utility` is trained and scored.

    python benchmarks/tune_classic.py realistic-cohort/bids --out tune-classic
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from neurosql_med.evaluation.options import UtilityOptions
from neurosql_med.evaluation.utility.augment import ClassicAugmentation
from neurosql_med.evaluation.utility.design import split_seed, training_cohort
from neurosql_med.evaluation.utility.networks import TrainingSet, score, train_network
from neurosql_med.evaluation.utility.run import load_study
from neurosql_med.evaluation.utility.tasks import parse_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scans", type=Path)
    parser.add_argument("--out", type=Path, default=Path("tune-classic"))
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--strengths", default="0,0.5,1,1.5")
    parser.add_argument("--steps", default="400")
    args = parser.parse_args()
    task = parse_task("segment")
    study = load_study(UtilityOptions(scans=args.scans, task="segment", device="cpu", steps=1, nsql_steps=1,
                                      synthetic_per_real=(1,), out=args.out))
    runs = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        split = split_seed(study.pool.subjects, seed, holdout_fraction=0.25)
        train, test = training_cohort(study.pool, split.training(args.k)), training_cohort(study.pool, split.test)
        data = TrainingSet(train.images, train.labels.long())
        for steps in [int(s) for s in args.steps.split(",")]:
            for strength in [float(s) for s in args.strengths.split(",")]:
                started = time.monotonic()
                augment = ClassicAugmentation(train.images.ndim - 2, seed, strength) if strength else None
                trained = train_network(task, data, study.outputs, steps=steps, seed=seed, augment=augment,
                                        device=torch.device("cpu"))
                dice = score(task, trained, test.images, test.labels, test.subjects, study.names, (0.0, 1.0))["dice"]
                runs.append({"seed": seed, "steps": steps, "strength": strength, "dice": dice,
                             "seconds": time.monotonic() - started})
                print(json.dumps(runs[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tune.json").write_text(json.dumps({"k": args.k, "runs": runs}, indent=2))
    print(table(runs))


def table(runs: list[dict]) -> str:
    """Mean Dice per (steps, strength) over seeds."""
    keys = sorted({(r["steps"], r["strength"]) for r in runs})
    lines = ["| steps | strength | mean Dice | per seed |", "|---:|---:|---:|---|"]
    for steps, strength in keys:
        dice = [r["dice"] for r in runs if (r["steps"], r["strength"]) == (steps, strength)]
        lines.append(f"| {steps} | {strength:g} | {np.mean(dice):.3f} | {', '.join(f'{d:.3f}' for d in dice)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
