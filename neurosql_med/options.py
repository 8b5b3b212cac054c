"""Options objects: each command-line flag's name, default, limits and help, written once.

A command's options are a frozen dataclass whose fields carry a `Flag` in their metadata.
The library entry point takes the object; `nsql-med` builds the command's arguments and
options from the same fields (cli/flags.py) and its reference page follows from them, so a
default, a limit or a help text cannot say one thing in the library and another on the
command line. Constructing an object checks every field against its limits and choices,
so a library call refuses a bad value exactly as the command line does, before any work.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from neurosql_med.config import BUILTIN, Config
from neurosql_med.errors import UserError

# Copy threshold on d_syn / median(d_train): the smallest round value that flags every planted,
# degraded copy in benchmarks/bench_evaluate.py --tau (measurements in docs/decisions.md).
TAU = 0.5
MODEL_DIR = Path("nsql-model")  # where `fit` writes its model, and where `synthesize` and `reproduce` look for one


@dataclass(frozen=True)
class Range:
    """The values a number (or each number of a list) may take; an open end excludes its bound."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def describe(self) -> str:
        if self.high is None:
            return f"{'greater than' if self.low_open else 'at least'} {self.low:,}"
        if not (self.low_open or self.high_open):
            return f"between {self.low:,} and {self.high:,}"
        return f"in {'(' if self.low_open else '['}{self.low:,}, {self.high:,}{')' if self.high_open else ']'}"


@dataclass(frozen=True)
class Flag:
    """How a field appears on the command line, and what it may hold."""

    help: str
    names: tuple[str, ...] = ()  # the spellings, e.g. ("--out", "-o"); empty: --the-field-name
    argument: bool = False  # a positional argument (SCANS) rather than an option
    choices: tuple[str, ...] = ()  # the values allowed (each value, for a list)
    limits: Range | None = None
    config: str = ""  # "section.key" of the config value this option overrides
    negatable: bool = False  # an on/off option written --name/--no-name

    def text(self) -> str:
        """The help a user reads: the meaning, then the choices and where an unset value comes from."""
        extra = f" One of: {', '.join(self.choices)}." if self.choices else ""
        return self.help + extra + (f" Default: the config's {self.config}." if self.config else "")


def option(default: Any = dataclasses.MISSING, help: str = "", **flag: Any) -> Any:
    """A field of an options object; without ``default`` the value must be given."""
    return dataclasses.field(default=default, metadata={"flag": Flag(help, **flag)})


def flag_of(f: dataclasses.Field) -> Flag:
    return f.metadata["flag"]


def name_of(f: dataclasses.Field) -> str:
    """The flag as the user types it, which error messages name."""
    spec = flag_of(f)
    return spec.names[0] if spec.names else ("--" + f.name.replace("_", "-") if not spec.argument else f.name.upper())


def flag_fields(cls: type) -> Iterator[dataclasses.Field]:
    """The fields that are command-line arguments or options, in declaration order."""
    return (f for f in dataclasses.fields(cls) if "flag" in f.metadata)


def config_choices(key: str) -> tuple[str, ...]:
    """The values a config key's ``Literal`` type allows: an option overriding it offers the same."""
    section, name = key.split(".")
    section_type = typing.get_type_hints(Config)[section]
    return tuple(typing.get_args(typing.get_type_hints(section_type)[name]))


def _check_field(f: dataclasses.Field, value: Any) -> None:
    spec = flag_of(f)
    if value is None or (not spec.choices and spec.limits is None):
        return
    values = value if isinstance(value, (tuple, list)) else (value,)
    for item in values:
        if spec.choices and item not in spec.choices:
            raise UserError(f"{name_of(f)} must be one of {', '.join(spec.choices)}, got {repr(item)[:80]}")
        if spec.limits is not None and not spec.limits.holds(item):
            raise UserError(f"{name_of(f)} must be {spec.limits.describe()}, got {item}")


@dataclass(frozen=True, kw_only=True)
class Options:
    """A command's options: checked field by field when made, then by the class's own `check`."""

    def __post_init__(self) -> None:
        for f in flag_fields(type(self)):
            _check_field(f, getattr(self, f.name))
        self.check()

    def check(self) -> None:
        """Rules between fields (one option needs or excludes another); none by default."""


# Options several commands share, each written once.
CONFIG_HELP = f"YAML config file, or a built-in name: {', '.join(BUILTIN)}."


def config_option(default: str = "default", what: str = "") -> Any:
    return option(default, (what + " " if what else "") + CONFIG_HELP, names=("--config", "-c"))


def device_option(default: Optional[str] = "auto", config: str = "") -> Any:
    return option(default, "Where networks run: cuda when a GPU is visible (auto), or the one named.",
                  choices=config_choices("train.device"), config=config)


def mode_option() -> Any:
    return option(None, "2d (slices) or 3d (volumes).", choices=config_choices("data.mode"), config="data.mode")


def pattern_option(config: str = "") -> Any:
    return option(None, "Glob (relative to the folder) choosing the images; overrides the layout's choice.",
                  config=config)


def strict_option() -> Any:
    return option(False, "Treat any skipped (unreadable or invalid) scan as an error.")


def labels_option() -> Any:
    return option(None, "Tissue label maps: auto (OASIS-1 FSL_SEG, BIDS *_dseg; used when every scan has one), none, "
                        "or a glob relative to each scan's folder, e.g. '*_seg.nii.gz'.", config="data.labels")


NEAR_CODES = Range(0, 3, low_open=True)  # --near-codes S: beyond 3 a draw is as spread as a fresh one, no longer near


def near_codes_option(help: str) -> Any:
    return option(None, "Draw each latent near a training code instead of fresh from the reference: a code picked at "
                        "random plus this scale times N(0, I). " + help, limits=NEAR_CODES)


def holdout_fraction_option(default: Optional[float], help: str) -> Any:
    return option(default, help, limits=Range(0, 1, low_open=True, high_open=True))
