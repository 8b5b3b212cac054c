"""Who trains and who tests: subjects, never slices, and the test subjects never train anything.

Per seed one set of test subjects is held out and the other subjects are put in the order
in which they join the training set, so the k = 4 subjects are among the k = 8 ones: the
sizes are compared on nested sets, scored on the same test subjects. For classification
the test set holds every level and the order deals the levels out in turn, so even a
small k sees each level.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from neurosql_med.data.cohort import Cohort
from neurosql_med.errors import UserError
from neurosql_med.evaluation.splits import split_subjects
from neurosql_med.evaluation.utility.tasks import Targets


@dataclass(frozen=True)
class SeedSplit:
    """One seed's test subjects and the order in which the others join the training set."""

    seed: int
    test: list[str]
    order: list[str]

    def training(self, k: int) -> list[str]:
        return self.order[:k]


def split_seed(subjects: Sequence[str], seed: int, *, holdout_fraction: float, fixed_test: Sequence[str] | None = None,
               targets: Targets | None = None) -> SeedSplit:
    """The split for ``seed``; ``fixed_test`` (a --holdout folder's subjects) replaces the drawn test set.

    ``targets`` with levels (classification) stratifies both the test set and the order.
    """
    rng = np.random.default_rng(seed)
    pool = sorted(set(subjects))
    groups = _groups(pool, targets)
    if fixed_test is not None:
        test: list[str] = sorted(set(fixed_test))
    else:
        test = sorted(s for group in groups for s in rng.choice(group, size=_held(len(group), holdout_fraction, targets),
                                                                 replace=False).tolist())
    shuffled = [rng.permutation([s for s in group if s not in test]).tolist() for group in groups]
    order = [group[turn] for turn in range(max(map(len, shuffled))) for group in shuffled if turn < len(group)]
    return SeedSplit(seed, test, order)


def _groups(pool: list[str], targets: Targets | None) -> list[list[str]]:
    """Subjects by level for classification; one group otherwise."""
    if targets is None or targets.levels is None:
        return [pool]
    return [[s for s in pool if targets.values[s] == level] for level in range(len(targets.levels))]


def _held(count: int, fraction: float, targets: Targets | None) -> int:
    """How many of a group's ``count`` subjects are tested: at least one of each level in classification."""
    held = round(fraction * count)
    return max(1, held) if targets is not None and targets.levels is not None else held


def check_design(subjects: Sequence[str], ks: Sequence[int], *, holdout_fraction: float,
                 fixed_test: Sequence[str] | None, targets: Targets | None) -> None:
    """Refuse, before any training, a grid the subjects cannot fill."""
    pool = sorted(set(subjects))
    groups = _groups(pool, targets)
    if fixed_test is None:
        tested = [_held(len(g), holdout_fraction, targets) for g in groups]
        if sum(tested) < 1:
            raise UserError(f"--holdout-fraction {holdout_fraction} of {len(pool)} subjects holds out none; raise it")
        if targets is not None and targets.levels is not None:
            _check_levels(groups, tested, targets)
    else:
        tested = [0]
        if shared := set(pool) & set(fixed_test):
            raise UserError(f"subject(s) {', '.join(sorted(shared))} are in both the scans and the --holdout folder")
    left, k = len(pool) - sum(tested), max(ks)
    if k > left and fixed_test is not None:
        raise UserError(f"{len(pool)} subjects to train on (the test set is the --holdout folder): fewer than "
                        f"k = {k}; lower --train-subjects")
    if k > left:
        raise UserError(f"{len(pool)} subjects: k = {k} training subjects and a test set of {sum(tested)} need "
                        f"{k + sum(tested)}; lower --train-subjects or --holdout-fraction")
    if targets is not None and targets.levels is not None and min(ks) < len(targets.levels):
        raise UserError(f"k = {min(ks)} training subjects cannot hold all {len(targets.levels)} levels of "
                        f"{targets.column!r} ({', '.join(targets.levels)}); use k >= {len(targets.levels)}")


def _check_levels(groups: list[list[str]], tested: list[int], targets: Targets) -> None:
    assert targets.levels is not None
    for level, group, held in zip(targets.levels, groups, tested):
        if len(group) - held < 1:
            raise UserError(f"level {level!r} of {targets.column!r} has {len(group)} subject(s); classification "
                            f"needs at least 2 per level (one to test, one to train)")


def training_cohort(pool: Cohort, subjects: Sequence[str]) -> Cohort:
    """The samples of ``subjects``, with a discovery that lists only their scans.

    `Cohort.subset` keeps the whole folder's scan list; a NeuroSQL fit records that list's
    hashes as what it learned from, so here it shrinks to the subjects' own scans.
    """
    keep = set(subjects)
    part = pool.subset(split_subjects(pool.subjects, keep)[0])
    scans = [scan for scan in pool.discovery.scans if scan.subject in keep]
    return dataclasses.replace(part, discovery=dataclasses.replace(pool.discovery, scans=scans, skipped=[]))
