"""Typed run configuration, read from YAML.

Every key is declared in a dataclass so a typo or a wrong type is caught before any
work starts, with an error naming the offending key, instead of being ignored.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Optional, get_args, get_origin

import yaml

from neurosql_med.errors import UserError


@dataclass
class DataConfig:
    mode: Literal["2d", "3d"] = "2d"
    pattern: Optional[str] = None
    spacing: list[float] = field(default_factory=lambda: [2.5, 2.5, 2.5])
    shape: list[int] = field(default_factory=lambda: [64, 80, 64])
    fit: Literal["pad_crop", "resize"] = "pad_crop"
    intensity_percentiles: list[float] = field(default_factory=lambda: [0.5, 99.5])
    foreground_margin: int = 2
    slice_axis: int = 2
    slice_range: list[float] = field(default_factory=lambda: [0.2, 0.8])
    slice_stride: int = 3
    skull_stripped: bool = True  # recorded in synthetic sidecars (BIDS SkullStripped)


@dataclass
class ModelConfig:
    latent_dim: int = 16
    lattice: Literal["gaussian", "uniform", "center-outward"] = "gaussian"
    channels: list[int] = field(default_factory=lambda: [128, 64, 32, 16])


@dataclass
class LossConfig:
    ssim_weight: float = 0.8
    ssim_window: int = 7


@dataclass
class TrainConfig:
    epochs: int = 80
    max_minutes: Optional[float] = None
    batch_size: int = 16
    lr: float = 0.005
    weight_decay: float = 0.0001
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True


@dataclass
class AssignmentConfig:
    cost: Literal["auto", "loss", "mse"] = "auto"
    threshold: float = 0.02
    max_interval: int = 8
    block_size: int = 16384


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    assignment: AssignmentConfig = field(default_factory=AssignmentConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        """The model folder's config.yaml, keys in declaration order so it reads like the built-in files."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def digest(self) -> str:
        """sha256 of the canonical JSON form: what provenance records as the config hash."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


BUILTIN = ("default", "volume3d", "tiny", "tiny3d")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if origin is Literal:
        if value not in get_args(tp):
            choices = ", ".join(str(a) for a in get_args(tp))
            raise UserError(f"config key '{key}' must be one of {choices}, got {value!r}")
        return value
    if origin is list:
        (item,) = get_args(tp)
        if not isinstance(value, list):
            raise UserError(f"config key '{key}' must be a list, got {value!r}")
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"config key '{key}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"config key '{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"config key '{key}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"config key '{key}' must be a string, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    raise TypeError(f"unsupported config type {tp} for {key}")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"config section '{prefix or 'root'}' must be a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else str(key)
            raise UserError(f"unknown config key '{where}'")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in raw.items()}
    return cls(**kwargs)


def validate(cfg: Config) -> Config:
    """Reject values that parse but cannot work, naming the key."""
    d, m, t = cfg.data, cfg.model, cfg.train
    if len(d.spacing) != 3 or any(s <= 0 for s in d.spacing):
        raise UserError("config key 'data.spacing' must be three positive numbers")
    if len(d.shape) != 3 or any(s < 8 for s in d.shape):
        raise UserError("config key 'data.shape' must be three sizes of at least 8 voxels")
    lo, hi = d.intensity_percentiles if len(d.intensity_percentiles) == 2 else (-1, -1)
    if not 0 <= lo < hi <= 100:
        raise UserError("config key 'data.intensity_percentiles' must be [low, high] with 0 <= low < high <= 100")
    if d.slice_axis not in (0, 1, 2):
        raise UserError("config key 'data.slice_axis' must be 0, 1 or 2")
    a, b = d.slice_range if len(d.slice_range) == 2 else (-1, -1)
    if not 0 <= a < b <= 1:
        raise UserError("config key 'data.slice_range' must be [start, end] with 0 <= start < end <= 1")
    if d.slice_stride < 1:
        raise UserError("config key 'data.slice_stride' must be at least 1")
    if d.foreground_margin < 0:
        raise UserError("config key 'data.foreground_margin' must be >= 0")
    if m.latent_dim < 1:
        raise UserError("config key 'model.latent_dim' must be at least 1")
    if not m.channels or any(c < 1 for c in m.channels):
        raise UserError("config key 'model.channels' must be a non-empty list of positive widths")
    if cfg.loss.ssim_weight < 0:
        raise UserError("config key 'loss.ssim_weight' must be >= 0")
    if cfg.loss.ssim_window < 3 or cfg.loss.ssim_window % 2 == 0:
        raise UserError("config key 'loss.ssim_window' must be an odd number >= 3")
    if min(d.shape) < cfg.loss.ssim_window:
        raise UserError("config key 'data.shape' is smaller than 'loss.ssim_window'")
    if t.epochs < 1:
        raise UserError("config key 'train.epochs' must be at least 1")
    if t.max_minutes is not None and t.max_minutes <= 0:
        raise UserError("config key 'train.max_minutes' must be positive")
    if t.batch_size < 1:
        raise UserError("config key 'train.batch_size' must be at least 1")
    if t.lr <= 0:
        raise UserError("config key 'train.lr' must be positive")
    if not 0 <= cfg.assignment.threshold <= 1:
        raise UserError("config key 'assignment.threshold' must be in [0, 1]")
    if cfg.assignment.max_interval < 1 or cfg.assignment.block_size < 2:
        raise UserError("config keys 'assignment.max_interval' >= 1 and 'assignment.block_size' >= 2")
    return cfg


def from_dict(raw: Any) -> Config:
    return validate(_build(Config, raw, ""))


def load_config(source: str | Path | None = None) -> Config:
    """Load a config by path, or by built-in name (``default``, ``volume3d``, ``tiny``)."""
    if source is None:
        source = "default"
    name = str(source)
    if name in BUILTIN:
        text = resources.files("neurosql_med.configs").joinpath(f"{name}.yaml").read_text()
        where = f"built-in config '{name}'"
    else:
        path = Path(name)
        if not path.is_file():
            raise UserError(f"config file not found: {path}")
        text = path.read_text()
        where = str(path)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"{where} is not valid YAML: {str(exc).splitlines()[0]}") from None
    return from_dict(raw)


def override(cfg: Config, **changes: Any) -> Config:
    """Apply CLI overrides given as ``section__key=value``; None means not given."""
    raw = cfg.to_dict()
    for dotted, value in changes.items():
        if value is None:
            continue
        section, key = dotted.split("__")
        raw[section][key] = value
    return from_dict(raw)

