"""`fit --max-minutes`: two timed epochs fix the epoch count, and the fit is the same as one run for that count."""
from __future__ import annotations

import pytest
import torch
from conftest import write_subjects

from neurosql_med.config import load_config, override
from neurosql_med.data.cohort import load_cohort
from neurosql_med.io.model import load_model
from neurosql_med.training.budget import PROBE_EPOCHS, fit_in_budget
from neurosql_med.training.train import fit


@pytest.mark.slow
def test_a_roomy_budget_runs_the_configured_epochs_bit_for_bit(tmp_path):
    cfg = override(load_config("tiny"), train__epochs=5, train__device="cpu")
    cohort = load_cohort(write_subjects(tmp_path / "scans", 5), cfg.data)
    budgeted = fit_in_budget(cohort, override(cfg, train__max_minutes=30.0), tmp_path / "budget", show_progress=False)
    fit(cohort, cfg, tmp_path / "plain", show_progress=False)
    assert budgeted.epochs == 5 and not budgeted.stopped_by_budget
    assert load_model(tmp_path / "budget").config.train.epochs == 5  # the count is recorded in the model folder
    a, b = (load_model(tmp_path / name).generator.state_dict() for name in ("budget", "plain"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_a_budget_shorter_than_the_probe_stops_on_the_clock(tmp_path):
    cfg = override(load_config("tiny"), train__epochs=50, train__device="cpu", train__max_minutes=1e-4)
    cohort = load_cohort(write_subjects(tmp_path / "scans", 5), cfg.data)
    result = fit_in_budget(cohort, cfg, tmp_path / "model", show_progress=False)
    assert result.stopped_by_budget and result.epochs <= PROBE_EPOCHS


@pytest.mark.slow
def test_fill_uses_the_whole_budget_beyond_the_configured_epochs(tmp_path):
    cfg = override(load_config("tiny"), train__epochs=3, train__device="cpu", train__max_minutes=0.2)
    cohort = load_cohort(write_subjects(tmp_path / "scans", 5), cfg.data)
    result = fit_in_budget(cohort, cfg, tmp_path / "model", show_progress=False, fill=True)
    assert result.epochs > 3 and load_model(tmp_path / "model").config.train.epochs >= result.epochs
