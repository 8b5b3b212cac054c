"""The relative slice level p of a slice-aware 2D model (``model.slice_levels``): where in the brain a slice lies.

p is a slice's position within its brain's extent along ``data.slice_axis`` (0 at the
first slice with brain, 1 past the last). A 2D model that does not know p must carry the
level in its code alone: fresh draws between codes of distant levels decode a blend of,
say, cerebellum and cortex. A slice-aware model reads p beside u (standardised, like a
continuous covariate) and, like a categorical covariate, assigns codes only among the
slices of its own level stratum (equal-width bins of the training range of p), so a code
never serves two levels. A fresh sample asks for a level: by default one drawn from the
training distribution (a stratum in its training proportion, then uniform within it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from neurosql_med.errors import UserError

STREAM = 0x1E7  # separates the level draws of a synthesize run from its latents and textures


@dataclass(frozen=True)
class SliceLevels:
    """The level strata of a slice-aware model and its training distribution of p."""

    bins: int  # strata: equal-width bins of [low, high]
    low: float  # training range of p
    high: float
    mean: float  # p enters G as (p - mean) / std
    std: float
    counts: tuple[int, ...]  # training slices per stratum
    grid: tuple[float, ...] = ()  # model.subject_codes: the levels a synthetic stack is decoded at (engine/stacks.py)

    @classmethod
    def of(cls, levels: Sequence[float], bins: int) -> SliceLevels:
        """The strata and distribution of the training slices' ``levels``."""
        p = np.asarray(levels, dtype=np.float64)
        spec = cls(bins, float(p.min()), float(p.max()), float(p.mean()), float(p.std()) or 1.0, (0,) * bins)
        counts = np.bincount(spec.strata(p), minlength=bins)
        return cls(bins, spec.low, spec.high, spec.mean, spec.std, tuple(int(c) for c in counts))

    def strata(self, levels: np.ndarray) -> np.ndarray:
        """The stratum of each level; a level outside the training range falls in the nearest end stratum."""
        width = (self.high - self.low) / self.bins or 1.0
        return np.clip(np.floor((np.asarray(levels) - self.low) / width), 0, self.bins - 1).astype(np.int64)

    def encode(self, levels: Sequence[float] | np.ndarray) -> np.ndarray:
        """What G reads for each level: (n, 1) float32."""
        return ((np.asarray(levels, dtype=np.float64) - self.mean) / self.std).astype(np.float32)[:, None]

    def draw(self, rng: np.random.Generator) -> float:
        """One level from the training distribution: a stratum in its training proportion, uniform within it."""
        counts = np.asarray(self.counts, dtype=np.float64)
        stratum = int(rng.choice(self.bins, p=counts / counts.sum()))
        width = (self.high - self.low) / self.bins
        return round(float(self.low + width * (stratum + rng.uniform())), 4)

    def drawn(self, seed: int, k: int) -> float:
        """Sample k's level in a run with ``seed``: a pure function of (seed, k)."""
        return self.draw(np.random.default_rng([STREAM, int(seed), int(k)]))

    def of_latents(self, z: np.ndarray) -> np.ndarray:
        """A level for latents that were asked for none, each drawn with its own latent's bytes as the seed.

        A pure function of each latent: the same z always decodes at the same level,
        whatever batch it is decoded in.
        """
        rows = np.ascontiguousarray(np.asarray(z, dtype=np.float64))
        return np.array([self.draw(np.random.default_rng(list(row.view(np.uint32)))) for row in rows])

    def to_json(self) -> dict:
        """Without a grid when there is none: a model without subject codes keeps its levels.json bytes."""
        return {"bins": self.bins, "low": self.low, "high": self.high, "mean": self.mean, "std": self.std,
                "counts": list(self.counts)} | ({"grid": list(self.grid)} if self.grid else {})

    @classmethod
    def from_json(cls, raw: object, where: str) -> SliceLevels:
        """The strata read back from a model folder, checked: they fix the generator's input and the samples' levels."""
        try:
            numbers = [float(raw[k]) for k in ("low", "high", "mean", "std")]
            bins, counts = int(raw["bins"]), tuple(int(c) for c in raw["counts"])
            grid = tuple(float(p) for p in raw.get("grid", ()))
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{where}: slice levels are malformed") from None
        if not (all(math.isfinite(v) for v in numbers) and 0 <= numbers[0] <= numbers[1] <= 1 and numbers[3] > 0
                and bins >= 1 and len(counts) == bins and min(counts) >= 0 and sum(counts) > 0
                and all(0 <= p <= 1 for p in grid)):
            raise UserError(f"{where}: slice levels are malformed")
        return cls(bins, *numbers, counts, grid)


def parse_levels(text: str) -> tuple[float, ...]:
    """``--levels 0.3,0.5,0.7``: relative slice levels in [0, 1], which sample k cycles through."""
    try:
        levels = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UserError(f"--levels must be comma-separated numbers in [0, 1] (e.g. 0.3,0.5,0.7), got {text!r}") from None
    if not levels or not all(0 <= p <= 1 for p in levels):
        raise UserError(f"--levels must be comma-separated numbers in [0, 1] (e.g. 0.3,0.5,0.7), got {text!r}")
    return levels
