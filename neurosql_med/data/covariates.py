"""Covariates of the scans (age, sex, CDR, ...) from where OASIS and BIDS keep them, joined to each scan.

Sources, highest priority first: a ``--covariates`` TSV/CSV with a subject column, BIDS
``sub-*/sub-*_sessions.tsv`` (per session), BIDS ``participants.tsv`` (with
``participants.json`` for levels), and the OASIS-1 ``oasis_cross-sectional*.csv`` (its
``ID`` is the session, e.g. OAS1_0001_MR1, and its ``M/F`` is ``sex``). The tables are
looked for in the scan folder and the folders above it, since a scan folder is often
one part of a dataset. Column names match case-insensitively.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from neurosql_med.bounded import read_json
from neurosql_med.config import Config
from neurosql_med.data.cohort import Cohort, load_cohort
from neurosql_med.data.discovery import Discovery, Scan, Skipped, discover
from neurosql_med.engine.conditioning import ConditionSpec, Covariate, is_missing, level_name
from neurosql_med.errors import UserError

ID_COLUMNS = ("participant_id", "subject", "subject_id", "id", "scan", "scan_id")
RENAMED = {"m/f": "sex"}  # OASIS-1 spelling -> BIDS spelling
CATEGORICAL_NAMES = ("sex", "cdr", "hand", "handedness", "group", "diagnosis", "dx")  # categorical even if numeric


@dataclass
class Source:
    """One table: values by subject (or session) key, with the column names as the file spells them."""

    name: str  # file name, for messages
    rows: dict[str, dict[str, str]]  # key -> {lower-case column: raw value}
    spelling: dict[str, str]  # lower-case column -> as written
    levels: dict[str, list[str]] = field(default_factory=dict)  # from participants.json "Levels"


@dataclass
class CovariateTable:
    """Every covariate found, in priority order of their sources."""

    sources: list[Source]

    @property
    def columns(self) -> list[str]:
        """Column names (lower-case), id columns left out, in first-seen order."""
        seen: dict[str, None] = {}
        for source in self.sources:
            seen |= dict.fromkeys(k for k in source.spelling if k not in ID_COLUMNS)
        return list(seen)

    def spelled(self, column: str) -> str:
        return next(s.spelling[column] for s in self.sources if column in s.spelling)

    def levels(self, column: str) -> list[str]:
        return next((s.levels[column] for s in self.sources if column in s.levels), [])

    def value(self, scan: Scan, column: str) -> str | None:
        """The scan's value: a session row before a subject row, a higher source before a lower one."""
        for source in self.sources:
            for key in _keys(scan):
                raw = source.rows.get(key, {}).get(column)
                if not is_missing(raw):
                    return raw.strip()
        return None

    def find(self, column: str, where: str = "--condition") -> str:
        """The lower-case column for a requested name; an unknown one is an error listing those there are."""
        wanted = RENAMED.get(column.strip().lower(), column.strip().lower())
        if wanted not in self.columns:
            there = ", ".join(self.spelled(c) for c in self.columns) or "none"
            raise UserError(f"{where}: no covariate {column!r} (covariates found: {there})")
        return wanted


def _keys(scan: Scan) -> list[str]:
    keys = [scan.id] + ([f"{scan.subject}_{scan.session}"] if scan.session else []) + [scan.subject]
    return [_key(k) for k in keys]


def _key(raw: str) -> str:
    return raw.strip().removeprefix("sub-").lower()


def read_table(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """A TSV (or CSV, by extension) as its header and rows; unreadable files are user errors."""
    delimiter = "," if path.suffix.lower() == ".csv" else "\t"
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle, delimiter=delimiter)
            rows = list(reader)
            header = list(reader.fieldnames or [])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{path}: cannot read covariate table ({exc})") from None
    if not header:
        raise UserError(f"{path}: empty covariate table (no header row)")
    return header, rows


def table_source(path: Path, id_column: str | None = None, session_of: str | None = None) -> Source:
    """One table keyed by its id column (the first of ID_COLUMNS present, else its first column).

    ``session_of``: the subject of a BIDS sessions.tsv, whose rows are keyed subject_session.
    """
    header, rows = read_table(path)
    lower = {h: RENAMED.get(h.strip().lower(), h.strip().lower()) for h in header}
    spelling = {lower[h]: lower[h] if h.strip().lower() in RENAMED else h.strip() for h in header}
    key_column = id_column or next((h for h in header if lower[h] in ID_COLUMNS), header[0])
    keyed: dict[str, dict[str, str]] = {}
    for row in rows:
        raw_key = (row.get(key_column) or "").strip()
        if not raw_key:
            continue
        key = _key(f"{session_of}_{raw_key}" if session_of else raw_key)
        keyed[key] = {lower[h]: v for h, v in row.items() if h in lower and v is not None}
    spelling.pop(lower[key_column], None)
    return Source(path.name, keyed, spelling)


def _with_levels(source: Source, sidecar: Path) -> Source:
    """participants.json's ``Levels`` fix a column as categorical, in the order it lists them."""
    try:
        meta = read_json(sidecar)
    except OSError:
        raise UserError(f"{sidecar}: not readable JSON") from None
    if isinstance(meta, dict):
        for name, entry in meta.items():
            if isinstance(entry, dict) and isinstance(entry.get("Levels"), dict):
                source.levels[name.strip().lower()] = [level_name(v) for v in entry["Levels"]]
    return source


def _above(root: Path, pattern: str) -> Path | None:
    """The first file matching ``pattern`` in ``root`` or a folder above it."""
    for folder in [root, *root.resolve().parents]:
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
    return None


def read_covariates(discovery: Discovery, extra: Path | None = None) -> CovariateTable:
    """Every covariate table for the discovered scans, highest priority first."""
    sources = []
    if extra is not None:
        if not Path(extra).is_file():
            raise UserError(f"--covariates: file not found: {extra}")
        sources.append(table_source(Path(extra)))
    participants = _above(discovery.root, "participants.tsv")
    if participants is not None:
        for subject in sorted({s.subject for s in discovery.scans}):
            sessions = participants.parent / subject / f"{subject}_sessions.tsv"
            if sessions.is_file():
                sources.append(table_source(sessions, session_of=subject))
        source = table_source(participants)
        sidecar = participants.with_suffix(".json")
        sources.append(_with_levels(source, sidecar) if sidecar.is_file() else source)
    oasis = _above(discovery.root, "oasis_cross-sectional*.csv")
    if oasis is not None:
        sources.append(table_source(oasis))
    return CovariateTable(sources)


def kind_of(table: CovariateTable, column: str, values: list[str], forced: dict[str, str]) -> str:
    """categorical or continuous: the config's choice, else participants.json levels, a known name, or non-numbers."""
    if column in forced:
        return forced[column]
    if table.levels(column) or column in CATEGORICAL_NAMES:
        return "categorical"
    try:
        [float(v) for v in values]
    except ValueError:
        return "categorical"
    return "continuous"


def build_spec(table: CovariateTable, columns: list[str], values: list[dict[str, str]], forced: dict[str, str]) -> ConditionSpec:
    """The spec of the training scans' ``values`` (one dict per scan, lower-case columns)."""
    covariates = []
    for column in columns:
        seen = [v[column] for v in values]
        name = table.spelled(column)
        if kind_of(table, column, seen, forced) == "categorical":
            found = {level_name(v) for v in seen}
            order = [lv for lv in table.levels(column) if lv in found]
            levels = order + sorted(found - set(order), key=_level_key)
            counts = [sum(level_name(v) == lv for v in seen) for lv in levels]
            covariates.append(Covariate(name, "categorical", levels, counts))
        else:
            numbers = np.array([_number(v, name) for v in seen], dtype=np.float64)
            std = float(numbers.std()) or 1.0
            covariates.append(Covariate(name, "continuous", [], [], float(numbers.mean()), std,
                                        float(numbers.min()), float(numbers.max())))
    return ConditionSpec(covariates)


def _level_key(level: str) -> tuple:
    try:
        return (0, float(level), level)
    except ValueError:
        return (1, 0.0, level)


def _number(value: str, name: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise UserError(f"covariate {name}: {value!r} is not a number (set condition.categorical: [{name}] "
                        "in the config to treat it as categories)") from None


@dataclass
class Conditioned:
    """The scans that have every condition value, with those values and the spec built from them."""

    discovery: Discovery
    spec: ConditionSpec
    values: dict[str, dict[str, str | float]]  # scan id -> parsed condition


def condition_scans(
    discovery: Discovery, table: CovariateTable, requested: list[str], forced: dict[str, str], strict: bool = False,
) -> Conditioned:
    """Keep the scans with a value for every requested covariate; the others are skipped with the reason."""
    columns = [table.find(c) for c in requested]
    forced = {RENAMED.get(c.lower(), c.lower()): kind for c, kind in forced.items()}
    kept, raw, skipped = [], [], list(discovery.skipped)
    for scan in discovery.scans:
        absent = [table.spelled(c) for c in columns if table.value(scan, c) is None]
        if absent:
            reason = f"no value for covariate {', '.join(absent)}"
            if strict:
                raise UserError(f"{scan.id}: {reason}")
            skipped.append(Skipped(scan.path, reason, unusable=True))
            continue
        kept.append(scan)
        raw.append({c: table.value(scan, c) for c in columns})
    if len(kept) < 2:
        raise UserError(f"only {len(kept)} scan(s) have a value for every covariate of --condition; at least 2 are needed")
    spec = build_spec(table, columns, raw, forced)
    values = {scan.id: spec.parse({table.spelled(c): v[c] for c in columns}, scan.id) for scan, v in zip(kept, raw)}
    found = replace(discovery, scans=kept, skipped=sorted(skipped, key=lambda s: s.path))
    return Conditioned(found, spec, values)


def attach(cohort: Cohort, conditioned: Conditioned) -> Cohort:
    """The cohort with each sample's encoded condition (all slices of a scan share their scan's)."""
    spec = conditioned.spec
    rows = [spec.encode(conditioned.values[scan_id]) for scan_id in cohort.scan_ids]
    return replace(cohort, conditions=torch.as_tensor(np.stack(rows)), condition_spec=spec,
                   condition_values=[conditioned.values[s] for s in cohort.scan_ids])


def summary(table: CovariateTable, discovery: Discovery) -> list[dict]:
    """Per covariate: its type, range or levels, and the scans without a value (what ``inspect`` lists)."""
    rows = []
    for column in table.columns:
        values = {s.id: table.value(s, column) for s in discovery.scans}
        present = [v for v in values.values() if v is not None]
        kind = kind_of(table, column, present, {})
        if not present:
            spread = "-"
        elif kind == "categorical":
            levels = sorted({level_name(v) for v in present}, key=_level_key)
            spread = ", ".join(f"{lv} ({sum(level_name(v) == lv for v in present)})" for lv in levels)
        else:
            numbers = [float(v) for v in present]
            spread = f"{min(numbers):g} .. {max(numbers):g}"
        rows.append({"name": table.spelled(column), "type": kind, "values": spread,
                     "missing": [k for k, v in values.items() if v is None]})
    return rows


def load_conditioned_cohort(root: str | Path, cfg: Config, strict: bool = False, covariates: Path | None = None) -> Cohort:
    """The training cohort of a conditional fit: the scans with every covariate of ``cfg.condition``, and their c."""
    found = discover(root, pattern=cfg.data.pattern, strict=strict, labels=cfg.data.labels)
    conditioned = condition_scans(found, read_covariates(found, covariates), cfg.condition.columns,
                                  cfg.condition.kinds(), strict)
    return attach(load_cohort(conditioned.discovery, cfg.data), conditioned)
