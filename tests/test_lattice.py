"""Quantile lattices, typicality and fresh reference draws."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from scipy.stats import qmc

from neurosql_med.errors import UserError
from neurosql_med.engine.lattice import quantile_lattice, reference_draws, typicality


def test_gaussian_marginals_are_standard_normal():
    z = quantile_lattice(512, 4, "gaussian")
    assert z.shape == (512, 4) and np.isfinite(z).all()
    for column in z.T:
        assert stats.kstest(column, "norm").pvalue > 0.5


@pytest.mark.parametrize("n", [37, 512])
def test_uniform_lattice_is_more_even_than_iid_draws(n):
    u = quantile_lattice(n, 4, "uniform")
    assert (u > 0).all() and (u < 1).all()
    iid = [qmc.discrepancy(np.random.default_rng(s).random((n, 4))) for s in range(10)]
    assert qmc.discrepancy(u) < min(iid)


def test_uniform_kind_is_the_gaussian_copula():
    u, z = quantile_lattice(37, 3, "uniform"), quantile_lattice(37, 3, "gaussian")
    np.testing.assert_allclose(stats.norm.ppf(u), z)
    np.testing.assert_allclose(typicality(u, "uniform"), typicality(z, "gaussian"))


def test_center_outward_levels_are_evenly_spaced():
    n, d = 37, 3
    points = quantile_lattice(n, d, "center-outward")
    levels = np.sort(typicality(points, "center-outward"))
    np.testing.assert_allclose(levels, (np.arange(n) + 0.5) / n, atol=1e-9)
    directions = points / np.linalg.norm(points, axis=1, keepdims=True)
    assert np.linalg.norm(directions.mean(0)) < 0.2  # directions spread over the sphere


@pytest.mark.parametrize("kind", ["gaussian", "uniform", "center-outward"])
def test_lattice_is_deterministic_and_any_size(kind):
    a = quantile_lattice(37, 5, kind, seed=3)
    np.testing.assert_array_equal(a, quantile_lattice(37, 5, kind, seed=3))
    assert a.shape == (37, 5) and len(np.unique(a, axis=0)) == 37
    assert not np.array_equal(a, quantile_lattice(37, 5, kind, seed=4))
    assert quantile_lattice(1, 2, kind).shape == (1, 2)


def test_lattice_rejects_bad_arguments():
    for args in [(0, 2), (5, 0)]:
        with pytest.raises(UserError):
            quantile_lattice(*args)
    with pytest.raises(UserError):
        quantile_lattice(5, 2, "sobol")


@pytest.mark.parametrize("kind", ["gaussian", "uniform", "center-outward"])
def test_draw_k_does_not_depend_on_the_batch(kind):
    alone, level = reference_draws(np.array([7]), 6, kind, seed=2)
    batch, levels = reference_draws(np.array([3, 7, 11]), 6, kind, seed=2)
    np.testing.assert_array_equal(alone[0], batch[1])
    assert level[0] == levels[1]
    np.testing.assert_allclose(typicality(batch, kind), levels)


def test_draws_respect_max_typicality_and_shrink_with_it():
    indices = np.arange(400)
    radius = {}
    for bound in (0.1, 0.5, 1.0):
        z, levels = reference_draws(indices, 8, "gaussian", seed=0, max_typicality=bound)
        assert (levels <= bound).all() and (typicality(z, "gaussian") <= bound + 1e-9).all()
        radius[bound] = np.linalg.norm(z, axis=1).mean()
    assert radius[0.1] < radius[0.5] < radius[1.0]


def test_unbounded_draws_are_standard_normal():
    z, _ = reference_draws(np.arange(2000), 3, "gaussian", seed=1)
    assert stats.kstest(z[:, 0], "norm").pvalue > 0.01
    assert stats.kstest(np.sum(z * z, axis=1), "chi2", args=(3,)).pvalue > 0.01


def test_draws_reject_bad_bound():
    for bound in (0.0, 1.5):
        with pytest.raises(UserError):
            reference_draws(np.arange(3), 2, "gaussian", seed=0, max_typicality=bound)
