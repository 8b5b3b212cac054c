"""The model folder `fit` writes and every later command reads.

A folder is complete once ``hashes.json`` exists: it is written last and records the
sha256 of every other artifact, so a copied, truncated or edited model is caught
before it produces a single image.
"""
from __future__ import annotations

import io
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neurosql_med.config import Config, load_config
from neurosql_med.errors import UserError
from neurosql_med.io.files import sha256_file, write_bytes, write_text
from neurosql_med.io.geometry import Geometry
from neurosql_med.engine.decoder import Decoder, build_decoder
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
HASHES = "hashes.json"  # written last: the folder is complete once it exists
ARTIFACTS = (CHECKPOINT, CONFIG, LATTICE, ASSIGNMENT, GEOMETRY, FINGERPRINT)  # what HASHES covers, in its order
FORMAT = "nsql-med/2"  # 2: the generator gained its mean-image template


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


def write_hashes(folder: Path) -> str:
    hashes = {name: sha256_file(folder / name) for name in ARTIFACTS}
    write_text(folder / HASHES, json.dumps(hashes, indent=2))
    return hashes[CHECKPOINT]


def is_model_folder(folder: Path) -> bool:
    return (folder / CHECKPOINT).is_file()


@dataclass
class NeuroSQLModel:
    """A trained generator with everything needed to sample and to place samples in space."""

    folder: Path
    config: Config
    geometry: Geometry
    generator: Decoder
    lattice: np.ndarray
    assignment: np.ndarray
    fingerprint: dict
    sha256: str
    device: torch.device

    @property
    def latent_dim(self) -> int:
        return self.config.model.latent_dim

    @property
    def lattice_kind(self) -> str:
        return self.config.model.lattice

    @torch.no_grad()
    def decode(self, z: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Latents (B, d) → images (B, 1, *sample_shape) in [0, 1], float32, on the CPU."""
        z = torch.as_tensor(np.asarray(z), dtype=torch.float32, device=self.device)
        return self.generator(z).float().cpu()

    def reconstructions(self) -> torch.Tensor:
        """G(u_σ(i)) for every training sample i: what the model learned for each real image."""
        return self.decode(self.lattice[self.assignment])


def verify(folder: Path) -> dict[str, str]:
    """The recorded hashes, after checking every artifact is present and unchanged."""
    if not folder.is_dir():
        raise UserError(f"model folder not found: {folder} (train one with `nsql-med fit`)")
    if not (folder / HASHES).is_file():
        state = "an unfinished fit (continue it with `nsql-med fit --resume`)" if is_model_folder(folder) else "not a model folder"
        raise UserError(f"{folder}: incomplete model folder, {state}")
    try:
        hashes = json.loads((folder / HASHES).read_text())
    except ValueError:
        raise UserError(f"{folder / HASHES}: damaged (not JSON); the model folder cannot be verified") from None
    for name in ARTIFACTS:
        path = folder / name
        if not path.is_file():
            raise UserError(f"{folder}: incomplete model folder, {name} is missing")
        if sha256_file(path) != hashes.get(name):
            raise UserError(f"{path}: does not match its recorded sha256; the model folder was modified or damaged")
    return hashes


def load_model(folder: str | Path, device: str | torch.device = "cpu") -> NeuroSQLModel:
    """Load a complete, hash-verified model folder for sampling."""
    folder = Path(folder)
    hashes = verify(folder)
    fast_cpu_math()
    device = torch.device(device)
    cfg = load_config(folder / CONFIG)
    geometry = Geometry.load(folder / GEOMETRY)
    generator = build_decoder(cfg.model, geometry.sample_shape)
    generator.load_state_dict(load_checkpoint(folder / CHECKPOINT, device)["generator"])
    generator.to(device).eval()
    return NeuroSQLModel(
        folder=folder,
        config=cfg,
        geometry=geometry,
        generator=generator,
        lattice=np.load(folder / LATTICE, allow_pickle=False),
        assignment=np.load(folder / ASSIGNMENT, allow_pickle=False),
        fingerprint=json.loads((folder / FINGERPRINT).read_text()),
        sha256=hashes[CHECKPOINT],
        device=device,
    )
