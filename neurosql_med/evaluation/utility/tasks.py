"""What a utility run predicts, and the per-subject targets read from the cohort's participants.tsv.

The reader here is deliberately minimal (one column, every subject must have a value): a
full covariate reader for conditional synthesis will replace it.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from neurosql_med.errors import UserError

KINDS = ("segment", "regress", "classify")
PARTICIPANTS = "participants.tsv"  # BIDS: one row per subject, keyed by participant_id
MISSING = frozenset({"", "n/a", "na", "nan"})
SHOWN = 5  # subjects named in an error before "…"


@dataclass(frozen=True)
class Task:
    """``segment`` (the scans' tissue label maps), or ``regress``/``classify`` one participants.tsv column."""

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
            raise UserError(f"--task {kind} needs a column of participants.tsv: --task {kind}:COLUMN")
        return Task(kind, column)
    raise UserError(f"unknown --task {text!r}; use segment, regress:COLUMN or classify:COLUMN")


def read_column(root: Path, column: str) -> tuple[str, dict[str, str]]:
    """(the column's name as spelled in the file, participant_id -> raw value) from ``root``/participants.tsv."""
    path = Path(root) / PARTICIPANTS
    if not path.is_file():
        raise UserError(f"{root}: no {PARTICIPANTS}; a regress/classify task reads its column from the cohort's "
                        f"BIDS {PARTICIPANTS} (participant_id and one column per covariate)")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        rows, header = list(reader), reader.fieldnames or []
    if "participant_id" not in header:
        raise UserError(f"{path}: needs a participant_id column")
    matches = [h for h in header if h == column] or [h for h in header if h.lower() == column.lower()]
    if len(matches) != 1:
        raise UserError(f"{path} has no column {column!r} (columns: {', '.join(h for h in header if h != 'participant_id')})")
    return matches[0], {(row["participant_id"] or "").strip(): (row[matches[0]] or "").strip() for row in rows}


def read_targets(task: Task, roots: list[Path], subjects: list[str]) -> Targets:
    """Every subject's target, checked: present for each subject, numeric to regress, not constant."""
    assert task.column is not None
    raw: dict[str, str] = {}
    name = task.column
    for root in roots:
        name, table = read_column(root, task.column)
        raw |= {s: v for s in subjects if (v := _lookup(table, s)) is not None}
    lacking = sorted(s for s in subjects if raw.get(s, "").lower() in MISSING)
    if lacking:
        raise UserError(f"{PARTICIPANTS} has no value of {name!r} for {len(lacking)} subject(s): {_names(lacking)}")
    if task.kind == "regress":
        values = {s: _number(raw[s], name, s) for s in subjects}
        levels = None
    else:
        levels = sorted(set(raw.values()), key=_level_order)
        values = {s: float(levels.index(raw[s])) for s in subjects}
    if len(set(values.values())) < 2:
        raise UserError(f"column {name!r} is constant ({raw[subjects[0]]}) over the {len(subjects)} subjects: nothing to predict")
    return Targets(name, values, levels)


def _lookup(table: dict[str, str], subject: str) -> str | None:
    """A subject's value whether or not the file (or the scans) spell its id with BIDS's ``sub-`` prefix."""
    for key in (subject, f"sub-{subject}", subject.removeprefix("sub-")):
        if key in table:
            return table[key]
    return None


def _number(text: str, column: str, subject: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UserError(f"column {column!r} is not numeric ({text!r} for {subject}); regress needs numbers, "
                        f"use classify:{column} for categories") from None


def _level_order(level: str) -> tuple[int, float, str]:
    """Numbers in numeric order (0, 0.5, 1, 2), then text in alphabetical order."""
    try:
        return (0, float(level), "")
    except ValueError:
        return (1, 0.0, level)


def _names(subjects: list[str]) -> str:
    return ", ".join(subjects[:SHOWN]) + (", …" if len(subjects) > SHOWN else "")
