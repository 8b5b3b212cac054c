"""What a conditional or slice-aware fit puts beside each code: c = (covariates, slice level), and its strata;
and the ways a fit codes its images (``PlainCodes``, ``ConditionedCodes``, ``StackCodes``), which the trainer asks alike.

Covariates (``fit --condition``, engine/conditioning.py) come first, the relative slice
level p of a slice-aware 2D model (``model.slice_levels``, engine/levels.py) last. Images
are assigned codes within strata: the same categorical levels and the same level stratum;
with subject codes (``model.subject_codes``, engine/stacks.py) whole scans are, within
strata of their covariates alone.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from neurosql_med.config import Config
from neurosql_med.data.cohort import Cohort
from neurosql_med.engine.assignment import AssignmentProblem, AssignResult, assign, initial_assignment
from neurosql_med.engine.levels import SliceLevels
from neurosql_med.engine.stacks import Stacks, slice_grid
from neurosql_med.engine.strata import Strata, assign_stratified, cost_conditions, initial_stratified
from neurosql_med.io.model import save_conditions, save_levels
from neurosql_med.errors import UserError

LEVEL_COST_BINS = 1  # assignment costs decode each level stratum once, at its mean level (p varies little within it)


@dataclass
class TrainingConditions:
    """c of every training image, its strata, and the conditions the assignment costs are computed under."""

    values: Tensor  # (n, width) float32 on the CPU: what G reads beside each code
    strata: Strata
    cost: Tensor  # (n, width): values with continuous columns binned (engine/strata.py::cost_conditions)
    levels: SliceLevels | None = None  # a slice-aware model's level strata and training distribution
    training_levels: np.ndarray | None = None  # (n,) p of every training image
    stacks: Stacks | None = None  # model.subject_codes: each image's stack (scan); ``strata`` then groups stacks


def training_conditions(cohort: Cohort, cfg: Config) -> TrainingConditions | None:
    """The conditions of a fit on ``cohort``; None for a model that reads the code alone."""
    bins = cfg.model.slice_levels
    if cohort.conditions is None and not bins:
        return None
    parts: list[Tensor] = []
    covariate_keys: list[tuple] = [() for _ in range(len(cohort))]
    continuous: list[int] = []
    if cohort.conditions is not None:
        parts.append(cohort.conditions.float())
        covariate_keys = [cohort.condition_spec.stratum(v) for v in cohort.condition_values]
        continuous = cohort.condition_spec.continuous_columns()
    keys, levels = covariate_keys, None
    p = None if not bins else _training_levels(cohort)
    if p is not None:
        levels = SliceLevels.of(p, bins)
        keys = [key + (int(s),) for key, s in zip(keys, levels.strata(p))]
        parts.append(torch.as_tensor(levels.encode(p)))
    values = torch.cat(parts, dim=1)
    strata = Strata.of(keys)
    cost = cost_conditions(values, strata, continuous, 0 if cfg.condition is None else cfg.condition.cost_bins)
    if levels is not None:
        cost = cost_conditions(cost, strata, [values.shape[1] - 1], LEVEL_COST_BINS)
    if not cfg.model.subject_codes:
        return TrainingConditions(values, strata, cost, levels, p)
    stacks = Stacks.of_scans(cohort.scan_ids)  # a stack's strata: its scan's covariates, every level together
    levels = dataclasses.replace(levels, grid=slice_grid(p, stacks))
    return TrainingConditions(values, Strata.of([covariate_keys[i] for i in stacks.first]), cost, levels, p, stacks)


def _training_levels(cohort: Cohort) -> np.ndarray:
    """p of every training slice, for a slice-aware fit."""
    if cohort.slice_levels is None or any(v is None for v in cohort.slice_levels):
        raise UserError("config key 'model.slice_levels' needs 2d slices that know their level (data.mode 2d)")
    return np.asarray(cohort.slice_levels, dtype=np.float64)


class PlainCodes:
    """A model that reads the code alone: one lattice for all images, one assignment over all of them."""

    def inputs(self, codes: Tensor) -> Tensor:
        return codes

    def save(self, out: Path, cohort: Cohort) -> None:
        """Nothing beside the codes to record."""

    def initial(self, images: Tensor, lattice: np.ndarray, cfg: Config) -> np.ndarray:
        """OT of the images' PCA scores to the lattice."""
        return initial_assignment(images, lattice, cfg.model.lattice, cfg.assignment.block_size, cfg.train.seed)

    def assign(self, problem: AssignmentProblem, previous: np.ndarray | None, seed: int) -> AssignResult:
        return assign(problem, previous, seed)


@dataclass
class ConditionedCodes:
    """A conditional or slice-aware model: G reads c beside each code, and images take codes within their stratum."""

    conditioned: TrainingConditions
    values: Tensor  # conditioned.values on the training device

    def inputs(self, codes: Tensor) -> Tensor:
        return torch.cat([codes, self.values], dim=1)

    def save(self, out: Path, cohort: Cohort) -> None:
        """conditions.json and levels.json: what sampling needs to encode a condition and draw a level."""
        if cohort.conditions is not None:
            save_conditions(out, cohort.condition_spec.to_json(), cohort.conditions.numpy())
        if self.conditioned.levels is not None:
            save_levels(out, self.conditioned.levels.to_json(), self.conditioned.training_levels)

    def initial(self, images: Tensor, lattice: np.ndarray, cfg: Config) -> np.ndarray:
        """Each stratum's images coded by OT of their PCA scores to its own lattice block."""
        return initial_stratified(images, lattice, self.conditioned.strata, cfg.model.lattice, cfg.assignment.block_size,
                                  cfg.train.seed)

    def assign(self, problem: AssignmentProblem, previous: np.ndarray | None, seed: int) -> AssignResult:
        """An exact assignment per stratum, on costs under the (binned) conditions."""
        return assign_stratified(problem, self.conditioned.cost, self.conditioned.strata, previous, seed)


@dataclass
class StackCodes(ConditionedCodes):
    """A model with subject codes: every slice of a stack (training scan) takes its stack's code.

    The trainer's ``perm`` stays per image (image i reads lattice[perm[i]]); the assignment
    itself is over stacks x codes, an exact LAP per stratum of stacks.
    """

    def initial(self, images: Tensor, lattice: np.ndarray, cfg: Config) -> np.ndarray:
        """Each stack coded by OT of the mean PCA score of its slices to the lattice."""
        stacks = self.conditioned.stacks
        codes = initial_stratified(images, lattice, self.conditioned.strata, cfg.model.lattice,
                                   cfg.assignment.block_size, cfg.train.seed, stacks)
        return codes[stacks.of]

    def assign(self, problem: AssignmentProblem, previous: np.ndarray | None, seed: int) -> AssignResult:
        """An exact LAP over stacks x codes on each stack's summed slice costs; its codes handed to every slice."""
        stacks = self.conditioned.stacks
        result = assign_stratified(problem, self.conditioned.cost, self.conditioned.strata,
                                   None if previous is None else previous[stacks.first], seed, stacks)
        return dataclasses.replace(result, perm=result.perm[stacks.of])


def coding(conditioned: TrainingConditions | None, device: torch.device) -> PlainCodes | ConditionedCodes:
    """How a fit's images get their codes and what its generator reads beside them."""
    if conditioned is None:
        return PlainCodes()
    kind = ConditionedCodes if conditioned.stacks is None else StackCodes
    return kind(conditioned, conditioned.values.to(device))
