"""A trained NeuroSQL model: the generator with its lattice, assignment and optional parts,
and what sampling asks of it (decode, sample with texture, reconstruct).

It is built from a verified model folder by ``io.model.load_model``; nothing here reads
or writes files.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from neurosql_med.config import Config
from neurosql_med.engine.conditioning import ConditionSpec
from neurosql_med.engine.decoder import TemplateOutput, split_output
from neurosql_med.engine.levels import SliceLevels
from neurosql_med.engine.refiner import RefinerTexture
from neurosql_med.engine.residual import RECONSTRUCTION_STREAM, ResidualTexture, texture_seeds
from neurosql_med.engine.tissue_texture import TissueTexture

if TYPE_CHECKING:
    from neurosql_med.io.geometry import Geometry

DECODE_BATCH = 64  # training codes decoded at once for the textured reconstructions


@dataclass
class NeuroSQLModel:
    """A trained generator with everything needed to sample and to place samples in space."""

    folder: Path
    config: Config
    geometry: Geometry
    generator: TemplateOutput
    lattice: np.ndarray
    assignment: np.ndarray
    fingerprint: dict
    sha256: str
    device: torch.device
    label_names: list[str] | None = None  # tissue classes of the label maps it decodes, index 0 background
    condition: ConditionSpec | None = None  # a conditional model's covariates: it decodes G(u, c)
    training_conditions: np.ndarray | None = None  # (n, width) float32: c of each training sample
    texture: ResidualTexture | TissueTexture | RefinerTexture | None = None  # what fresh samples add to G(u) (engine/residual.py); None: nothing
    levels: SliceLevels | None = None  # a slice-aware model's: it decodes G(u, c, p) (engine/levels.py)
    training_levels: np.ndarray | None = None  # (n,) p of each training sample

    @property
    def latent_dim(self) -> int:
        return self.config.model.latent_dim

    @property
    def lattice_kind(self) -> str:
        return self.config.model.lattice

    def decode(
        self, z: np.ndarray | torch.Tensor, c: np.ndarray | None = None, levels: np.ndarray | None = None,
    ) -> torch.Tensor:
        """Latents (B, d) (with encoded conditions (B, width) for a conditional model) → images (B, 1, *sample_shape) in [0, 1], float32, on the CPU.

        A slice-aware model decodes each latent at its ``levels`` entry (relative slice
        levels in [0, 1]); given none, at a level drawn from the training distribution
        with the latent itself as the seed (`SliceLevels.of_latents`).
        """
        return self.decode_with_labels(z, c, levels)[0]

    @torch.no_grad()
    def decode_with_labels(
        self, z: np.ndarray | torch.Tensor, c: np.ndarray | None = None, levels: np.ndarray | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Latents → (images as `decode`, label maps (B, 1, *sample_shape) int64 argmax, or None when unlabelled)."""
        images, logits = split_output(self.generator(self._inputs(z, c, levels)).float().cpu())
        return images, None if logits is None else logits.argmax(1, keepdim=True)

    def _inputs(self, z: np.ndarray | torch.Tensor, c: np.ndarray | None, levels: np.ndarray | None) -> torch.Tensor:
        """What the generator reads: the latents, then the encoded covariates, then the encoded slice levels."""
        if (c is None) != (self.condition is None):
            raise ValueError("a conditional model decodes latents with their conditions, an unconditional one without")
        if levels is not None and self.levels is None:
            raise ValueError("levels are for a slice-aware model; this one was fit without model.slice_levels")
        parts = [np.asarray(z, dtype=np.float32)] + ([] if c is None else [np.asarray(c, dtype=np.float32)])
        if self.levels is not None:
            parts.append(self.levels.encode(self.levels.of_latents(np.asarray(z)) if levels is None else levels))
        return torch.as_tensor(np.concatenate(parts, axis=1), dtype=torch.float32, device=self.device)

    def sample(
        self, z: np.ndarray | torch.Tensor, seeds: Sequence[int], c: np.ndarray | None = None,
        levels: np.ndarray | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Fresh samples: `decode_with_labels`, then the residual texture, image b's drawn from ``seeds[b]``.

        Labels stay those of G(u, c): the texture is detail inside tissue, not a change of anatomy.
        """
        images, labels = self.decode_with_labels(z, c, levels)
        return (images if self.texture is None else self.texture.apply(images, seeds, labels)), labels

    def reconstructions(self) -> torch.Tensor:
        """G(u_σ(i)) for every training sample i: what the model learned for each real image."""
        return self.decode(self.lattice[self.assignment], self.training_conditions, self.training_levels)

    def sampled_reconstructions(self) -> torch.Tensor:
        """Each training code through the sampler, residual texture included: what the reconstruction C2ST compares,
        so that it measures the model's images and leaves only the draws of u to the samples' own C2ST."""
        n, b = len(self.assignment), DECODE_BATCH
        seeds = texture_seeds(0, range(n), stream=RECONSTRUCTION_STREAM)
        conditions, levels = self.training_conditions, self.training_levels
        return torch.cat([self.sample(self.lattice[self.assignment[i:i + b]], seeds[i:i + b],
                                      None if conditions is None else conditions[i:i + b],
                                      None if levels is None else levels[i:i + b])[0] for i in range(0, n, b)])

    def reconstructed_labels(self) -> torch.Tensor | None:
        """The label maps of the reconstructions (int64, (n, 1, *sample_shape)), or None when unlabelled."""
        return self.decode_with_labels(self.lattice[self.assignment], self.training_conditions, self.training_levels)[1]
