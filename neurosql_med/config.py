"""Typed run configuration, read from YAML.

Every key is declared in a dataclass so a typo or a wrong type is caught before any
work starts, with an error naming the offending key, instead of being ignored.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, NoReturn, Optional, get_args, get_origin

import yaml

from neurosql_med.bounded import parse_yaml, preview, read_yaml
from neurosql_med.errors import UserError


@dataclass
class DataConfig:
    mode: Literal["2d", "3d"] = "2d"  # 2d: the model learns axial (slice_axis) slices; 3d: whole volumes
    pattern: Optional[str] = None  # glob (relative to the scan folder) choosing the images; overrides the layout's choice
    spacing: list[float] = field(default_factory=lambda: [2.5, 2.5, 2.5])  # target voxel size in mm (RAS), resampled by MONAI Spacingd
    anti_alias: bool = False  # low-pass each scan (and a tissue map's class channels) before resampling to a coarser spacing; the built-in configs turn it on
    shape: list[int] = field(default_factory=lambda: [64, 80, 64])  # volume grid in voxels after cropping to the brain
    fit: Literal["pad_crop", "resize"] = "pad_crop"  # pad_crop keeps the physical size; resize stretches the brain's box to the grid
    intensity_percentiles: list[float] = field(default_factory=lambda: [0.5, 99.5])  # [low, high] percentiles mapped to 0 and 1
    foreground_margin: int = 2  # voxels kept around the brain when cropping to the foreground
    slice_axis: int = 2  # 2d: 0 sagittal, 1 coronal, 2 axial
    slice_range: list[float] = field(default_factory=lambda: [0.2, 0.8])  # 2d: the fraction of the brain's own extent along slice_axis that slices are cut from
    slice_stride: int = 3  # 2d: every n-th slice of that range
    skull_stripped: bool = True  # recorded in synthetic sidecars (BIDS SkullStripped)
    labels: str = "auto"  # tissue label maps: "auto" (used when every scan has one), "none", or a glob

    def sample_shape(self) -> list[int]:
        """One model sample's grid: the volume in 3d, a slice (without slice_axis) in 2d."""
        if self.mode == "3d":
            return list(self.shape)
        return [s for i, s in enumerate(self.shape) if i != self.slice_axis]


@dataclass
class ModelConfig:
    latent_dim: int = 16  # dimension d of the latent codes u (the quantile lattice's points)
    lattice: Literal["gaussian", "uniform", "center-outward"] = "gaussian"  # reference distribution the lattice's quantiles come from
    channels: list[int] = field(default_factory=lambda: [256, 128, 64, 32])  # decoder widths, one stage each; every stage doubles the grid
    upsample: Literal["transposed", "resize"] = "transposed"  # plain decoder: resize = nearest x2 then a 3x3 convolution
    texture: float = 0.0  # strength of the residual texture fresh samples get (engine/residual.py); 0: none, G(u) alone
    texture_cutoff: float = 0.15  # cycles per voxel: the residual texture keeps the residual's spectrum above this
    texture_spectrum: Literal["residual", "lacking"] = "residual"  # global texture: the residual's spectrum, or the power G lacks, P(x) - P(G(u))
    decoder: Literal["plain", "residual"] = "plain"  # residual: modulated residual blocks at every resolution
    slice_levels: int = 0  # 2d: strata of the relative slice level p, which G also reads; 0: slices know no level
    texture_mode: Literal["global", "tissue", "refiner"] = "global"  # tissue: statistics per tissue class; refiner: a network draws detail first
    subject_codes: bool = False  # slice-aware 2d: one code per training scan, shared by its slices; samples are 3D stacks
    refine_blocks: int = 0  # plain decoder: residual blocks of two 3x3 convolutions at full resolution, before the output
    refiner_steps: int = 1000  # texture_mode refiner: its training steps, after the generator's epochs (outside train.max_minutes)


@dataclass
class LossConfig:
    ssim_weight: float = 0.8  # loss = L1 + ssim_weight x (1 - SSIM)
    gradient_weight: float = 0.0  # weight of an L1 term on image gradients (edges), in generator steps only
    ssim_window: int = 7  # SSIM window side in voxels (odd)
    label_weight: float = 1.0  # weight of the label term (cross-entropy + Dice) when the cohort has label maps
    laplacian_weight: float = 0.0  # weight of a Laplacian-pyramid L1 term, in generator steps and assignment costs
    laplacian_levels: int = 4  # levels of that pyramid (each half the resolution of the last)


@dataclass
class TrainConfig:
    epochs: int = 110  # training epochs (with a budget, at most this many)
    max_minutes: Optional[float] = None  # wall-clock budget: two timed epochs fix the epoch count that fits it
    batch_size: int = 16  # samples per generator step
    lr: float = 0.005  # peak learning rate of the warm-up + cosine schedule (AdamW)
    weight_decay: float = 0.0001  # AdamW weight decay
    seed: int = 0  # seeds the whole fit: the same seed and thread count give the same bytes
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when a GPU is visible, else cpu
    amp: bool = True  # bf16 autocast for the generator on a GPU (assignment costs stay float32)
    ema: float = 0.0  # decay of an exponential moving average of the generator's weights, used for sampling; 0: off
    grad_clip: float = 0.0  # largest gradient norm a generator step applies (larger ones are scaled down); 0: off


@dataclass
class AssignmentConfig:
    cost: Literal["auto", "loss", "pyramid", "mse"] = "auto"  # assignment cost: the training loss, squared error, the Laplacian-pyramid L1 alone, or auto (the loss while it is cheap)
    threshold: float = 0.02  # assign every epoch while more than this fraction of the codes moves, then back off
    max_interval: int = 8  # at most this many epochs between assignment rounds
    block_size: int = 16384  # above this many samples, solve the assignment in random blocks of this size


@dataclass
class ConditionConfig:
    """The covariates a conditional model is fit on (``fit --condition``); absent for an unconditional model."""

    columns: list[str] = field(default_factory=list)  # covariates to condition on, e.g. [CDR, Age]
    categorical: list[str] = field(default_factory=list)  # treat these as categories even when numeric
    continuous: list[str] = field(default_factory=list)  # treat these as numbers even when participants.json lists levels
    cost_bins: int = 4  # assignment costs per stratum under this many bins of each continuous covariate; 0: each image's own value

    def kinds(self) -> dict[str, str]:
        return {**{c: "categorical" for c in self.categorical}, **{c: "continuous" for c in self.continuous}}


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    assignment: AssignmentConfig = field(default_factory=AssignmentConfig)
    condition: Optional[ConditionConfig] = None

    def to_dict(self) -> dict[str, Any]:
        """Without a condition section when there is none: an unconditional config keeps its bytes and digest."""
        raw = dataclasses.asdict(self)
        if raw["condition"] is None:
            del raw["condition"]
        return raw

    def to_yaml(self) -> str:
        """The model folder's config.yaml, keys in declaration order so it reads like the built-in files."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def digest(self) -> str:
        """sha256 of the canonical JSON form: what provenance records as the config hash.

        Keys added later are left out at the value that behaves as before they existed, so
        an older model's samples keep their config hash, and their bytes.
        """
        canonical = self.to_dict()
        for section, keys in LATER_KEYS.items():
            for key, legacy in keys.items():
                if canonical[section][key] == legacy:
                    del canonical[section][key]
        text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


# section -> {key: the value that reproduces the behaviour from before the key existed}
LATER_KEYS: dict[str, dict[str, Any]] = {
    "model": {"upsample": "transposed", "texture": 0.0, "texture_cutoff": 0.15, "decoder": "plain", "slice_levels": 0,
              "texture_mode": "global", "subject_codes": False, "refine_blocks": 0,
              "refiner_steps": 1000, "texture_spectrum": "residual"},
    "loss": {"gradient_weight": 0.0, "laplacian_weight": 0.0, "laplacian_levels": 4},
    "train": {"ema": 0.0, "grad_clip": 0.0},
    "data": {"anti_alias": False},
}


def _builtin_names() -> tuple[str, ...]:
    """The registry of built-in configs: every YAML file the neurosql_med.configs package ships, default first."""
    names = sorted(p.name.removesuffix(".yaml") for p in resources.files("neurosql_med.configs").iterdir()
                   if p.name.endswith(".yaml"))
    return tuple(sorted(names, key=lambda name: name != "default"))


BUILTIN = _builtin_names()


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
            raise UserError(f"config key '{key}' must be one of {choices}, got {preview(value)}")
        return value
    if origin is list:
        (item,) = get_args(tp)
        if not isinstance(value, list):
            raise UserError(f"config key '{key}' must be a list, got {preview(value)}")
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"config key '{key}' must be true or false, got {preview(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"config key '{key}' must be an integer, got {preview(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"config key '{key}' must be a number, got {preview(value)}")
        if not math.isfinite(value):  # NaN passes every `x <= 0` check, so it is refused here
            raise UserError(f"config key '{key}' must be a finite number, got {preview(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"config key '{key}' must be a string, got {preview(value)}")
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
            raise UserError(f"unknown config key '{where[:80]}'")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in raw.items()}
    return cls(**kwargs)


# Upper limits, so a typo cannot ask for more memory than any machine has (a 100000^3 grid
# used to crash the interpreter when the decoder was built). Listed in the docs' config reference.
MAX_LATENT_DIM = 1024  # model.latent_dim
MAX_CHANNELS = 4096  # each width in model.channels
MAX_STAGES = 8  # entries of model.channels; every stage doubles the grid
MAX_REFINE_BLOCKS = 8  # model.refine_blocks: each costs two full-resolution convolutions per step
MAX_SLICE_LEVELS = 64  # model.slice_levels: more strata than this leave a handful of slices each
MAX_REFINER_STEPS = 100_000  # model.refiner_steps
MAX_TEXTURE = 4.0  # model.texture: past a few times the residual it measures, it is noise, not texture
MAX_SIDE = 1024  # each of data.shape
MAX_SAMPLE_VOXELS = 256**3  # one training sample (a 3D volume, or a 2D slice)
MAX_SPACING = 100.0  # each of data.spacing, in mm
SEED_RANGE = 2**32  # numpy's seed range: 0 <= seed < 2**32


def _fail(key: str, what: str) -> NoReturn:
    raise UserError(f"config key '{key}' {what}")


LABEL_FILES = (".nii.gz", ".nii", ".hdr", ".img")  # label maps: NIfTI or Analyze


def check_labels(value: str, name: str = "config key 'data.labels'") -> None:
    """auto, none, or a glob relative to each scan's folder that can name a label map file."""
    if value in ("auto", "none"):
        return
    if not value.strip() or value.startswith("/") or "\0" in value or not value.lower().endswith((*LABEL_FILES, "*")):
        raise UserError(f"{name} must be auto, none, or a glob relative to each scan's folder naming NIfTI/Analyze "
                        f"label maps (e.g. '*_seg.nii.gz'), got {preview(value)}")


def _check_data(d: DataConfig) -> None:
    check_labels(d.labels)
    if len(d.spacing) != 3 or any(not 0 < s <= MAX_SPACING for s in d.spacing):
        _fail("data.spacing", f"must be three voxel sizes in mm, each > 0 and <= {MAX_SPACING:g}")
    if len(d.shape) != 3 or any(not 8 <= s <= MAX_SIDE for s in d.shape):
        _fail("data.shape", f"must be three sizes between 8 and {MAX_SIDE} voxels")
    lo, hi = d.intensity_percentiles if len(d.intensity_percentiles) == 2 else (-1, -1)
    if not 0 <= lo < hi <= 100:
        _fail("data.intensity_percentiles", "must be [low, high] with 0 <= low < high <= 100")
    if d.slice_axis not in (0, 1, 2):
        _fail("data.slice_axis", "must be 0, 1 or 2")
    voxels = math.prod(d.sample_shape())
    if voxels > MAX_SAMPLE_VOXELS:
        _fail("data.shape", f"gives {voxels:,} voxels per {d.mode} sample; at most {MAX_SAMPLE_VOXELS:,} are allowed")
    a, b = d.slice_range if len(d.slice_range) == 2 else (-1, -1)
    if not 0 <= a < b <= 1:
        _fail("data.slice_range", "must be [start, end] with 0 <= start < end <= 1")
    if d.slice_stride < 1:
        _fail("data.slice_stride", "must be at least 1")
    if d.foreground_margin < 0:
        _fail("data.foreground_margin", "must be >= 0")


def _check_model(cfg: Config) -> None:
    m = cfg.model
    if not 1 <= m.latent_dim <= MAX_LATENT_DIM:
        _fail("model.latent_dim", f"must be between 1 and {MAX_LATENT_DIM}")
    if not 0 <= m.texture <= MAX_TEXTURE:
        _fail("model.texture", f"must be between 0 (no residual texture) and {MAX_TEXTURE}")
    if not 0 <= m.texture_cutoff < 0.5:
        _fail("model.texture_cutoff", "must be in [0, 0.5) cycles per voxel (0.5: the Nyquist frequency)")
    if not 1 <= m.refiner_steps <= MAX_REFINER_STEPS:
        _fail("model.refiner_steps", f"must be between 1 and {MAX_REFINER_STEPS}")
    if not 1 <= len(m.channels) <= MAX_STAGES or any(not 1 <= c <= MAX_CHANNELS for c in m.channels):
        _fail("model.channels", f"must list 1 to {MAX_STAGES} widths, each between 1 and {MAX_CHANNELS}")
    if not 0 <= m.refine_blocks <= MAX_REFINE_BLOCKS:
        _fail("model.refine_blocks", f"must be between 0 (none) and {MAX_REFINE_BLOCKS}")
    if m.refine_blocks and m.decoder != "plain":
        _fail("model.refine_blocks", "applies to the plain decoder (model.decoder: residual has its own full-resolution block)")
    if not 0 <= m.slice_levels <= MAX_SLICE_LEVELS:
        _fail("model.slice_levels", f"must be between 0 (no slice level) and {MAX_SLICE_LEVELS}")
    if m.slice_levels and cfg.data.mode != "2d":
        _fail("model.slice_levels", "applies to 2d slices only (set it to 0 for data.mode 3d)")
    if m.subject_codes and not m.slice_levels:
        _fail("model.subject_codes", "needs slice levels (model.slice_levels > 0, data.mode 2d): a subject's code is "
                                     "decoded at each of its slices' levels")


def _check_training(cfg: Config) -> None:
    t, loss, a = cfg.train, cfg.loss, cfg.assignment
    if loss.ssim_weight < 0:
        _fail("loss.ssim_weight", "must be >= 0")
    if loss.gradient_weight < 0:
        _fail("loss.gradient_weight", "must be >= 0")
    if loss.laplacian_weight < 0:
        _fail("loss.laplacian_weight", "must be >= 0")
    if not 1 <= loss.laplacian_levels <= MAX_STAGES:
        _fail("loss.laplacian_levels", f"must be between 1 and {MAX_STAGES}")
    if loss.ssim_window < 3 or loss.ssim_window % 2 == 0:
        _fail("loss.ssim_window", "must be an odd number >= 3")
    if min(cfg.data.shape) < loss.ssim_window:
        _fail("data.shape", "is smaller than 'loss.ssim_window'")
    if t.epochs < 1:
        _fail("train.epochs", "must be at least 1")
    if t.max_minutes is not None and t.max_minutes <= 0:
        _fail("train.max_minutes", "must be positive")
    if t.batch_size < 1:
        _fail("train.batch_size", "must be at least 1")
    if t.lr <= 0:
        _fail("train.lr", "must be positive")
    if t.weight_decay < 0:
        _fail("train.weight_decay", "must be >= 0")
    if not 0 <= t.ema < 1:
        _fail("train.ema", "must be in [0, 1) (0: no moving average)")
    if t.grad_clip < 0:
        _fail("train.grad_clip", "must be >= 0 (0: no clipping)")
    if not 0 <= t.seed < SEED_RANGE:
        _fail("train.seed", f"must be between 0 and {SEED_RANGE - 1}, got {t.seed}")
    if not 0 <= a.threshold <= 1:
        _fail("assignment.threshold", "must be in [0, 1]")
    if a.max_interval < 1 or a.block_size < 2:
        raise UserError("config keys 'assignment.max_interval' >= 1 and 'assignment.block_size' >= 2")


def _check_condition(cfg: Config) -> None:
    c = cfg.condition
    if c is None:
        return
    names = [n.strip().lower() for n in c.columns]
    if not names or any(not n for n in names) or len(set(names)) != len(names):
        _fail("condition.columns", "must list one or more distinct covariate names")
    if set(n.lower() for n in c.categorical) & set(n.lower() for n in c.continuous):
        _fail("condition.categorical", "and 'condition.continuous' must not share a covariate")
    if c.cost_bins < 0:
        _fail("condition.cost_bins", "must be >= 0 (0: each image's own value)")


def validate(cfg: Config) -> Config:
    """Reject values that parse but cannot work, naming the key; cheap checks first."""
    _check_condition(cfg)
    _check_data(cfg.data)
    _check_training(cfg)
    _check_model(cfg)
    return cfg


def from_dict(raw: Any) -> Config:
    return validate(_build(Config, raw, ""))


def load_config(source: str | Path | None = None) -> Config:
    """Load a config by path, or by built-in name (`BUILTIN`: ``default``, ``volume3d``, ``tiny``, ...)."""
    if source is None:
        source = "default"
    name = str(source)
    if name in BUILTIN:
        text = resources.files("neurosql_med.configs").joinpath(f"{name}.yaml").read_text()
        return from_dict(parse_yaml(text, f"built-in config '{name}'"))
    path = Path(name)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        return from_dict(read_yaml(path))
    except OSError as exc:
        raise UserError(f"cannot read config file {path}: {exc.strerror or exc}") from None


def with_condition(cfg: Config, columns: list[str] | None) -> Config:
    """``fit --condition A,B``: the config conditioned on those covariates (None: unchanged)."""
    if columns is None:
        return cfg
    raw = cfg.to_dict()
    raw["condition"] = {**(raw.get("condition") or {}), "columns": columns}
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

