"""Synthetic training cases from NeuroSQL, fitted on the k training subjects only.

A model that saw a test subject would leak it into every arm it feeds, so each fit gets
a cohort cut down to training subjects, scans list and fingerprint included: the model
folder's fingerprint.json names exactly the scans it learned from.

Segmentation needs no condition: a labelled model decodes every case with its label map.
Regression and classification need a target per synthetic case, so they fit one
conditional model G(u, c) on the k subjects, conditioned on the task column, and ask it
for each case's value: classification cycles through the column's levels (balanced
classes), regression draws values uniformly over the training subjects' range. The
covariate spec and the conditions.json of that fit are built from the training scans
alone, so no test subject's value (not even its level or the column's range) reaches it.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from neurosql_med.config import Config, override, with_condition
from neurosql_med.data.cohort import Cohort
from neurosql_med.data.covariates import attach, condition_scans, read_covariates
from neurosql_med.engine.lattice import near_code_draws, reference_draws
from neurosql_med.engine.residual import texture_seeds
from neurosql_med.evaluation.utility.tasks import Targets, Task
from neurosql_med.engine.model import NeuroSQLModel
from neurosql_med.io.model import load_model
from neurosql_med.synthesis.conditions import ConditionPlan, make_plan
from neurosql_med.synthesis.sampling import SAMPLE_BATCH
from neurosql_med.training.train import fit


@dataclass(frozen=True)
class NeuroSQLFit:
    """How every NeuroSQL model in a utility run is fitted and drawn: the config, the generator steps, the device
    (cpu, cuda), and for segment cases `--near-codes` (None: fresh reference draws, as `synthesize` draws)."""

    cfg: Config
    steps: int
    device: str
    near_codes: float | None = None


@dataclass(frozen=True)
class SyntheticCases:
    images: Tensor
    targets: Tensor  # label maps (segment) or each case's value: the raw number (regress) or level index (classify)
    fit: dict  # samples, draws, epochs, steps, seconds, model sha256 (and the condition spec of a conditional fit)


def synthetic_cases(task: Task, targets: Targets | None, train: Cohort, per_real: float, nsql: NeuroSQLFit,
                    folder: Path, seed: int, on_epoch: Callable[[dict], None] | None = None) -> SyntheticCases:
    """One NeuroSQL fit on the training subjects (conditional on the task column) and ``per_real`` cases per real sample."""
    n = max(1, round(per_real * len(train)))
    started = time.monotonic()
    if task.kind == "segment" or targets is None:
        model, record = fit_neurosql(train, nsql, folder, seed, on_epoch)
        images, labels = draw(model, n, seed, nsql.near_codes)
        return SyntheticCases(images, labels, {"samples": len(train), "draws": n, **record,
                                               "seconds": time.monotonic() - started})
    cohort = conditioned_cohort(task, train)
    cfg = override(with_condition(nsql.cfg, [targets.column]), **{f"condition__{_kind(task)}": [targets.column]})
    model, record = fit_neurosql(cohort, nsql, folder, seed, on_epoch, cfg)
    plan = make_plan(model.condition, seed, None, None, targets.column if task.kind == "classify" else None)
    assert plan is not None
    images, values = draw_conditioned(model, plan, n, seed)
    covariate = plan.spec.covariates[0].name
    if task.kind == "classify":
        assert targets.levels is not None
        case_targets = torch.tensor([float(targets.levels.index(str(v[covariate]))) for v in values])
    else:
        case_targets = torch.tensor([float(v[covariate]) for v in values])
    return SyntheticCases(images, case_targets, {"samples": len(train), "draws": n, "condition": plan.spec.to_json(),
                                                 **record, "seconds": time.monotonic() - started})


def _kind(task: Task) -> str:
    return "categorical" if task.kind == "classify" else "continuous"


def conditioned_cohort(task: Task, train: Cohort) -> Cohort:
    """The training cohort with each sample's task-column condition, its spec built from the training scans alone."""
    assert task.column is not None
    found = condition_scans(train.discovery, read_covariates(train.discovery), [task.column],
                            {task.column: _kind(task)}, strict=True)
    return attach(train, found)


def fit_neurosql(cohort: Cohort, nsql: NeuroSQLFit, folder: Path, seed: int, on_epoch: Callable[[dict], None] | None,
                 cfg: Config | None = None) -> tuple[NeuroSQLModel, dict]:
    """A NeuroSQL fit of about ``nsql.steps`` generator steps (whole epochs), written to ``folder`` and loaded back."""
    base = nsql.cfg if cfg is None else cfg
    per_epoch = math.ceil(len(cohort) / base.train.batch_size)
    epochs = max(1, math.ceil(nsql.steps / per_epoch))
    cfg = override(base, train__epochs=epochs, train__seed=seed, train__device=nsql.device)
    result = fit(cohort, cfg, folder, force=True, show_progress=False, on_epoch_end=on_epoch)
    if result.interrupted:  # fit turns Ctrl-C into a partial model folder; the utility grid stops instead
        raise KeyboardInterrupt
    model = load_model(folder, nsql.device)
    return model, {"epochs": result.epochs, "steps": epochs * per_epoch, "model_sha256": result.model_sha256}


def draw(model: NeuroSQLModel, n: int, seed: int, near_codes: float | None = None) -> tuple[Tensor, Tensor]:
    """``n`` (>= 1) samples and their label maps (zeros for an unlabelled model), decoded in bounded batches: fresh
    reference draws, or with ``near_codes`` the latents `synthesize --near-codes` draws."""
    indices = np.arange(n)
    if near_codes is None:
        z, _ = reference_draws(indices, model.latent_dim, model.lattice_kind, seed)
    else:
        z, _ = near_code_draws(model.lattice[model.assignment], indices, near_codes, seed, model.lattice_kind)
    images, labels = [], []
    seeds = texture_seeds(seed, indices)
    for i in range(0, n, SAMPLE_BATCH):
        decoded, maps = model.sample(z[i:i + SAMPLE_BATCH], seeds[i:i + SAMPLE_BATCH])
        images.append(decoded)
        labels.append(torch.zeros_like(decoded, dtype=torch.long) if maps is None else maps)
    return torch.cat(images), torch.cat(labels)



def draw_conditioned(model: NeuroSQLModel, plan: ConditionPlan, n: int, seed: int) -> tuple[Tensor, list[dict]]:
    """``n`` fresh samples of a conditional model, sample k under the plan's condition k, and those conditions."""
    z, _ = reference_draws(np.arange(n), model.latent_dim, model.lattice_kind, seed)
    values = [plan.condition(k) for k in range(1, n + 1)]
    assert model.condition is not None
    c = np.stack([model.condition.encode(v) for v in values])
    seeds = texture_seeds(seed, np.arange(n))
    images = [model.sample(z[i:i + SAMPLE_BATCH], seeds[i:i + SAMPLE_BATCH], c[i:i + SAMPLE_BATCH])[0]
              for i in range(0, n, SAMPLE_BATCH)]
    return torch.cat(images), values
