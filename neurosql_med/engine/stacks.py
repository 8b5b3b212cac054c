"""Subject codes (``model.subject_codes``): one code per training scan, shared by all of its slices.

A slice-aware 2D model that codes every slice on its own makes a synthetic "subject" a
bag of slices from unrelated brains. With subject codes a scan's slices form a *stack*
that takes one code u; the lattice has one point per stack, the cost of stack a under
code j is the sum over its slices s of loss(G(u_j, p_s), x_s), and the exact LAP runs
over stacks x codes (engine/strata.py, its rows pooled by stack). A fresh u decoded at
every level of the training slice grid (`slice_grid`) is then one coherent synthetic stack.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Stacks:
    """Which stack (training scan) each slice belongs to."""

    of: np.ndarray  # (n,) int64: the stack of each slice, numbered 0..m-1 in order of first appearance

    @classmethod
    def of_scans(cls, scan_ids: Sequence[str]) -> Stacks:
        """Slices of the same scan form one stack."""
        _, first, inverse = np.unique(np.asarray(scan_ids), return_index=True, return_inverse=True)
        rank = np.empty(len(first), dtype=np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(len(first))
        return cls(rank[inverse.reshape(-1)])

    @property
    def count(self) -> int:
        return int(self.of.max()) + 1

    @property
    def first(self) -> np.ndarray:
        """The first slice of each stack, in stack order: where a stack's per-scan values (its covariates) are read."""
        return np.unique(self.of, return_index=True)[1]

    def members(self, stacks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The slices of ``stacks`` (ascending), and for each the position in ``stacks`` of the stack it belongs to."""
        position = np.full(self.count, -1, dtype=np.int64)
        position[np.asarray(stacks)] = np.arange(len(stacks))
        slices = np.flatnonzero(position[self.of] >= 0)
        return slices, position[self.of[slices]]

    def positions(self) -> np.ndarray:
        """Each slice's ordinal within its stack (0 for its first slice, in cohort order)."""
        seen = np.zeros(self.count, dtype=np.int64)
        ordinal = np.empty(len(self.of), dtype=np.int64)
        for i, stack in enumerate(self.of):
            ordinal[i] = seen[stack]
            seen[stack] += 1
        return ordinal


def pooled(costs: np.ndarray, groups: np.ndarray, count: int) -> np.ndarray:
    """Rows of ``costs`` summed by group: the cost of a stack is the sum of its slices' costs."""
    summed = np.zeros((count, costs.shape[1]), dtype=np.float64)
    np.add.at(summed, groups, costs)
    return summed


def group_scores(scores: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Each group's mean score, every column rescaled to unit std across groups (the scale of the lattice)."""
    count = int(groups.max()) + 1
    means = pooled(scores, groups, count) / np.bincount(groups, minlength=count)[:, None]
    centred = means - means.mean(axis=0)
    std = centred.std(axis=0)
    return centred / np.where(std > 0, std, 1.0)


def slice_grid(levels: np.ndarray, stacks: Stacks) -> tuple[float, ...]:
    """The levels a synthetic stack is decoded at: the median level of the training slices at each ordinal
    position, for as many positions as the median training stack has slices."""
    levels, ordinal = np.asarray(levels, dtype=np.float64), stacks.positions()
    length = int(np.median(np.bincount(stacks.of)))
    return tuple(round(float(np.median(levels[ordinal == k])), 4) for k in range(length))
