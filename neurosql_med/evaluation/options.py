"""The options of `nsql-med evaluate`, `benchmark` and `utility`, and the C2ST classifiers they name.

No torch here: `nsql-med` builds its commands from this module at start-up.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from neurosql_med.errors import UserError
from neurosql_med.evaluation.utility.arms import NSQL_STEPS, STEPS
from neurosql_med.options import (
    TAU, Options, Range, config_option, device_option, holdout_fraction_option, mode_option, near_codes_option, option,
)


@dataclass(frozen=True)
class Classifier:
    """How hard a C2ST looks: the CNN's first width (then 2x, 2x), its epochs, and the seeds averaged."""

    name: str
    width: int
    epochs: int
    repeats: int

    def sizes(self) -> str:
        return f"widths {self.width}/{2 * self.width}/{2 * self.width}, {self.epochs} epochs, {self.repeats} seeds"

    def describe(self) -> str:
        return (f"{self.name}: MONAI CNN, widths {self.width}/{2 * self.width}/{2 * self.width}, "
                f"input: image + Laplacian, {self.epochs} epochs")


FAST = Classifier("fast", width=8, epochs=8, repeats=2)
STRONG = Classifier("strong", width=16, epochs=24, repeats=3)
CLASSIFIERS = {c.name: c for c in (FAST, STRONG)}
C2ST_CHOICES = (*CLASSIFIERS, "off")
METHODS = ("neurosql", "vae", "gan", "ddpm")
N_SAMPLES = 128  # the DDPM's 50 DDIM steps make sampling its slowest part on a CPU
SCHEDULES = ("constant", "decay")
UTILITY_CONFIG = "utility"
UTILITY_HOLDOUT = 0.25  # share of subjects a utility grid tests on when no --holdout folder is given


def _check_tau(tau: float) -> None:
    from neurosql_med.metrics import check_tau

    check_tau(tau)


@dataclass(frozen=True, kw_only=True)
class EvaluateOptions(Options):
    """`nsql-med evaluate`: the two cohorts, how to read them, and what the report runs."""

    real: Path = option(help="Folder of real scans (the training data).")
    synth: Path = option(help="Folder of synthetic NIfTI images (any generator).")
    model: Optional[Path] = option(None, "The model that made --synth: use its preprocessing and geometry.",
                                   names=("--model", "-m"))
    holdout: Optional[Path] = option(None, "Real scans never used for training.")
    out: Optional[Path] = option(
        None, "Write report.json, report.md and its pictures (nearest, distances, spectrum, mixing; tissue with "
              "labels) here.", names=("--out", "-o"))
    config: str = config_option(what="Preprocessing config when no --model is given.")
    tau: float = option(TAU, "Copy threshold: flagged when d_syn < tau * median(d_train).")
    c2st: str = option(
        "fast", f"Classifier two-sample test, always with its controls (real vs real, real vs blurred): fast "
                f"({FAST.sizes()}; tens of seconds on a CPU), strong ({STRONG.sizes()}; minutes: the one to judge "
                f"a generator by, never to tune it against) or off.", choices=C2ST_CHOICES)
    covariates: Optional[Path] = option(
        None, "A conditional model's: the covariate table given to fit --covariates.")

    def check(self) -> None:
        _check_tau(self.tau)


@dataclass(frozen=True, kw_only=True)
class BenchmarkOptions(Options):
    """`nsql-med benchmark`: the scans, the methods and their budget, the split, the seeds, the judge."""

    scans: Path = option(help="Folder of training scans.", argument=True)
    methods: tuple[str, ...] = option(METHODS, "Comma-separated methods to train and compare.", choices=METHODS)
    budget_minutes: float = option(5.0, "Training wall-clock budget per method (and seed).",
                                   limits=Range(0, low_open=True))
    n_samples: int = option(N_SAMPLES, "Synthetic samples scored per method (diversity compares pairs).",
                            limits=Range(2))
    holdout: Optional[Path] = option(None, "Folder of held-out scans (default: split by subject).")
    holdout_fraction: float = holdout_fraction_option(0.2, "Share of subjects held out when --holdout is not given.")
    mode: Optional[str] = mode_option()
    config: str = config_option()
    seed: int = option(0, "Random seed.", limits=Range(0))
    seeds: Optional[tuple[int, ...]] = option(None, "Comma-separated seeds; reports mean ± spread (overrides --seed).",
                                              limits=Range(0))
    device: str = device_option()
    out: Path = option(Path("benchmark-out"), "Where benchmark.json/.md/.png go.", names=("--out", "-o"))
    c2st: str = option("strong", "The C2ST's classifier, for every method and control: strong (the judge; minutes per "
                                 "test on a CPU) or fast (a first look).", choices=tuple(CLASSIFIERS))

    def check(self) -> None:
        if not self.methods:
            raise UserError(f"--methods: no method given; choose from {', '.join(METHODS)}")
        if len(set(self.methods)) != len(self.methods):
            raise UserError("--methods: each method may be named only once")
        if self.seeds is not None and not self.seeds:
            raise UserError("--seeds must be a non-empty list of non-negative integers")


@dataclass(frozen=True, kw_only=True)
class UtilityOptions(Options):
    """`nsql-med utility`: the task, the grid of training-set sizes and seeds, the NeuroSQL arms, the test set."""

    scans: Path = option(help="Folder of real scans (BIDS with participants.tsv for regress/classify).",
                         argument=True)
    task: str = option(help="segment (the scans' label maps), regress:COLUMN or classify:COLUMN.")
    train_subjects: tuple[int, ...] = option((4, 8, 16), "Comma-separated training-set sizes k (subjects).",
                                             limits=Range(2))
    seeds: tuple[int, ...] = option((0, 1, 2), "Comma-separated seeds: each draws its own split.", limits=Range(0))
    synthetic_per_real: tuple[float, ...] = option(
        (0.5,), "NeuroSQL cases per real training sample; comma-separated ratios (e.g. 0.5,1,4) run each NeuroSQL arm "
                "once per ratio.", limits=Range(0, 100, low_open=True))  # 0.5: the best of 0.5/1/4 on real anatomy
    schedule: str = option("decay", "Synthetic share of each batch over training: decay (from twice the data's share "
                                    "down to 0, so training ends on real scans) or constant.",
                           choices=SCHEDULES)  # decay: +0.010 Dice over constant, 6 seeds at k = 4 (docs/decisions.md)
    near_codes: Optional[float] = near_codes_option(
        "As `synthesize --near-codes`; segment only (covariate tasks fit conditional models). On real anatomy 0.6 "
        "gained no more than fresh draws (k = 4 and 8, 6 seeds; docs/results/realistic.md).")
    holdout: Optional[Path] = option(None, "Folder of test subjects' scans (default: drawn per seed).")
    holdout_fraction: Optional[float] = holdout_fraction_option(
        None, f"Share of subjects tested when no --holdout ({UTILITY_HOLDOUT}).")
    steps: int = option(STEPS, "Optimiser steps of the downstream network, the same in every arm.",
                        limits=Range(1, 10**7))
    nsql_steps: int = option(NSQL_STEPS, "Generator steps of each NeuroSQL fit (per training set).",
                             limits=Range(1, 10**7))
    config: str = config_option(UTILITY_CONFIG, "Preprocessing and NeuroSQL config.")
    mode: Optional[str] = mode_option()
    device: str = device_option()
    out: Path = option(Path("utility-out"), "Where utility.json/.md/.png (and the NeuroSQL models) go.",
                       names=("--out", "-o"))
    resume: bool = option(False, "Continue the grid in --out, skipping finished runs.")

    def check(self) -> None:
        if not self.train_subjects or not self.seeds:
            raise UserError("--train-subjects and --seeds must each name at least one value")
        if self.holdout is not None and self.holdout_fraction is not None:
            raise UserError("--holdout and --holdout-fraction exclude each other: test on a folder or on a drawn share")
        if self.near_codes is not None and self.task.partition(":")[0].strip() != "segment":
            raise UserError("--near-codes is for --task segment: covariate tasks fit conditional models, whose codes "
                            "belong to their covariate strata")

    @property
    def test_share(self) -> float:
        """The share of subjects tested when no --holdout folder is given."""
        return UTILITY_HOLDOUT if self.holdout_fraction is None else self.holdout_fraction
