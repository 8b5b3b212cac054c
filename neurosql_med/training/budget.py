"""A fit that fits its wall-clock budget: time the first epochs, then fix the epoch count the budget allows.

The learning rate follows a cosine over the configured epochs, so a fit cut by the clock
stops before it has annealed (a 3D fit of 24 scans stopped at 2 minutes after 17 of 80
epochs had lowered its loss only 1.2x). Here the first ``PROBE_EPOCHS`` epochs (warm-up,
whose learning rates do not depend on the epoch total) are run and timed, and the fit is
resumed, bit for bit as if uninterrupted, with the total that fills what is left of the
budget; the model folder's config records that total, so the same count reproduces it.
"""
from __future__ import annotations

import time
from pathlib import Path

from neurosql_med.config import Config, override
from neurosql_med.data.cohort import Cohort
from neurosql_med.training import distributed
from neurosql_med.training.train import FitResult, fit

PROBE_EPOCHS = 2


def fit_in_budget(
    cohort: Cohort, cfg: Config, out: Path, *, force: bool = False, show_progress: bool = True, fill: bool = False,
) -> FitResult:
    """Train within ``cfg.train.max_minutes``, with a schedule that ends when the budget does.

    The epoch total is capped at ``cfg.train.epochs`` unless ``fill`` (the benchmark:
    every method uses its whole budget). The trainer checks its deadline only between
    epochs, so the resumed fit's limit is set half an epoch short: it then ends within
    half an epoch of the budget either way. Under torchrun the ranks would time their
    epochs apart and could disagree on the total, so there the clock cuts the configured schedule.
    """
    budget = cfg.train.max_minutes * 60 if cfg.train.max_minutes is not None else None
    if budget is None or distributed.world_size() > 1 or (cfg.train.epochs <= PROBE_EPOCHS and not fill):
        return fit(cohort, cfg, out, force=force, show_progress=show_progress)
    started = time.monotonic()
    result = fit(cohort, override(cfg, train__epochs=PROBE_EPOCHS), out, force=force, show_progress=show_progress)
    if result.interrupted or result.stopped_by_budget:
        return result
    per_epoch = sum(row["seconds"] for row in result.history) / len(result.history)
    left = budget - (time.monotonic() - started)
    if left <= per_epoch / 2:
        return result
    epochs = PROBE_EPOCHS + round(left / per_epoch)
    epochs = epochs if fill else min(epochs, cfg.train.epochs)
    resumed = override(cfg, train__epochs=epochs, train__max_minutes=(left - per_epoch / 2) / 60)
    return fit(cohort, resumed, out, resume=True, show_progress=show_progress)
