"""What one assignment round of a conditional model costs: exact per-image conditions against binned ones.

    python benchmarks/bench_condition_assign.py MODEL [SCANS] [--bins 0 2 4 8] [--repeats 3]

MODEL is a conditional model folder (``fit --condition ...``), SCANS its training scans.
Each setting decodes the model's lattice under the conditions the costs use and solves
one LAP per stratum; the seconds are the best of ``--repeats``, and the total cost of the
assignment found is evaluated under the *exact* conditions, so what binning gives away
shows as a higher cost than the exact round's.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from neurosql_med.data.covariates import load_conditioned_cohort
from neurosql_med.engine.assignment import AssignmentProblem
from neurosql_med.engine.losses import ReconstructionLoss
from neurosql_med.engine.strata import Strata, assign_stratified, cost_conditions, stratum_costs
from neurosql_med.io.model import load_model


def exact_cost(model, lattice: torch.Tensor, cohort, strata: Strata, perm: np.ndarray, loss) -> float:
    """The assignment's total cost with every image under its own condition."""
    total = 0.0
    for rows, cols in zip(strata.rows, strata.columns):
        r = torch.as_tensor(rows)
        problem = AssignmentProblem(model.generator, lattice, cohort.images, loss, model.config.assignment, 64, "cpu")
        cost, _ = stratum_costs(problem, lattice[torch.as_tensor(cols)], cohort.conditions[r], r, "loss")
        total += float(cost[np.arange(len(rows)), np.searchsorted(cols, perm[rows])].sum())
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("scans", type=Path, nargs="?", default=Path("sample_data"))
    parser.add_argument("--bins", type=int, nargs="+", default=[0, 2, 4, 8])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model = load_model(args.model)
    cfg = model.config
    cohort = load_conditioned_cohort(args.scans, cfg)
    strata = Strata.of([model.condition.stratum(v) for v in cohort.condition_values])
    lattice = torch.as_tensor(model.lattice, dtype=torch.float32)
    loss = ReconstructionLoss(cohort.images.dim() - 2, cfg.loss.ssim_weight, cfg.loss.ssim_window)
    print(f"{len(cohort)} samples, strata of {[len(r) for r in strata.rows]}, torch threads {torch.get_num_threads()}")
    for bins in args.bins:
        conditions = cost_conditions(cohort.conditions, strata, model.condition.continuous_columns(), bins)
        decodes = sum(len(r) * len(torch.unique(conditions[torch.as_tensor(r)], dim=0)) for r in strata.rows)
        best, result = float("inf"), None
        for _ in range(args.repeats):
            start = time.perf_counter()
            problem = AssignmentProblem(model.generator, lattice, cohort.images, loss, cfg.assignment,
                                        cfg.train.batch_size, "cpu")
            result = assign_stratified(problem, conditions, strata, previous=model.assignment, seed=0)
            best = min(best, time.perf_counter() - start)
        total = exact_cost(model, lattice, cohort, strata, result.perm, loss)
        print(f"bins {bins or 'exact':>5}: {decodes:6d} decodes, {best:6.2f} s per round, "
              f"exact total cost of its assignment {total:.4f}")


if __name__ == "__main__":
    main()
