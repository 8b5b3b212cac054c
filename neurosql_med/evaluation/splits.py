"""Hold-out splits of a real cohort, shared by the benchmark and the label evaluation."""
from __future__ import annotations

import numpy as np

from neurosql_med.data.cohort import Cohort
from neurosql_med.errors import UserError


def split_by_subject(cohort: Cohort, fraction: float, seed: int) -> tuple[Cohort, Cohort]:
    """(training, hold-out) with ``fraction`` of the subjects held out, never a subject on both sides.

    Slices of one subject resemble each other far more than slices of two subjects, so a
    slice-level split would reward a model for copying its training subjects.
    """
    subjects = sorted(set(cohort.subjects))
    held_count = max(1, round(fraction * len(subjects)))
    if len(subjects) - held_count < 2:
        raise UserError(
            f"{cohort.discovery.root}: {len(subjects)} subject(s); a hold-out split needs at least 1 held-out "
            f"and 2 training subjects (or pass a separate hold-out folder)"
        )
    held = set(np.random.default_rng(seed).choice(subjects, size=held_count, replace=False).tolist())
    is_held = np.array([s in held for s in cohort.subjects])
    return cohort.subset(np.flatnonzero(~is_held)), cohort.subset(np.flatnonzero(is_held))
