"""Exact assignment, PCA initialisation and the assignment step."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from neurosql_med.engine.assignment import AssignmentProblem, assign, cost_matrix, initial_assignment, pca_codes, solve_assignment
from neurosql_med.config import AssignmentConfig
from neurosql_med.engine.lattice import quantile_lattice
from neurosql_med.engine.losses import ReconstructionLoss
from neurosql_med.engine.decoder import Decoder


def _total(cost: np.ndarray, perm: np.ndarray) -> float:
    return float(cost[np.arange(len(perm)), perm].sum())


@pytest.mark.parametrize("n", [1, 2, 5, 7])
def test_exact_assignment_equals_brute_force(n):
    cost = np.random.default_rng(n).random((n, n))
    perm, blocked = solve_assignment(cost)
    best = min(_total(cost, np.array(p)) for p in itertools.permutations(range(n)))
    assert not blocked and sorted(perm) == list(range(n))
    assert _total(cost, perm) == pytest.approx(best)


def test_exact_assignment_equals_scipy():
    cost = np.random.default_rng(0).random((50, 50))
    rows, columns = linear_sum_assignment(cost)
    assert _total(cost, solve_assignment(cost)[0]) == pytest.approx(cost[rows, columns].sum())


def test_blocked_solve_is_a_permutation_that_never_undoes_progress():
    cost = np.random.default_rng(1).random((23, 23))
    perm, blocked = solve_assignment(cost, block_size=5, seed=3)
    assert blocked and sorted(perm) == list(range(23))
    previous = np.random.default_rng(2).permutation(23)
    improved, _ = solve_assignment(cost, block_size=5, previous=previous)
    assert sorted(improved) == list(range(23))
    assert _total(cost, improved) <= _total(cost, previous)


def test_non_finite_costs_are_rejected():
    with pytest.raises(ValueError, match="NaN"):
        solve_assignment(np.array([[0.0, np.nan], [1.0, 0.0]]))


def _structured_images(n: int, seed: int = 0) -> torch.Tensor:
    """Images driven by two latent factors: a brightness ramp and a blob position."""
    rng = np.random.default_rng(seed)
    factors = rng.standard_normal((n, 2))
    y, x = np.mgrid[0:12, 0:14] / 12
    images = [0.5 + 0.1 * a * x + 0.3 * np.exp(-((x - 0.5 - 0.1 * b) ** 2 + (y - 0.5) ** 2) / 0.02) for a, b in factors]
    return torch.tensor(np.array(images), dtype=torch.float32)[:, None]


def test_pca_codes_are_standardised_and_zero_beyond_the_rank():
    images = _structured_images(30)
    codes = pca_codes(images, 4)
    assert codes.shape == (30, 4)
    np.testing.assert_allclose(codes[:, :2].std(0, ddof=1), 1, rtol=1e-3)
    rank_one = images[:1].expand(30, -1, -1, -1) * torch.linspace(0, 1, 30)[:, None, None, None]
    rank_one_codes = pca_codes(rank_one, 3)
    assert np.abs(rank_one_codes[:, 1:]).max() == 0 and rank_one_codes[:, 0].std() > 0.9


def test_pca_initialisation_beats_a_random_permutation():
    images = _structured_images(40)
    lattice = quantile_lattice(40, 2)
    perm = initial_assignment(images, lattice)
    assert sorted(perm) == list(range(40))
    codes = pca_codes(images, 2)
    cost = ((codes[:, None] - lattice[None]) ** 2).sum(-1)
    random_costs = [_total(cost, np.random.default_rng(s).permutation(40)) for s in range(20)]
    assert _total(cost, perm) < 0.5 * min(random_costs)


@pytest.mark.parametrize("cost", ["loss", "mse", "auto"])
def test_cost_matrix_matches_the_loss_of_each_pair(cost):
    torch.manual_seed(0)
    generator = Decoder(2, 2, (12, 14), [8, 4])
    lattice = torch.tensor(quantile_lattice(6, 2), dtype=torch.float32)
    images = _structured_images(6)
    loss = ReconstructionLoss(2, window=5)
    matrix, timings = cost_matrix(generator, lattice, images, loss, cost, batch_size=4, device="cpu")
    with torch.no_grad():
        outputs = generator.eval()(lattice)
    if cost == "mse":
        expected = ((images[:, None] - outputs[None]) ** 2).flatten(2).mean(2)
    else:
        expected = torch.stack([loss(outputs, image.expand_as(outputs)) for image in images])
    np.testing.assert_allclose(matrix, expected.double().numpy(), atol=1e-5)
    assert set(timings) == {"forward", "cost"}


def test_assign_reports_changes_and_restores_training_mode():
    torch.manual_seed(0)
    generator = Decoder(2, 2, (12, 14), [8, 4]).train()
    lattice = quantile_lattice(10, 2)
    images = _structured_images(10)
    loss = ReconstructionLoss(2, window=5)
    problem = AssignmentProblem(generator, lattice, images, loss, AssignmentConfig(cost="loss"), 4, "cpu")
    first = assign(problem, previous=None, seed=0)
    assert first.changed_fraction == 1.0 and not first.blocked and generator.training
    assert set(first.timings) == {"forward", "cost", "lap"}
    again = assign(problem, previous=first.perm, seed=1)
    assert again.changed_fraction == 0.0 and again.total_cost == pytest.approx(first.total_cost)
    shuffled = np.roll(first.perm, 1)
    third = assign(problem, previous=shuffled, seed=2)
    assert third.changed_fraction == 1.0


def test_a_lattice_of_another_size_than_the_images_is_refused():
    generator = Decoder(2, 2, (12, 14), [8, 4])
    problem = AssignmentProblem(generator, quantile_lattice(9, 2), _structured_images(10), ReconstructionLoss(2, window=5),
                                AssignmentConfig(cost="mse"), 4, "cpu")
    with pytest.raises(ValueError, match="10 images but 9 lattice points"):
        assign(problem, previous=None, seed=0)
