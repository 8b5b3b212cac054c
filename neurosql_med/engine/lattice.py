"""Quantile lattices of the reference distribution, typicality levels and fresh draws.

Every kind shares the reference N(0, I_d): ``gaussian`` and ``center-outward`` points live
in R^d, ``uniform`` points are their Gaussian copula Phi(z) in (0, 1)^d. A point's
typicality is P(|Z| <= |z|), the level of the centred ball it lies on, so a user can ask
for typical samples only.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats
from scipy.stats import qmc

from neurosql_med.errors import UserError

KINDS = ("gaussian", "uniform", "center-outward")
NEAR_STREAM = 0x4EA4  # separates draws near codes from the reference draws, textures and levels of the same (seed, k)


def quantile_lattice(n: int, d: int, kind: str = "gaussian", seed: int = 0) -> np.ndarray:
    """n evenly spread quantiles of the reference distribution, (n, d) float64.

    The first n points of a scrambled Sobol' net of 2^ceil(log2 n) points (a prefix of a
    Sobol' sequence is itself low-discrepancy), each coordinate moved to the centre of its
    1/2^m cell: the full net then has the midpoint quantiles (i + 1/2) / 2^m as marginals,
    the multivariate analogue of SQL's i / (n + 1) grid, and never the 0 or 1 that would
    map to an infinite quantile.
    """
    _check_kind(kind)
    if n < 1 or d < 1:
        raise UserError(f"a quantile lattice needs n >= 1 points and d >= 1 dimensions, got n={n}, d={d}")
    cells = _sobol_cells(n, d, seed)
    if kind == "uniform":
        return cells
    z = stats.norm.ppf(cells)
    if kind == "gaussian":
        return z
    return _center_outward(z)


def typicality(z: np.ndarray, kind: str) -> np.ndarray:
    """Level in [0, 1] of the centred ball each latent lies on: chi2_d CDF of |z|^2."""
    z = to_gaussian(np.atleast_2d(z), kind)
    return stats.chi2.cdf(np.sum(z * z, axis=1), df=z.shape[1])


def to_gaussian(points: np.ndarray, kind: str) -> np.ndarray:
    """Points of any kind in the shared N(0, I_d) reference space (undoes the uniform copula)."""
    _check_kind(kind)
    points = np.asarray(points, dtype=np.float64)
    return stats.norm.ppf(points) if kind == "uniform" else points


def reference_draws(
    indices: np.ndarray, d: int, kind: str, seed: int, max_typicality: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Fresh latents for the given sample indices and their typicality levels.

    Draw k comes from its own generator seeded with (seed, k), so sample k is the same
    whatever else is drawn with it. Each draw is a uniform direction times the chi_d
    quantile of a level ~ U(0, max_typicality): exactly N(0, I_d) when the bound is 1 and
    exactly N(0, I_d) conditioned on typicality <= bound otherwise. The same index keeps
    its direction and relative level under any bound, so lowering it shrinks samples
    toward the centre instead of replacing them.
    """
    _check_kind(kind)
    check_typicality(max_typicality)
    if d < 1:
        raise UserError(f"latent dimension must be >= 1, got {d}")
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if seed < 0 or (indices < 0).any():
        raise UserError("sample seed and sample indices must be non-negative")
    directions, levels = np.empty((len(indices), d)), np.empty(len(indices))
    for row, k in enumerate(indices):
        rng = np.random.default_rng([seed, int(k)])
        direction = rng.standard_normal(d)
        directions[row] = direction / np.linalg.norm(direction)
        levels[row] = max_typicality * rng.random()
    z = directions * stats.chi.ppf(levels, df=d)[:, None]
    return (stats.norm.cdf(z) if kind == "uniform" else z), levels


def near_code_draws(
    codes: np.ndarray, indices: np.ndarray, scale: float, seed: int, kind: str
) -> tuple[np.ndarray, np.ndarray]:
    """Latents near the given codes for the given sample indices, and the row of ``codes`` each one is near.

    Draw k comes from its own generator seeded with (seed, k, NEAR_STREAM): it picks a code
    uniformly and adds scale * N(0, I_d) in the Gaussian reference space (a uniform-kind code
    is moved there and back), so sample k is the same whatever else is drawn with it. Codes
    are the training images' own, so small scales give near-reconstructions: the copy audit
    is the safety net.
    """
    _check_kind(kind)
    codes = to_gaussian(np.atleast_2d(codes), kind)
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if seed < 0 or (indices < 0).any():
        raise UserError("sample seed and sample indices must be non-negative")
    z, rows = np.empty((len(indices), codes.shape[1])), np.empty(len(indices), dtype=np.int64)
    for row, k in enumerate(indices):
        rng = np.random.default_rng([seed, int(k), NEAR_STREAM])
        rows[row] = rng.integers(len(codes))
        z[row] = codes[rows[row]] + scale * rng.standard_normal(codes.shape[1])
    return (stats.norm.cdf(z) if kind == "uniform" else z), rows


def check_typicality(value: float, name: str = "max typicality") -> None:
    """The one bound on a typicality level; ``name`` is what the user typed it as (an option, an argument)."""
    if not (math.isfinite(value) and 0 < value <= 1):
        raise UserError(f"{name} must be in (0, 1], got {value}")


def _sobol_cells(n: int, d: int, seed: int) -> np.ndarray:
    """First n points of a scrambled Sobol' net, snapped to the centres of their cells.

    At least 2 points are drawn so no coordinate sits at 1/2 (a zero Gaussian coordinate
    has no direction for the center-outward kind).
    """
    m = max(1, math.ceil(math.log2(n)))
    points = qmc.Sobol(d, scramble=True, rng=seed).random_base2(m)[:n]
    return (np.floor(points * 2**m) + 0.5) / 2**m


def _center_outward(z: np.ndarray) -> np.ndarray:
    """Keep each point's direction; give the r-th smallest norm the chi_d quantile of (r + 1/2) / n.

    The radii then spread evenly in typicality, so point r has level exactly (r + 1/2) / n.
    """
    n, d = z.shape
    norms = np.linalg.norm(z, axis=1)
    ranks = np.empty(n, dtype=np.int64)
    ranks[np.argsort(norms, kind="stable")] = np.arange(n)
    radii = stats.chi.ppf((ranks + 0.5) / n, df=d)
    return z / norms[:, None] * radii[:, None]


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise UserError(f"unknown lattice kind {kind!r}; choose one of {', '.join(KINDS)}")
