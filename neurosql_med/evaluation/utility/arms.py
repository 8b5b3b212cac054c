"""The arms of a utility grid: what each one trains on, its name at each synthetic-to-real ratio, and its budget.

With one ``--synthetic-per-real`` ratio an arm is named as in ``ARMS``; with several, each
arm that uses NeuroSQL cases runs once per ratio and carries it in its name
(``real+classic+neurosql@4``), while the arms without them run once.
"""
from __future__ import annotations

from collections.abc import Sequence

STEPS = 1000  # downstream optimiser steps per run: classic augmentation needs them, the real arm does not lose by them
NSQL_STEPS = 800  # NeuroSQL generator steps per training set (one fit, conditional for regress/classify)

# arm: (trains on the real subjects, with classic augmentation, with NeuroSQL cases)
ARMS = {
    "real": (True, False, False),
    "real+classic": (True, True, False),
    "real+neurosql": (True, False, True),
    "real+classic+neurosql": (True, True, True),
    "neurosql-only": (False, False, True),
}
REFERENCE_ARM = "real+classic"
LABELS = {
    "real": "real", "real+classic": "real + classic", "real+neurosql": "real + NeuroSQL",
    "real+classic+neurosql": "real + classic + NeuroSQL", "neurosql-only": "NeuroSQL only",
}


def expand(ratios: Sequence[float]) -> list[str]:
    """Every arm a grid runs, in ``ARMS`` order, NeuroSQL arms once per ratio when there are several."""
    if len(ratios) == 1:
        return list(ARMS)
    return [name for arm, (_, _, synthetic) in ARMS.items()
            for name in ([f"{arm}@{r:g}" for r in ratios] if synthetic else [arm])]


def base(arm: str) -> str:
    return arm.split("@")[0]


def uses_neurosql(arm: str) -> bool:
    return ARMS[base(arm)][2]


def ratio(arm: str, ratios: Sequence[float]) -> float:
    """The synthetic-to-real ratio an arm trains at (the one ratio when the grid has one)."""
    return float(arm.split("@")[1]) if "@" in arm else float(ratios[0])


def label(arm: str) -> str:
    return LABELS[base(arm)] + (f" (×{arm.split('@')[1]})" if "@" in arm else "")
