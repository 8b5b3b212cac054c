"""Splits by subject: a subject's samples always land on one side."""
from __future__ import annotations

import numpy as np

from neurosql_med.evaluation.splits import split_subjects, subject_parts


def test_a_split_takes_every_sample_of_the_chosen_subjects_and_nothing_else():
    subjects = ["b", "a", "c", "a", "b", "d", "a"]
    chosen, other = split_subjects(subjects, {"a", "d"})
    assert chosen.tolist() == [1, 3, 5, 6] and other.tolist() == [0, 2, 4]
    assert split_subjects(subjects, set())[0].size == 0


def test_parts_follow_the_subject():
    subjects = ["s1", "s2", "s1", "s3", "s2"]
    parts = subject_parts(subjects, {"s1": 2, "s2": 0, "s3": 1})
    assert parts.dtype == np.int64 and parts.tolist() == [2, 0, 2, 1, 0]
