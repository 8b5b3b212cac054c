"""The model folder `fit` writes and every later command reads: its files, and the
reader that turns a verified folder into an ``engine.model.NeuroSQLModel``.

A folder is complete once ``hashes.json`` exists: it is written last and records the
sha256 of every other artifact, so a copied, truncated or edited model is caught
before it produces a single image.
"""
from __future__ import annotations

import io
import json
import math
import pickle
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from neurosql_med.bounded import read_json
from neurosql_med.config import Config, load_config
from neurosql_med.errors import UserError
from neurosql_med.io.files import sha256_file, write_bytes, write_text
from neurosql_med.io.geometry import Geometry
from neurosql_med.engine.conditioning import ConditionSpec
from neurosql_med.engine.levels import SliceLevels
from neurosql_med.engine.decoder import build_decoder, decoder_parameters
from neurosql_med.engine.model import NeuroSQLModel
from neurosql_med.engine.residual import ResidualTexture
from neurosql_med.engine.refiner import FORMAT as REFINER_FORMAT, RefinerNet, RefinerTexture
from neurosql_med.engine.tissue_texture import FORMAT as TISSUE_FORMAT, TissueTexture
from neurosql_med.runtime import fast_cpu_math

CHECKPOINT = "model.pt"  # weights, optimiser, schedule and trainer counters
CONFIG = "config.yaml"
LATTICE = "lattice.npy"  # the fixed quantile lattice, (n, d) float64
ASSIGNMENT = "assignment.npy"  # assignment[i]: the lattice row coding training sample i
GEOMETRY = "geometry.json"
FINGERPRINT = "data_fingerprint.json"  # which scans were trained on, without their names
HISTORY = "history.jsonl"  # one row per epoch, with the wall-clock timings model.pt leaves out
LOSS_PLOT = "loss.png"
RECON_PLOT = "recon.png"
MODEL_CARD = "MODEL_CARD.md"  # what was trained, how, and how well: written by fit, so hashed like the rest
EVALUATION = "EVALUATION.md"  # the latest `evaluate --model` numbers: rewritten later, so outside HASHES
HASHES = "hashes.json"  # written last: the folder is complete once it exists
ARTIFACTS = (CHECKPOINT, CONFIG, LATTICE, ASSIGNMENT, GEOMETRY, FINGERPRINT, MODEL_CARD)  # what HASHES covers, in its order
LABELS = "labels.json"  # {"names": [...]}: class index -> tissue name, only in a model fit on label maps; hashed too
CONDITIONS = "conditions.json"  # a conditional model's covariates and each training sample's encoded condition; hashed too
TEXTURE = "texture.pt"  # the residual texture samples get (model.texture > 0); hashed too
LEVELS = "levels.json"  # a slice-aware model's level strata and each training slice's level; hashed too
OPTIONAL = (LABELS, CONDITIONS, TEXTURE, LEVELS)  # artifacts only some models have: HASHES covers each one present
FORMAT = "nsql-med/2"  # 2: the generator gained its mean-image template
SMALL_FILES_BYTES = 8 * 2**20  # the pictures, the model card, the history and the JSON records, generously


def folder_bytes(cfg: Config, n: int, num_labels: int = 0, condition_width: int = 0) -> int:
    """An upper bound on the disk a fit of ``n`` samples needs for its model folder, known before it writes.

    The checkpoint holds the weights, AdamW's two moments and (train.ema) their average;
    it counts twice, because an atomic write keeps the last one until the new one is whole.
    """
    shape = cfg.data.sample_shape()
    weights = 4 * decoder_parameters(cfg.model, shape, num_labels, condition_width)
    checkpoint = weights * (4 if cfg.train.ema else 3) + 8 * n
    arrays = 8 * n * (cfg.model.latent_dim + 1)  # lattice.npy and assignment.npy
    texture = 8 * math.prod(shape) if cfg.model.texture else 0
    if cfg.model.texture and cfg.model.texture_mode == "refiner":  # its weights, then the grain's summaries
        texture += 4 * sum(p.numel() for p in RefinerNet(len(shape), num_labels).parameters())
    return 2 * checkpoint + arrays + texture + 32 * n * condition_width + SMALL_FILES_BYTES


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Load tensors and plain containers only: a pickled object is refused, never executed."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"{path}: not a plain state-dict checkpoint (it holds pickled objects); refusing to load it") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable checkpoint ({str(exc).splitlines()[0]})") from None
    if not isinstance(state, dict) or not str(state.get("format", "")).startswith("nsql-med/") or "generator" not in state:
        raise UserError(f"{path}: not an nsql-med checkpoint")
    if state["format"] != FORMAT:
        raise UserError(f"{path}: written by another nsql-med version (checkpoint format {state['format']}, "
                        f"this version reads {FORMAT}); fit the model again")
    return state


def save_array(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    write_bytes(path, buffer.getvalue())


def save_label_names(folder: Path, names: list[str]) -> None:
    write_text(folder / LABELS, json.dumps({"names": names}, indent=2))


def save_conditions(folder: Path, spec: dict, encoded: np.ndarray) -> None:
    """The covariates (types, levels or ranges, training counts) and c of every training sample, in sample order."""
    rows = [[float(v) for v in row] for row in np.asarray(encoded, dtype=np.float32)]
    write_text(folder / CONDITIONS, json.dumps({**spec, "training": rows}, indent=2))


def save_levels(folder: Path, levels: dict, training: np.ndarray) -> None:
    """The level strata and training distribution, and the level p of every training sample, in sample order."""
    write_text(folder / LEVELS, json.dumps({**levels, "training": [float(v) for v in training]}, indent=2))


def write_hashes(folder: Path) -> str:
    """hashes.json, covering the OPTIONAL artifacts the model has after the ARTIFACTS."""
    hashes = {name: sha256_file(folder / name) for name in _artifacts(folder)}
    write_text(folder / HASHES, json.dumps(hashes, indent=2))
    return hashes[CHECKPOINT]


def _artifacts(folder: Path) -> tuple[str, ...]:
    return ARTIFACTS + tuple(name for name in OPTIONAL if (folder / name).is_file())


def is_model_folder(folder: Path) -> bool:
    return (folder / CHECKPOINT).is_file()


def verify(folder: Path) -> dict[str, str]:
    """The recorded hashes, after checking every artifact is present and unchanged."""
    if not folder.is_dir():
        raise UserError(f"model folder not found: {folder} (train one with `nsql-med fit`)")
    if not (folder / HASHES).is_file():
        state = "an unfinished fit (continue it with `nsql-med fit --resume`)" if is_model_folder(folder) else "not a model folder"
        raise UserError(f"{folder}: incomplete model folder, {state}")
    hashes = _json_object(folder / HASHES)
    for name in OPTIONAL:
        if (folder / name).is_file() and name not in hashes:
            raise UserError(f"{folder / name}: not recorded in {HASHES}; the model folder was modified")
    for name in ARTIFACTS + tuple(name for name in OPTIONAL if name in hashes):
        path = folder / name
        if not path.is_file():
            raise UserError(f"{folder}: incomplete model folder, {name} is missing")
        if not isinstance(hashes.get(name), str):
            raise UserError(f"{folder / HASHES}: records no sha256 for {name}; the model folder cannot be verified")
        if sha256_file(path) != hashes[name]:
            raise UserError(f"{path}: does not match its recorded sha256; the model folder was modified or damaged")
    return hashes


def load_model(folder: str | Path, device: str | torch.device = "cpu") -> NeuroSQLModel:
    """Load a complete, hash-verified model folder for sampling.

    Matching hashes only prove the files are the ones recorded, and anyone can rewrite
    hashes.json; so every artifact is also checked against the others here, and a
    folder that loads can be sampled and written without a later surprise.
    """
    folder = Path(folder)
    hashes = verify(folder)
    fast_cpu_math()
    device = torch.device(device)
    cfg = _saved_config(folder / CONFIG)
    geometry = Geometry.load(folder / GEOMETRY)
    _check_geometry_fits_config(folder, geometry, cfg)
    lattice, assignment = _lattice_and_assignment(folder, cfg.model.latent_dim, cfg.model.subject_codes)
    fingerprint = _json_object(folder / FINGERPRINT)
    label_names = _label_names(folder / LABELS) if LABELS in hashes else None
    num_labels = len(label_names or ())
    condition, training = _conditions(folder / CONDITIONS, len(assignment)) if CONDITIONS in hashes else (None, None)
    levels, training_levels = _levels(folder / LEVELS, len(assignment)) if LEVELS in hashes else (None, None)
    if cfg.model.subject_codes and (levels is None or not levels.grid):
        raise UserError(f"{folder / LEVELS}: a model with subject codes needs its slice grid ('grid'), "
                        "the levels each synthetic stack is decoded at")
    width = (0 if condition is None else condition.width) + (0 if levels is None else 1)
    texture = _texture(folder / TEXTURE, geometry.sample_shape, num_labels) if TEXTURE in hashes else None
    weights = _generator_weights(folder, cfg, geometry, device, num_labels, width)
    generator = build_decoder(cfg.model, geometry.sample_shape, num_labels, width)
    generator.load_state_dict(weights)
    generator.to(device).eval()
    return NeuroSQLModel(
        folder=folder, config=cfg, geometry=geometry, generator=generator, lattice=lattice, assignment=assignment,
        fingerprint=fingerprint, sha256=hashes[CHECKPOINT], device=device, label_names=label_names, condition=condition,
        training_conditions=training, texture=texture, levels=levels, training_levels=training_levels,
    )


def save_texture(folder: Path, texture: ResidualTexture | TissueTexture | RefinerTexture) -> None:
    buffer = io.BytesIO()
    torch.save(texture.state(), buffer)
    write_bytes(folder / TEXTURE, buffer.getvalue())


def _texture(path: Path, sample_shape: Sequence[int], num_labels: int) -> ResidualTexture | TissueTexture | RefinerTexture:
    """The residual texture, tensors and numbers only (a pickled object is refused), checked against the grid."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"{path}: holds pickled objects; refusing to load it") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable ({str(exc).splitlines()[0]})") from None
    if isinstance(state, dict) and state.get("format") == TISSUE_FORMAT:
        return TissueTexture.from_state(state, sample_shape, num_labels, str(path))
    if isinstance(state, dict) and state.get("format") == REFINER_FORMAT:
        return RefinerTexture.from_state(state, sample_shape, num_labels, str(path))
    return ResidualTexture.from_state(state, sample_shape, str(path))


def _conditions(path: Path, n: int) -> tuple[ConditionSpec, np.ndarray]:
    """The covariates and the (n, width) training conditions, checked against each other and the lattice."""
    raw = _json_object(path)
    spec = ConditionSpec.from_json(raw, str(path))
    training = _training_values(raw, np.float32)
    if training.shape != (n, spec.width) or not np.isfinite(training).all():
        raise UserError(f"{path}: 'training' must hold {n} finite rows of {spec.width} numbers (one per training sample)")
    return spec, training


def _training_values(raw: dict, dtype: type) -> np.ndarray:
    """A record's per-sample "training" array; empty when it holds no numbers, so the caller's shape check says why."""
    try:
        return np.asarray(raw.get("training"), dtype=dtype)
    except (TypeError, ValueError):
        return np.zeros(0, dtype=dtype)


def _levels(path: Path, n: int) -> tuple[SliceLevels, np.ndarray]:
    """The level strata and the n training levels, checked against each other and the lattice."""
    raw = _json_object(path)
    levels = SliceLevels.from_json(raw, str(path))
    training = _training_values(raw, np.float64)
    if training.shape != (n,) or not np.isfinite(training).all() or training.min() < 0 or training.max() > 1:
        raise UserError(f"{path}: 'training' must hold {n} levels in [0, 1] (one per training sample)")
    return levels, training


def _label_names(path: Path) -> list[str]:
    """The class names, checked: their count fixes the generator's label channels."""
    names = _json_object(path).get("names")
    if not (isinstance(names, list) and 2 <= len(names) <= 255 and all(isinstance(n, str) and n for n in names)
            and len(set(names)) == len(names)):
        raise UserError(f"{path}: 'names' must list 2 to 255 distinct non-empty class names (index 0 background)")
    return names


def _json_object(path: Path) -> dict:
    value = read_json(path)
    if not isinstance(value, dict):
        raise UserError(f"{path}: must hold a JSON object, not a {type(value).__name__}")
    return value


def _saved_config(path: Path) -> Config:
    """The config, with the file named in every complaint (the schema's own messages name only the key)."""
    try:
        return load_config(path)
    except UserError as exc:
        message = str(exc)
        raise UserError(message if str(path) in message else f"{path}: {message}") from None


def _check_geometry_fits_config(folder: Path, geometry: Geometry, cfg: Config) -> None:
    """Both describe the training grid; callers preprocess real scans by one and place samples by the other."""
    recorded = {"mode": geometry.mode, "shape": geometry.shape, "spacing": geometry.spacing}
    if geometry.mode == "2d":
        recorded["slice_axis"] = geometry.slice_axis
    for key, value in recorded.items():
        if value != getattr(cfg.data, key):
            raise UserError(f"{folder / 'geometry.json'}: {key} {value!r} differs from config.yaml's "
                            f"data.{key} {getattr(cfg.data, key)!r}")


def _array(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise UserError(f"{path}: not a plain numeric .npy array ({str(exc).splitlines()[0]})") from None
    if not isinstance(array, np.ndarray):
        array.close()
        raise UserError(f"{path}: an .npz archive, not a single .npy array")
    return array


def _lattice_and_assignment(folder: Path, latent_dim: int, stacked: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Sampling indexes the lattice by the assignment: both must be exactly what fit wrote.

    The assignment has one entry per training sample; a permutation of the lattice, or,
    ``stacked`` (model.subject_codes), a map onto it: each code serves all slices of one stack.
    """
    lattice_path, assignment_path = folder / LATTICE, folder / ASSIGNMENT
    lattice, assignment = _array(lattice_path), _array(assignment_path)
    if lattice.ndim != 2 or len(lattice) < 1 or lattice.shape[1] != latent_dim or not np.issubdtype(lattice.dtype, np.floating):
        raise UserError(f"{lattice_path}: must be an (n, {latent_dim}) float array for config.yaml's latent_dim "
                        f"{latent_dim}, got {lattice.dtype} {lattice.shape}")
    if not np.isfinite(lattice).all():
        raise UserError(f"{lattice_path}: holds NaN or infinite values")
    n = len(lattice)
    if assignment.ndim != 1 or not np.issubdtype(assignment.dtype, np.integer):
        raise UserError(f"{assignment_path}: must be a 1-D integer array, got {assignment.dtype} {assignment.shape}")
    if stacked:
        if not np.array_equal(np.unique(assignment), np.arange(n)):
            raise UserError(f"{assignment_path}: does not use each of the {n} lattice points (one per training stack)")
        return lattice, assignment
    if len(assignment) != n:
        raise UserError(f"{assignment_path}: has {len(assignment)} entries but lattice.npy has {n} points")
    if not np.array_equal(np.sort(assignment), np.arange(n)):
        raise UserError(f"{assignment_path}: not a permutation of 0..{n - 1}")
    return lattice, assignment


def _generator_weights(
    folder: Path, cfg: Config, geometry: Geometry, device: torch.device, num_labels: int, condition_dim: int = 0,
) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors, after checking they fit the generator config.yaml describes.

    The expected shapes come from a generator built on the meta device: no memory, no
    random draws, so a config edited to a huge width is refused without allocating it.
    """
    path = folder / CHECKPOINT
    saved = load_checkpoint(path, device)
    weights = saved.get("ema", saved["generator"])  # a fit with train.ema samples from the moving average
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise UserError(f"{path}: its generator entry is not a set of named tensors")
    with torch.device("meta"):
        expected = {k: v.shape for k, v in build_decoder(cfg.model, geometry.sample_shape, num_labels, condition_dim).state_dict().items()}
    problem = _architecture_problem(expected, weights)
    if problem:
        labels = f" and {LABELS} ({num_labels} classes)" if num_labels else f" (no {LABELS}: no label classes)"
        raise UserError(f"{path}: does not fit the architecture of config.yaml and geometry.json{labels}: {problem}")
    for name, tensor in weights.items():
        if not tensor.is_floating_point() or not torch.isfinite(tensor).all():
            raise UserError(f"{path}: generator tensor {name} is not all finite floating-point values")
    return weights


def _architecture_problem(expected: dict[str, torch.Size], weights: dict[str, torch.Tensor]) -> str | None:
    missing = [k for k in expected if k not in weights]
    if missing:
        return f"missing generator tensor {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
    extra = [k for k in weights if k not in expected]
    if extra:
        return f"unexpected generator tensor {extra[0]}" + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
    for name, shape in expected.items():
        if weights[name].shape != shape:
            return f"generator tensor {name} has shape {tuple(weights[name].shape)}, the architecture needs {tuple(shape)}"
    return None
