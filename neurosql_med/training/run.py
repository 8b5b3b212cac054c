"""`nsql-med fit` as one library call: the options, the config they resolve to, the scans, the fit.

`fit_config` is split from `fit_scans` so that a refusal (a used --out, a bad config
value) comes before anything loads, and so that the checked config can be handed to
torchrun (training/distributed.py) before any process starts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from neurosql_med.config import Config, load_config, override, with_condition
from neurosql_med.data.cohort import Cohort, load_cohort
from neurosql_med.data.covariates import load_conditioned_cohort
from neurosql_med.errors import UserError
from neurosql_med.io.model import CONFIG
from neurosql_med.io.outputs import check_model_output
from neurosql_med.training import distributed
from neurosql_med.training.budget import fit_in_budget
from neurosql_med.training.options import FitOptions
from neurosql_med.training.train import RESUMABLE, FitResult, check_fit, fit
from neurosql_med.viz.tables import skipped_lines


def fit_config(options: FitOptions) -> Config:
    """The config a fit runs with: a resumed fit continues its own saved config.

    Checks --out first, so a refused output folder is reported before scans are loaded,
    then whatever else `check_fit` can check without them. Under torchrun only rank 0, which
    writes the folder, checks it: the others could find it already locked by rank 0.

    Command-line overrides apply on top (e.g. more ``train__epochs`` to train longer).
    """
    o, overrides = options, options.overrides()
    condition = None if o.condition is None else list(o.condition)
    writer = Path(o.out) if distributed.writes_folder() else None
    if writer is not None:
        check_model_output(writer, resume=o.resume, force=o.force)
    saved = Path(o.out) / CONFIG
    if o.resume and saved.is_file():
        cfg = load_config(saved)
        _check_unchanged(cfg, overrides, condition)
    else:
        cfg = with_condition(load_config(o.config), condition)
    cfg = override(cfg, **overrides)
    check_fit(None, cfg, writer, resume=o.resume, force=o.force)  # before any scan is loaded
    return cfg


def _check_unchanged(saved: Config, overrides: dict[str, object], condition: list[str] | None) -> None:
    """--resume continues the saved config: only the epoch total, the budget and the device may change."""
    recorded = saved.to_dict()
    fixed = sorted(k.split("__")[1] for k, v in overrides.items()
                   if v is not None and k not in RESUMABLE and recorded[k.split("__")[0]][k.split("__")[1]] != v)
    if fixed:
        raise UserError(f"--resume continues the saved config; it cannot change {', '.join(fixed)}")
    saved_columns = [] if saved.condition is None else [c.lower() for c in saved.condition.columns]
    if condition is not None and [c.lower() for c in condition] != saved_columns:
        raise UserError("--resume continues the saved config; it cannot change --condition")


def fit_scans(options: FitOptions, cfg: Config | None = None, *, say: Callable[[str], None] = print,
              show_progress: bool = True) -> FitResult:
    """Load the scans as ``cfg`` (`fit_config`'s, made here when None) says and fit them into --out,
    within --max-minutes if given.

    ``say`` receives what a user should read before training starts: the conditioning
    covariates, the scans set aside, and what the cohort holds.
    """
    o, cfg = options, fit_config(options) if cfg is None else cfg
    cohort = _cohort(o, cfg, say)
    for line in skipped_lines(cohort.discovery):
        say(line)
    say(f"{len(cohort.discovery.scans)} scan(s) → {len(cohort)} {cfg.data.mode} sample(s) of shape "
        f"{cohort.geometry.sample_shape}")
    if cfg.train.max_minutes is not None and not o.resume:  # time two epochs, then the epoch count that fits
        return fit_in_budget(cohort, cfg, Path(o.out), force=o.force, show_progress=show_progress)
    return fit(cohort, cfg, Path(o.out), resume=o.resume, force=o.force, show_progress=show_progress)


def _cohort(options: FitOptions, cfg: Config, say: Callable[[str], None]) -> Cohort:
    if cfg.condition is None:
        return load_cohort(options.scans, cfg.data, strict=options.strict)
    cohort = load_conditioned_cohort(options.scans, cfg, strict=options.strict, covariates=options.covariates)
    say("conditioned on " + ", ".join(cohort.condition_spec.names))
    return cohort
