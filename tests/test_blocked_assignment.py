"""The blocked assignment above assignment.block_size: only each block's costs, never n x n."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from support import assignment_problem
from neurosql_med.config import AssignmentConfig
from neurosql_med.engine.assignment import AssignmentProblem, assign, cost_matrix, initial_assignment, solve_assignment
from neurosql_med.engine.losses import ReconstructionLoss


def _total(cost: np.ndarray, perm: np.ndarray) -> float:
    return float(cost[np.arange(len(perm)), perm].sum())


@pytest.mark.parametrize("kind,labels", [("loss", False), ("mse", False), ("mse", True)])
def test_blocked_assign_solves_the_same_blocks_as_the_dense_matrix(kind, labels):
    generator, lattice, images, maps = assignment_problem(40, labels)
    loss = ReconstructionLoss(2, window=5)
    dense, _ = cost_matrix(generator, lattice, images, loss, kind, batch_size=8, device="cpu", labels=maps)
    previous = np.random.default_rng(5).permutation(40)
    cfg = AssignmentConfig(cost=kind, block_size=9)
    result = assign(AssignmentProblem(generator, lattice, images, loss, cfg, 8, "cpu", maps), previous=previous, seed=3)
    expected, _ = solve_assignment(dense, block_size=9, seed=3, previous=previous)
    assert result.blocked and sorted(result.perm) == list(range(40))
    assert set(result.timings) == {"forward", "cost", "lap"}
    np.testing.assert_array_equal(result.perm, expected)
    assert result.total_cost == pytest.approx(_total(dense, expected), rel=1e-5)


def test_blocked_rounds_never_raise_the_total_cost():
    generator, lattice, images, _ = assignment_problem(60)
    loss = ReconstructionLoss(2, window=5)
    dense, _ = cost_matrix(generator, lattice, images, loss, "mse", batch_size=16, device="cpu")
    perm = np.random.default_rng(0).permutation(60)
    totals = [_total(dense, perm)]
    problem = AssignmentProblem(generator, lattice, images, loss, AssignmentConfig(cost="mse", block_size=13), 16, "cpu")
    for seed in range(6):  # new random blocks every round, as the trainer does
        perm = assign(problem, previous=perm, seed=seed).perm
        totals.append(_total(dense, perm))
    assert all(b <= a + 1e-9 for a, b in zip(totals, totals[1:]))
    optimum = _total(dense, solve_assignment(dense)[0])
    assert optimum - 1e-9 <= totals[-1] < totals[0]


def test_blocked_initial_assignment_matches_the_dense_blocks():
    _, lattice, images, _ = assignment_problem(50)
    points = lattice.numpy().astype(np.float64)
    blocked = initial_assignment(images, points, block_size=12, seed=4)
    assert sorted(blocked) == list(range(50))
    from neurosql_med.engine.assignment import pca_codes  # the dense matrix, built here only to compare
    from scipy.spatial.distance import cdist
    dense = cdist(pca_codes(images, 2), points, "sqeuclidean")
    np.testing.assert_array_equal(blocked, solve_assignment(dense, block_size=12, seed=4)[0])


MEMORY_PROBE = r"""
import json, sys
import torch
from neurosql_med.config import AssignmentConfig
from neurosql_med.engine.assignment import AssignmentProblem, assign, initial_assignment
from neurosql_med.engine.decoder import Decoder
from neurosql_med.engine.lattice import quantile_lattice
from neurosql_med.engine.losses import ReconstructionLoss
from neurosql_med.evaluation.benchmark import MEMORY_CPU, PeakMemory
n, block = int(sys.argv[1]), int(sys.argv[2])
torch.manual_seed(0)
torch.set_num_threads(1)
generator = Decoder(2, 2, (8, 8), [4])
lattice = quantile_lattice(n, 2)
images = torch.rand(n, 1, 8, 8)
with PeakMemory(torch.device("cpu")) as memory:  # the peak resident memory of this round alone
    perm = initial_assignment(images, lattice, block_size=block)
    problem = AssignmentProblem(generator, lattice, images, ReconstructionLoss(2, window=3),
                                AssignmentConfig(cost="mse", block_size=block), 4096, "cpu")
    result = assign(problem, previous=perm, seed=1)
print(json.dumps({"grown": memory.mb * 2**20, "exact": memory.how == MEMORY_CPU, "blocked": result.blocked,
                  "permutation": sorted(result.perm.tolist()) == list(range(n))}))
"""


@pytest.mark.processes
def test_blocked_assignment_memory_is_bounded_by_the_block_not_n_squared():
    """n = 16,000: a dense float64 cost matrix alone would be 2 GB; the whole round must grow RSS < 200 MB.

    A fresh process, and on Linux its peak resident memory reset at the start of the round (as the
    benchmark measures it), so nothing reached before the round can hide what the round needs.
    """
    n, block = 16_000, 200  # 80 blocks of 200 x 200 costs (a block's LAP time grows as its cube)
    run = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(n), str(block)], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    probe = json.loads(run.stdout.splitlines()[-1])
    assert probe["permutation"] and probe["blocked"]
    limit = 200 * 2**20
    assert n * n * 8 > 9 * limit  # the n x n matrix could never fit under the limit
    assert probe["grown"] < limit, f"RSS grew by {probe['grown'] / 2**20:.0f} MB ({'peak reset' if probe['exact'] else 'ru_maxrss'})"
