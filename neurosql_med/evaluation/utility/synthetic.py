"""Synthetic training cases from NeuroSQL, fitted on the k training subjects only.

A model that saw a test subject would leak it into every arm it feeds, so each fit gets
a cohort cut down to training subjects, scans list and fingerprint included: the model
folder's fingerprint.json names exactly the scans it learned from.

Segmentation needs no condition: a labelled model decodes every case with its label map.
Regression and classification need a target per synthetic case. Until conditional
synthesis exists, ``synthetic_cases`` conditions the simple honest way: the training
subjects are cut into strata (each level of a class column; three bins of a numeric
column, by rank), one NeuroSQL model is fitted per stratum on that stratum's subjects
only, and its samples carry the stratum's value (the level, or the bin's mean). The
strata share one generator-step budget in proportion to their samples, so conditioning
costs no more training than one model. A conditional model replaces the loop in
``synthetic_cases`` by one fit sampled at each stratum's value.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from neurosql_med.config import Config, override
from neurosql_med.data.cohort import Cohort
from neurosql_med.engine.lattice import reference_draws
from neurosql_med.evaluation.utility.design import training_cohort
from neurosql_med.evaluation.utility.tasks import Targets, Task
from neurosql_med.io.model import NeuroSQLModel, load_model
from neurosql_med.synthesis.sampling import SAMPLE_BATCH
from neurosql_med.training.train import fit

REGRESSION_STRATA = 3


@dataclass(frozen=True)
class NeuroSQLFit:
    """How every NeuroSQL model in a utility run is fitted: the config, the generator steps and the device (cpu, cuda)."""

    cfg: Config
    steps: int
    device: str


@dataclass(frozen=True)
class Stratum:
    """Training subjects whose synthetic cases share one target ``value`` (None: segmentation, cases carry labels)."""

    subjects: list[str]
    value: float | None
    draws: int


@dataclass(frozen=True)
class SyntheticCases:
    images: Tensor
    targets: Tensor  # label maps (segment) or each case's value: the raw number (regress) or level index (classify)
    fits: list[dict]  # per stratum: subjects, samples, value, draws, epochs, steps, seconds, model sha256


def plan_strata(task: Task, targets: Targets | None, train: Cohort, per_real: float) -> list[Stratum]:
    """The strata and how many cases each draws (at least one): ``per_real`` per real training sample in all.

    Regression bins draw in proportion to their real samples (the targets keep the training
    set's distribution); classification levels draw equally (balanced classes).
    """
    subjects = sorted(set(train.subjects))
    samples = {s: train.subjects.count(s) for s in subjects}
    if task.kind == "segment" or targets is None:
        return [Stratum(subjects, None, max(1, round(per_real * len(train))))]
    if task.kind == "regress":
        ranked = sorted(subjects, key=lambda s: (targets.values[s], s))
        bins = [list(b) for b in np.array_split(np.array(ranked), min(REGRESSION_STRATA, len(ranked)))]
        return [Stratum(b, float(np.mean([targets.values[s] for s in b])),
                        max(1, round(per_real * sum(samples[s] for s in b)))) for b in bins]
    levels = sorted({targets.values[s] for s in subjects})
    return [Stratum([s for s in subjects if targets.values[s] == level], level,
                    max(1, round(per_real * len(train) / len(levels)))) for level in levels]


def synthetic_cases(task: Task, train: Cohort, strata: Sequence[Stratum], nsql: NeuroSQLFit, folder: Path, seed: int,
                    on_epoch: Callable[[dict], None] | None = None) -> SyntheticCases:
    """Fit one model per stratum on its subjects only and draw its cases: the one place a conditional model plugs in."""
    images, targets, fits = [], [], []
    for i, stratum in enumerate(strata):
        cohort = training_cohort(train, stratum.subjects)
        steps = max(1, round(nsql.steps * len(cohort) / len(train)))
        started = time.monotonic()
        model, record = fit_neurosql(cohort, nsql, steps, folder / f"stratum{i}", seed, on_epoch)
        drawn, labels = draw(model, stratum.draws, seed)
        images.append(drawn)
        targets.append(labels if task.kind == "segment" else torch.full((len(drawn),), float(stratum.value or 0.0)))
        fits.append({"subjects": len(stratum.subjects), "samples": len(cohort), "value": stratum.value,
                     "draws": stratum.draws, **record, "seconds": time.monotonic() - started})
    return SyntheticCases(torch.cat(images), torch.cat(targets), fits)


def fit_neurosql(cohort: Cohort, nsql: NeuroSQLFit, steps: int, folder: Path, seed: int,
                 on_epoch: Callable[[dict], None] | None) -> tuple[NeuroSQLModel, dict]:
    """A NeuroSQL fit of about ``steps`` generator steps (whole epochs), written to ``folder`` and loaded back."""
    per_epoch = math.ceil(len(cohort) / nsql.cfg.train.batch_size)
    epochs = max(1, math.ceil(steps / per_epoch))
    cfg = override(nsql.cfg, train__epochs=epochs, train__seed=seed, train__device=nsql.device)
    result = fit(cohort, cfg, folder, force=True, show_progress=False, on_epoch_end=on_epoch)
    if result.interrupted:  # fit turns Ctrl-C into a partial model folder; the utility grid stops instead
        raise KeyboardInterrupt
    model = load_model(folder, nsql.device)
    return model, {"epochs": result.epochs, "steps": epochs * per_epoch, "model_sha256": result.model_sha256}


def draw(model: NeuroSQLModel, n: int, seed: int) -> tuple[Tensor, Tensor]:
    """``n`` (>= 1) fresh samples and their label maps (zeros for an unlabelled model), decoded in bounded batches."""
    z, _ = reference_draws(np.arange(n), model.latent_dim, model.lattice_kind, seed)
    images, labels = [], []
    for i in range(0, n, SAMPLE_BATCH):
        decoded, maps = model.decode_with_labels(z[i:i + SAMPLE_BATCH])
        images.append(decoded)
        labels.append(torch.zeros_like(decoded, dtype=torch.long) if maps is None else maps)
    return torch.cat(images), torch.cat(labels)

