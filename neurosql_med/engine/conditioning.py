"""The condition c of a conditional generator G(u, c): which covariates, and how each becomes numbers.

A categorical covariate is one-hot over its training levels, a continuous one is its
value standardised by the training mean and standard deviation; the vector sits beside
the latent at the decoder's input. The spec also records the training distribution
(counts per level, range), which sampling checks requests against.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from neurosql_med.errors import UserError

KINDS = ("categorical", "continuous")
MISSING = ("", "n/a", "na", "nan", "none", "null", "?")


def level_name(value: object) -> str:
    """The canonical spelling of a categorical value: numbers compare as numbers ("1.0" is level "1")."""
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return f"{number:g}" if math.isfinite(number) else text


def is_missing(value: object) -> bool:
    return value is None or str(value).strip().lower() in MISSING


@dataclass
class Covariate:
    """One conditioning variable and its training distribution."""

    name: str
    kind: str  # "categorical" | "continuous"
    levels: list[str] = field(default_factory=list)  # categorical: the levels, in order
    counts: list[int] = field(default_factory=list)  # categorical: training scans per level
    mean: float = 0.0  # continuous: training mean, standard deviation and range
    std: float = 1.0
    min: float = 0.0
    max: float = 0.0

    @property
    def width(self) -> int:
        return len(self.levels) if self.kind == "categorical" else 1

    def parse(self, value: object, where: str) -> str | float:
        """A requested value in this covariate's own terms; an unseen level or a non-number is a user error."""
        if self.kind == "categorical":
            level = level_name(value)
            if level not in self.levels:
                raise UserError(f"{where}: {self.name}={value} is a category the model never saw "
                                f"(training levels: {', '.join(self.levels)})")
            return level
        try:
            number = float(str(value).strip())
        except ValueError:
            raise UserError(f"{where}: {self.name} must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise UserError(f"{where}: {self.name} must be a finite number, got {value!r}")
        return number

    def encode(self, value: str | float) -> list[float]:
        if self.kind == "categorical":
            return [1.0 if level == value else 0.0 for level in self.levels]
        return [(float(value) - self.mean) / self.std]

    def extrapolated(self, value: str | float) -> bool:
        return self.kind == "continuous" and not self.min <= float(value) <= self.max

    def to_json(self) -> dict:
        if self.kind == "categorical":
            return {"name": self.name, "type": self.kind, "levels": self.levels, "counts": self.counts}
        return {"name": self.name, "type": self.kind, "mean": self.mean, "std": self.std, "min": self.min, "max": self.max}


@dataclass
class ConditionSpec:
    """The covariates a conditional model was fit on, in input order."""

    covariates: list[Covariate]

    @property
    def width(self) -> int:
        return sum(c.width for c in self.covariates)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.covariates]

    def covariate(self, name: str, where: str) -> Covariate:
        """The covariate called ``name``, matched case-insensitively."""
        for c in self.covariates:
            if c.name.lower() == name.strip().lower():
                return c
        raise UserError(f"{where}: the model has no covariate {name!r} (it was fit on {', '.join(self.names)})")

    def parse(self, values: Mapping[str, object], where: str) -> dict[str, str | float]:
        """A full condition, every covariate given once, in the model's names and order."""
        given = {self.covariate(k, where).name: v for k, v in values.items()}
        missing = [c.name for c in self.covariates if c.name not in given]
        if missing:
            raise UserError(f"{where}: no value for {', '.join(missing)} (the model is conditioned on {', '.join(self.names)})")
        return {c.name: c.parse(given[c.name], where) for c in self.covariates}

    def encode(self, condition: Mapping[str, str | float]) -> np.ndarray:
        """c as float32, from a parsed condition."""
        return np.array([v for c in self.covariates for v in c.encode(condition[c.name])], dtype=np.float32)

    def continuous_columns(self) -> list[int]:
        """Where the continuous covariates sit in c."""
        starts = np.cumsum([0] + [c.width for c in self.covariates])
        return [int(start) for start, c in zip(starts, self.covariates) if c.kind == "continuous"]

    def stratum(self, condition: Mapping[str, str | float]) -> tuple[str, ...]:
        """The categorical levels: images of one stratum share them and are assigned codes among themselves."""
        return tuple(str(condition[c.name]) for c in self.covariates if c.kind == "categorical")

    def extrapolated(self, condition: Mapping[str, str | float]) -> list[str]:
        return [c.name for c in self.covariates if c.extrapolated(condition[c.name])]

    def to_json(self) -> dict:
        return {"covariates": [c.to_json() for c in self.covariates]}

    @classmethod
    def from_json(cls, raw: object, where: str) -> "ConditionSpec":
        """A spec read back from a model folder, checked: its width fixes the generator's input."""
        items = raw.get("covariates") if isinstance(raw, dict) else None
        if not isinstance(items, list) or not items:
            raise UserError(f"{where}: 'covariates' must be a non-empty list")
        return cls([_covariate(item, where) for item in items])


def _covariate(item: object, where: str) -> Covariate:
    try:
        if item["type"] == "categorical":
            levels, counts = [str(v) for v in item["levels"]], [int(v) for v in item["counts"]]
            if len(levels) < 1 or len(set(levels)) != len(levels) or len(counts) != len(levels):
                raise ValueError("levels")
            return Covariate(str(item["name"]), "categorical", levels, counts)
        if item["type"] == "continuous":
            numbers = [float(item[k]) for k in ("mean", "std", "min", "max")]
            if not all(math.isfinite(v) for v in numbers) or numbers[1] <= 0:
                raise ValueError("range")
            return Covariate(str(item["name"]), "continuous", [], [], *numbers)
        raise ValueError("type")
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{where}: a covariate entry is malformed: {item!r}") from None
