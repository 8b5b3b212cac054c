"""What a utility run predicts, and the per-subject targets: one covariate read by data/covariates.py.

The column is found where a conditional fit finds it (BIDS participants.tsv/json and
sessions.tsv, the OASIS-1 CSV; any case), so ``classify:CDR`` means the same covariate
the conditional NeuroSQL model of its synthetic arms is fitted on.
"""
from __future__ import annotations

from dataclasses import dataclass

from neurosql_med.data.covariates import build_spec, read_covariates
from neurosql_med.data.discovery import Discovery
from neurosql_med.engine.conditioning import level_name
from neurosql_med.errors import UserError

KINDS = ("segment", "regress", "classify")
SHOWN = 5  # subjects named in an error before "…"


@dataclass(frozen=True)
class Task:
    """``segment`` (the scans' tissue label maps), or ``regress``/``classify`` one covariate column."""

    kind: str
    column: str | None = None

    @property
    def name(self) -> str:
        return self.kind if self.column is None else f"{self.kind}:{self.column}"


@dataclass(frozen=True)
class Targets:
    """The task column per subject: the number (regress) or the index into ``levels`` (classify)."""

    column: str
    values: dict[str, float]
    levels: list[str] | None = None  # classify: the column's levels, in order; None for regress


def parse_task(text: str) -> Task:
    kind, _, column = (part.strip() for part in text.partition(":"))
    if kind == "segment":
        if column:
            raise UserError(f"--task segment takes no column (it predicts the scans' tissue label maps), got {text!r}")
        return Task("segment")
    if kind in KINDS:
        if not column:
            raise UserError(f"--task {kind} needs a column (a covariate, e.g. of participants.tsv): --task {kind}:COLUMN")
        return Task(kind, column)
    raise UserError(f"unknown --task {text!r}; use segment, regress:COLUMN or classify:COLUMN")


def read_targets(task: Task, discoveries: list[Discovery]) -> Targets:
    """Every subject's target, checked: present for each subject, numeric to regress, not constant.

    A subject's value is its first scan's (a session row before a subject row, as in a conditional fit).
    """
    assert task.column is not None
    found: dict[str, str] = {}
    lacking: set[str] = set()  # a subject with any scan lacking a value: the conditional fit needs every scan's
    tables = []
    for discovery in discoveries:
        table = read_covariates(discovery)
        column = table.find(task.column, f"--task {task.name}")
        tables.append((table, column))
        for scan in sorted(discovery.scans, key=lambda s: s.id):
            value = table.value(scan, column)
            if value is None:
                lacking.add(scan.subject)
            else:
                found.setdefault(scan.subject, value)
    table, column = tables[0]
    name = table.spelled(column)
    if lacking:
        raise UserError(f"the covariate tables have no value of {name!r} for {len(lacking)} subject(s): "
                        f"{_names(sorted(lacking))}")
    levels = None
    if task.kind == "regress":
        values = {s: _number(v, name, s) for s, v in found.items()}
    else:
        rows = [{column: v} for v in found.values()]
        levels = build_spec(table, [column], rows, {column: "categorical"}).covariates[0].levels
        values = {s: float(levels.index(level_name(v))) for s, v in found.items()}
    if len(set(values.values())) < 2:
        shown = next(iter(found.values()))
        raise UserError(f"column {name!r} is constant ({shown}) over the {len(found)} subjects: nothing to predict")
    return Targets(name, values, levels)


def _number(text: str, column: str, subject: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UserError(f"column {column!r} is not numeric ({text!r} for {subject}); regress needs numbers, "
                        f"use classify:{column} for categories") from None


def _names(subjects: list[str]) -> str:
    return ", ".join(subjects[:SHOWN]) + (", …" if len(subjects) > SHOWN else "")
