"""The learning-rate curve every trainer here follows: linear warm-up, then cosine decay to a floor.

NeuroSQL counts it in epochs; the baselines count it in shares of a wall-clock budget, so
each of their runs anneals fully whatever the budget and the machine's speed.
"""
from __future__ import annotations

import math

FLOOR = 0.05  # the last updates still move the weights, at 5 % of the base rate
LEAST = 0.01  # a continuous warm-up starts here, not at a wasted zero-rate step


def warmup_cosine(position: float, warmup: float, total: float, step: float = 0.0, floor: float = FLOOR) -> float:
    """Factor on the base rate at ``position`` of ``total``: 0 → 1 over ``warmup``, then a cosine down to ``floor``.

    ``step`` is the length of one update when the schedule counts whole updates (epochs):
    the warm-up then credits the update about to run, so the first of five warm-up epochs
    runs at 1/5 rather than 0, and a run no longer than its warm-up divides by one step,
    not zero. A continuous schedule (step 0) starts its warm-up at ``LEAST`` instead.
    """
    if position < warmup:
        return max((position + step) / warmup, LEAST)
    progress = min(1.0, (position - warmup) / max(step, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
