"""`nsql-med fit`'s options (training/run.py runs them). No torch here: `nsql-med` builds its commands from it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from neurosql_med.options import (
    MODEL_DIR, Options, config_choices, config_option, device_option, flag_fields, flag_of, labels_option, mode_option,
    option, pattern_option, strict_option,
)


@dataclass(frozen=True, kw_only=True)
class FitOptions(Options):
    """`nsql-med fit`: the scans, the config and what the command line overrides in it, the model folder."""

    scans: Path = option(help="Folder of training scans.", argument=True)
    config: str = config_option()
    out: Path = option(MODEL_DIR, "Model folder to write.", names=("--out", "-o"))
    mode: Optional[str] = mode_option()
    epochs: Optional[int] = option(None, "Number of epochs.", config="train.epochs")
    max_minutes: Optional[float] = option(
        None, "Wall-clock budget: two timed epochs fix the epoch count that fits it (at most --epochs), so the "
              "schedule completes.", config="train.max_minutes")
    latent_dim: Optional[int] = option(None, "Latent dimension d.", config="model.latent_dim")
    lattice: Optional[str] = option(None, "The reference distribution of the latent codes.",
                                    choices=config_choices("model.lattice"), config="model.lattice")
    device: Optional[str] = device_option(None, config="train.device")
    seed: Optional[int] = option(None, "Random seed.", config="train.seed")
    resume: bool = option(False, "Continue an interrupted or finished fit in --out.")
    force: bool = option(False, "Replace a model folder nsql-med wrote in --out (never other files).")
    pattern: Optional[str] = pattern_option(config="data.pattern")
    strict: bool = strict_option()
    labels: Optional[str] = labels_option()
    condition: Optional[tuple[str, ...]] = option(
        None, "Covariates to condition on, e.g. CDR,Age,sex (from participants.tsv, the OASIS-1 CSV or --covariates).")
    covariates: Optional[Path] = option(
        None, "A TSV/CSV of covariates with a subject column; takes priority over the dataset's own tables.")

    def overrides(self) -> dict[str, object]:
        """The config values these options set, as `override` takes them (``section__key``); None: not set."""
        return {flag_of(f).config.replace(".", "__"): getattr(self, f.name)
                for f in flag_fields(type(self)) if flag_of(f).config}
