"""`fit --max-minutes`: two timed epochs fix the epoch count, and the fit is the same as one run for that count."""
from __future__ import annotations

import pytest
import torch
from support import TINY_EPOCHS, write_subjects

from neurosql_med.config import load_config, override
from neurosql_med.data.cohort import load_cohort
from neurosql_med.io.model import load_model
from neurosql_med.training import budget, train
from neurosql_med.training.budget import PROBE_EPOCHS, fit_in_budget


@pytest.mark.slow
def test_a_roomy_budget_runs_the_configured_epochs_bit_for_bit(tmp_path, tiny_models):
    """Probe epochs, then a resume to the configured total: the very model of one plain fit (the shared tiny one)."""
    cfg = override(load_config("tiny"), train__epochs=TINY_EPOCHS, train__device="cpu")
    assert TINY_EPOCHS > PROBE_EPOCHS  # so the budget's resume has epochs to run
    cohort = load_cohort(tiny_models.scans, cfg.data)
    budgeted = fit_in_budget(cohort, override(cfg, train__max_minutes=30.0), tmp_path / "budget", show_progress=False)
    assert budgeted.epochs == TINY_EPOCHS and not budgeted.stopped_by_budget
    assert load_model(tmp_path / "budget").config.train.epochs == TINY_EPOCHS  # the count is recorded in the model folder
    a, b = (load_model(folder).generator.state_dict() for folder in (tmp_path / "budget", tiny_models.get("tiny")))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_a_budget_shorter_than_the_probe_stops_on_the_clock(tmp_path):
    cfg = override(load_config("tiny"), train__epochs=50, train__device="cpu", train__max_minutes=1e-4)
    cohort = load_cohort(write_subjects(tmp_path / "scans", 5), cfg.data)
    result = fit_in_budget(cohort, cfg, tmp_path / "model", show_progress=False)
    assert result.stopped_by_budget and result.epochs <= PROBE_EPOCHS


class TickingClock:
    """A clock for the trainer and the budget: every reading is one second after the last, whatever the CPU is doing.

    The fit's epochs then take the same (fake) time on any machine, loaded or not, and the budget's
    arithmetic alone decides how many fit: no test waits for the wall clock to run out.
    """

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        self.now += 1.0
        return self.now


@pytest.mark.slow
def test_fill_uses_the_whole_budget_beyond_the_configured_epochs(tmp_path, monkeypatch):
    clock = TickingClock()
    monkeypatch.setattr(budget, "time", clock)
    monkeypatch.setattr(train, "time", clock)
    cfg = override(load_config("tiny"), train__epochs=3, train__device="cpu", train__max_minutes=0.2)
    cohort = load_cohort(write_subjects(tmp_path / "scans", 5), cfg.data)
    result = fit_in_budget(cohort, cfg, tmp_path / "model", show_progress=False, fill=True)
    assert result.epochs > 3 and load_model(tmp_path / "model").config.train.epochs >= result.epochs
    assert len(result.history) == result.epochs
