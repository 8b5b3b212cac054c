"""The CUDA path: run by benchmarks/gpu_check.sh on a GPU machine, skipped without one."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from support import assignment_problem, write_subjects
from neurosql_med.config import AssignmentConfig, load_config, override
from neurosql_med.data.cohort import load_cohort
from neurosql_med.engine.assignment import AssignmentProblem, assign
from neurosql_med.engine.losses import ReconstructionLoss
from neurosql_med.synthesis.options import SynthesizeOptions
from neurosql_med.synthesis.synthesize import synthesize
from neurosql_med.training.train import fit

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("amp", [True, False])
def test_a_cuda_fit_is_reproducible_and_synthesizes(tmp_path, amp):
    cfg = override(load_config("tiny"), train__device="cuda", train__epochs=4, train__amp=amp)
    cohort = load_cohort(write_subjects(tmp_path / "scans", 5), cfg.data)
    results = [fit(cohort, cfg, tmp_path / name, show_progress=False) for name in ("a", "b")]
    assert all(np.isfinite(r.history[-1]["loss"]) for r in results)
    assert (tmp_path / "a" / "model.pt").read_bytes() == (tmp_path / "b" / "model.pt").read_bytes()
    options = SynthesizeOptions(model=tmp_path / "a", out=tmp_path / "synth", n=4, device="cuda")
    assert synthesize(options, show_progress=False).written == 4


def test_the_blocked_assignment_on_cuda_agrees_with_the_cpu():
    generator, lattice, images, labels = assignment_problem(48, labels=True)
    loss = ReconstructionLoss(2, window=5)
    cfg = AssignmentConfig(cost="mse", block_size=10)
    previous = np.random.default_rng(0).permutation(48)
    cpu = assign(AssignmentProblem(generator, lattice, images, loss, cfg, 8, "cpu", labels), previous=previous, seed=1)
    gpu = assign(AssignmentProblem(generator.cuda(), lattice.cuda(), images.cuda(), loss.cuda(), cfg, 8, "cuda", labels.cuda()),
                 previous=previous, seed=1)
    assert gpu.blocked and sorted(gpu.perm) == list(range(48))
    assert gpu.total_cost == pytest.approx(cpu.total_cost, rel=1e-4)
    assert np.mean(gpu.perm == cpu.perm) >= 0.9
