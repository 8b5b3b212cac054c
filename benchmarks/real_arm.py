"""Can the downstream network learn a covariate from real scans alone? The real (or real + classic) arm of
`nsql-med utility` for one task and k, with its training-set score beside the test score.

    python benchmarks/real_arm.py COHORT TASK K [seeds=0,1,2] [steps=1000] [classic=1]

COHORT holds bids/ and heldout/ (`make realistic-cohort`); TASK is regress:COLUMN or classify:COLUMN.
A training score far better than the test score means the network memorises its subjects; "trivial"
is the training subjects' mean (regress) or chance (classify).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from neurosql_med.evaluation.options import UtilityOptions
from neurosql_med.evaluation.utility.augment import ClassicAugmentation
from neurosql_med.evaluation.utility.design import training_cohort
from neurosql_med.evaluation.utility.networks import PRIMARY, score, target_scale, train_network
from neurosql_med.evaluation.utility.run import Study, _splits, _training_set, _truth, load_study


def trivial(study: Study, train: list[str]) -> float:
    """The score of answering without an image: the training mean's MAE, or chance AUC."""
    if study.task.kind == "classify":
        return 0.5
    values = study.targets.values  # type: ignore[union-attr]
    mean = float(np.mean([values[s] for s in train]))
    return float(np.mean([abs(values[s] - mean) for s in sorted(set(study.holdout.subjects))]))  # type: ignore[union-attr]


def run(study: Study, subjects: list[str], seed: int, classic: bool) -> tuple[float, float]:
    """(test, training) score of one seed's network."""
    train = training_cohort(study.pool, subjects)
    values = [study.targets.values[s] for s in subjects]  # type: ignore[union-attr]
    scale = target_scale(values) if study.task.kind == "regress" else (0.0, 1.0)
    net = train_network(study.task, _training_set(study, train, None, scale), study.outputs, steps=study.steps,
                        seed=seed, augment=ClassicAugmentation(2, seed) if classic else None,
                        device=torch.device("cpu"))
    metric = PRIMARY[study.task.kind][0]
    test = study.holdout
    on_test = score(study.task, net, test.images, _truth(study, test), test.subjects, study.names, scale)[metric]
    on_train = score(study.task, net, train.images, _truth(study, train), train.subjects, study.names, scale)[metric]
    return on_test, on_train


def main(argv: list[str]) -> None:
    cohort, task, k = Path(argv[0]), argv[1], int(argv[2])
    opts = dict(a.split("=", 1) for a in argv[3:])
    seeds = [int(s) for s in opts.get("seeds", "0,1,2").split(",")]
    torch.set_num_threads(1)
    options = UtilityOptions(scans=cohort / "bids", task=task, holdout=cohort / "heldout", device="cpu",
                             steps=int(opts.get("steps", 1000)), out=Path("real-arm"))
    study = load_study(options)
    splits = _splits(study, seeds, options.test_share, [k])
    found = []
    for seed in seeds:
        subjects = splits[seed].training(k)
        on_test, on_train = run(study, subjects, seed, opts.get("classic") == "1")
        found.append(on_test)
        print(f"seed {seed}: test {on_test:.4f}, training {on_train:.4f}, trivial {trivial(study, subjects):.4f}",
              flush=True)
    print(f"mean test {np.mean(found):.4f} over {len(seeds)} seeds")


if __name__ == "__main__":
    main(sys.argv[1:])
