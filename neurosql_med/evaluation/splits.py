"""Splits of real samples by subject, shared by the benchmark, the C2ST, the label, condition and utility evaluations.

Slices of one subject resemble each other far more than slices of two subjects, so a
slice-level split would reward a model for copying its training subjects, and let a
classifier recognise a subject instead of a side: every split here keeps all samples of
a subject on one side.
"""
from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np

from neurosql_med.data.cohort import Cohort
from neurosql_med.errors import UserError


def split_by_subject(cohort: Cohort, fraction: float, seed: int) -> tuple[Cohort, Cohort]:
    """(training, hold-out) with ``fraction`` of the subjects, drawn with ``seed``, held out."""
    subjects = sorted(set(cohort.subjects))
    held_count = max(1, round(fraction * len(subjects)))
    if len(subjects) - held_count < 2:
        raise UserError(
            f"{cohort.discovery.root}: {len(subjects)} subject(s); a hold-out split needs at least 1 held-out "
            f"and 2 training subjects (or pass a separate hold-out folder)"
        )
    drawn = np.random.default_rng(seed).choice(subjects, size=held_count, replace=False)
    held, kept = split_subjects(cohort.subjects, set(drawn.tolist()))
    return cohort.subset(kept), cohort.subset(held)


def split_subjects(subjects: Sequence[str], chosen: Collection[str]) -> tuple[np.ndarray, np.ndarray]:
    """(chosen, other) sample indices: every sample of the ``chosen`` subjects, and the rest; ``subjects[i]``: sample i's."""
    side = subject_parts(subjects, {s: int(s in chosen) for s in set(subjects)})
    return np.flatnonzero(side == 1), np.flatnonzero(side == 0)


def subject_parts(subjects: Sequence[str], part_of: Mapping[str, int]) -> np.ndarray:
    """Each sample's part (a side, a fold): its subject's, so that no subject is ever split between two parts."""
    return np.array([part_of[s] for s in subjects], dtype=np.int64)
