"""Which condition each synthetic subject of a conditional model is asked for.

``--condition "CDR=1,Age=80"`` fixes values for every sample, ``--condition-table FILE``
gives one row per sample, ``--balance CDR`` cycles through a categorical covariate's
levels. A covariate left open is drawn per sample from the training distribution
(categorical levels in their training proportions, continuous values uniform over the
training range) with a generator seeded by (seed, k), so sample k's condition is a pure
function of the request, like its latent.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from neurosql_med.data.covariates import read_table
from neurosql_med.engine.conditioning import ConditionSpec, is_missing
from neurosql_med.errors import UserError

Condition = dict[str, "str | float"]


@dataclass
class ConditionPlan:
    """Sample k's condition: the fixed values, its table row or its balanced level, the rest drawn."""

    spec: ConditionSpec
    seed: int
    fixed: Condition = field(default_factory=dict)
    rows: list[Condition] | None = None  # --condition-table: row k-1 is sample k
    balance: str | None = None  # --balance: the covariate whose levels cycle
    source: dict = field(default_factory=dict)  # what was asked, for dataset_description.json and --resume

    def condition(self, k: int) -> Condition:
        given = dict(self.fixed)
        if self.rows is not None:
            given |= self.rows[k - 1]
        if self.balance is not None:
            levels = self.spec.covariate(self.balance, "--balance").levels
            given[self.balance] = levels[(k - 1) % len(levels)]
        rng = np.random.default_rng([self.seed, k, 13])
        drawn = {c.name: _draw(c, rng) for c in self.spec.covariates}  # always drawn, so the stream never shifts
        return {c.name: given.get(c.name, drawn[c.name]) for c in self.spec.covariates}

    def extrapolated(self, k: int) -> list[str]:
        return self.spec.extrapolated(self.condition(k))


def _draw(covariate, rng: np.random.Generator) -> str | float:
    if covariate.kind == "categorical":
        p = np.asarray(covariate.counts, dtype=np.float64)
        return covariate.levels[int(rng.choice(len(p), p=p / p.sum()))]
    return round(float(rng.uniform(covariate.min, covariate.max)), 2)


def parse_condition(text: str, spec: ConditionSpec) -> Condition:
    """``"CDR=1,Age=80,sex=F"`` → values in the model's names; any covariate may be left out."""
    values: dict[str, str] = {}
    for part in (p for p in text.split(",") if p.strip()):
        name, sep, value = part.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise UserError(f"--condition: {part.strip()!r} is not NAME=VALUE (e.g. \"CDR=1,Age=80,sex=F\")")
        values[spec.covariate(name, "--condition").name] = value.strip()
    if not values:
        raise UserError("--condition: give at least one NAME=VALUE")
    return {name: spec.covariate(name, "--condition").parse(v, "--condition") for name, v in values.items()}


def read_condition_table(path: Path, spec: ConditionSpec) -> list[Condition]:
    """One condition per row, from the columns named like the model's covariates.

    Other columns are ignored, so a real cohort's participants.tsv can be mirrored as it is.
    """
    if not Path(path).is_file():
        raise UserError(f"--condition-table: file not found: {path}")
    header, rows = read_table(Path(path))
    known = {c.name.lower(): c.name for c in spec.covariates}
    columns = {h: known[h.strip().lower()] for h in header if h.strip().lower() in known}
    if not columns:
        raise UserError(f"--condition-table {path}: no column names a covariate of the model ({', '.join(spec.names)})")
    if not rows:
        raise UserError(f"--condition-table {path}: no rows")
    table = []
    for i, row in enumerate(rows, 2):
        where = f"--condition-table {path} line {i}"
        table.append({name: spec.covariate(name, where).parse(row[h], where)
                      for h, name in columns.items() if not is_missing(row.get(h))})
    return table


def make_plan(
    spec: ConditionSpec | None, seed: int, condition: str | None, table: Path | None, balance: str | None,
) -> ConditionPlan | None:
    """The plan for a model and a request; an unconditional model takes no condition options."""
    asked = {k: v for k, v in (("condition", condition), ("condition_table", table), ("balance", balance)) if v is not None}
    if spec is None:
        if asked:
            raise UserError(f"--{next(iter(asked)).replace('_', '-')}: this model was fit without --condition")
        return None
    if table is not None and balance is not None:
        raise UserError("--condition-table and --balance exclude each other (a table already says each subject's values)")
    plan = ConditionPlan(spec, seed, source={k: str(v) for k, v in asked.items()})
    if condition is not None:
        plan.fixed = parse_condition(condition, spec)
    if table is not None:
        plan.rows = read_condition_table(table, spec)
        plan.source["condition_table"] = hashlib.sha256(Path(table).read_bytes()).hexdigest()
    if balance is not None:
        covariate = spec.covariate(balance, "--balance")
        if covariate.kind != "categorical":
            raise UserError(f"--balance: {covariate.name} is continuous; balance a categorical covariate")
        if covariate.name in plan.fixed:
            raise UserError(f"--balance {covariate.name} and --condition {covariate.name}=... exclude each other")
        plan.balance = covariate.name
    return plan


def extrapolation_warnings(plan: ConditionPlan | None, n: int) -> list[str]:
    """One line per covariate asked for outside its training range, with how many samples."""
    if plan is None:
        return []
    counts: dict[str, int] = {}
    for k in range(1, n + 1):
        for name in plan.extrapolated(k):
            counts[name] = counts.get(name, 0) + 1
    return [f"{name} outside its training range {c.min:g} .. {c.max:g} for {counts[name]} sample(s): "
            f"extrapolated, marked \"Extrapolated\": true in their sidecars"
            for c in plan.spec.covariates if (name := c.name) in counts]
