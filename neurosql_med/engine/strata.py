"""The assignment of a conditional generator G(u, c): an image takes a code under its own condition.

The cost is C[i, j] = loss(G(u_j, c_i), x_i). Images that share their categorical levels
form a stratum; each stratum has its own quantile lattice of its own size and its own
exact LAP, so codes never cross strata (an n x n problem becomes a few smaller ones).
Within a stratum, continuous covariates differ from image to image: the lattice is
decoded once per distinct condition vector (all slices of a scan share one), and each
image's row of costs comes from the decodes under its own condition, so the assignment
stays exact.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from neurosql_med.engine.assignment import (
    AssignmentProblem, AssignResult, cost_matrix, initial_assignment, solve_assignment,
)
from neurosql_med.engine.lattice import quantile_lattice
from neurosql_med.engine.stacks import Stacks, pooled


@dataclass
class Strata:
    """Which images (rows) and which lattice points (columns) make up each stratum, in the same order."""

    rows: list[np.ndarray]  # image indices of stratum s
    columns: list[np.ndarray]  # its block of lattice rows (as many as images)

    @classmethod
    def of(cls, keys: list[tuple]) -> "Strata":
        """Strata in sorted key order; stratum s owns the next len(rows) lattice rows."""
        order = sorted(set(keys))
        rows = [np.array([i for i, k in enumerate(keys) if k == key], dtype=np.int64) for key in order]
        starts = np.cumsum([0] + [len(r) for r in rows])
        return cls(rows, [np.arange(a, b, dtype=np.int64) for a, b in zip(starts[:-1], starts[1:])])


def stratified_lattice(strata: Strata, d: int, kind: str, seed: int) -> np.ndarray:
    """One quantile lattice per stratum, of that stratum's size, stacked in stratum order."""
    return np.concatenate([quantile_lattice(len(r), d, kind, seed=seed) for r in strata.rows])


def initial_stratified(
    images: Tensor, lattice: np.ndarray, strata: Strata, kind: str, block_size: int, seed: int,
    stacks: Stacks | None = None,
) -> np.ndarray:
    """Each stratum's images coded by OT of their PCA scores to its own lattice block.

    With ``stacks`` the strata's rows are stacks, each coded by the mean score of its slices;
    the codes returned are then per stack.
    """
    perm = np.empty(len(images) if stacks is None else stacks.count, dtype=np.int64)
    for rows, cols in zip(strata.rows, strata.columns):
        members, groups = (rows, None) if stacks is None else stacks.members(rows)
        local = initial_assignment(images[torch.as_tensor(members)], lattice[cols], kind, block_size, seed, groups)
        perm[rows] = cols[local]
    return perm


def cost_conditions(conditions: Tensor, strata: Strata, continuous: list[int], bins: int) -> Tensor:
    """The conditions the assignment's costs are computed under.

    With ``bins`` > 0, each continuous column is cut, within each stratum, into that many
    bins of its distinct values (equal counts), and a value is replaced by its bin's mean:
    the lattice is then decoded once per bin instead of once per scan. 0 keeps each
    image's own value (exact, and slower: docs/decisions.md has the figures).
    """
    if bins == 0 or not continuous:
        return conditions
    binned = conditions.clone()
    for rows in strata.rows:
        r = torch.as_tensor(rows)
        for column in continuous:
            values = conditions[r, column]
            for group in np.array_split(np.unique(values.numpy()), min(bins, len(np.unique(values.numpy())))):
                members = torch.isin(values, torch.as_tensor(group))
                binned[r[members], column] = float(np.mean(group))
    return binned


def stratum_costs(
    problem: AssignmentProblem, points: Tensor, conditions: Tensor, rows: Tensor, kind: str,
) -> tuple[np.ndarray, dict[str, float]]:
    """C[i, j] = loss(G(points_j, conditions_i), images_i) for the images at ``rows``, decoding the points once per distinct condition."""
    unique, group = torch.unique(conditions, dim=0, return_inverse=True)
    matrix = np.empty((len(rows), len(points)))
    timings = {"forward": 0.0, "cost": 0.0}
    for g, condition in enumerate(unique):
        members = torch.nonzero(group == g).flatten()
        inputs = torch.cat([points, condition.to(points.device).expand(len(points), -1)], dim=1)
        images, labels = problem.rows(rows[members])
        block, spent = cost_matrix(problem.generator, inputs, images, problem.loss, kind, problem.batch_size,
                                   problem.device, labels)
        matrix[members.numpy()] = block
        timings = {k: timings[k] + spent[k] for k in timings}
    return matrix, timings


def assign_stratified(
    problem: AssignmentProblem, conditions: Tensor, strata: Strata, previous: np.ndarray | None, seed: int,
    stacks: Stacks | None = None,
) -> AssignResult:
    """One assignment step: an exact LAP per stratum on the costs under each image's own condition.

    With ``stacks`` the strata's rows are stacks: a stack's cost under a code is the sum of
    its slices' costs, each under its own condition, and ``previous`` and the codes returned
    are per stack.
    """
    lattice = problem.lattice
    perm = np.empty(len(problem.images) if stacks is None else stacks.count, dtype=np.int64)
    timings, total, blocked = {"forward": 0.0, "cost": 0.0, "lap": 0.0}, 0.0, False
    conditions = conditions.cpu()
    for rows, cols in zip(strata.rows, strata.columns):
        members, groups = (rows, None) if stacks is None else stacks.members(rows)
        r = torch.as_tensor(members)
        kind = problem.cost_kind(math.isqrt(len(members) * len(cols)))  # images x codes, as an n x n problem would be
        cost, spent = stratum_costs(problem, lattice[torch.as_tensor(cols, device=lattice.device)], conditions[r], r, kind)
        if groups is not None:
            cost = pooled(cost, groups, len(rows))
        start = time.perf_counter()
        local_previous = None if previous is None else np.searchsorted(cols, previous[rows])
        local, was_blocked = solve_assignment(cost, problem.cfg.block_size, seed, local_previous)
        spent["lap"] = time.perf_counter() - start
        perm[rows] = cols[local]
        total += float(cost[np.arange(len(local)), local].sum())
        blocked |= was_blocked
        timings = {k: timings[k] + spent[k] for k in timings}
    changed = 1.0 if previous is None else float(np.mean(perm != previous))
    return AssignResult(perm, changed, total, blocked, timings)
