"""Residual texture per tissue (``model.texture_mode: tissue``): detail that follows the anatomy it lies in.

The global texture (engine/residual.py) draws one Gaussian field for the whole image,
with one spectrum, and scales it by the decoded intensity and edge strength: the same
mottle in cortex, white matter and CSF, and strongest at tissue borders, where the
training residual is mostly the decoder placing a border a voxel off. Added to a sample
whose label map is G's, that border noise moves the visible border away from the label's.

Here the residual statistics are kept per tissue class k (the label classes of a
labelled model, the decoded intensity bins otherwise), each from the voxels where the
training label and G's label agree on k only (the residual is zeroed elsewhere before
it is high-passed), so misplaced borders do not count as detail: per class, the power spectrum of the high-passed residual and its rms per
gradient bin. A sample's field is one white-noise draw filtered by every class's
spectrum, each used inside its class's voxels of the sample's own label map (or
intensity bins), scaled by that class's amplitude. The background rule, the cutoff and
the seeding are the global texture's.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from neurosql_med.engine.residual import (
    GRADIENT_LEVELS, INTENSITY_EDGES, checked_state,
    frequency_radius, gradient_magnitude, gradient_quantiles, measured_background,
)
from neurosql_med.errors import UserError

FORMAT = "nsql-med-texture/2"


@dataclass(frozen=True)
class TissueTexture:
    """The per-class residual summaries and the strength they are added with."""

    filters: Tensor  # (K, *sample_shape) float32: per class, sqrt of its normalised residual power spectrum
    gradient_edges: Tensor  # (len(GRADIENT_LEVELS),) float32
    amplitude: Tensor  # (K, len(GRADIENT_LEVELS) + 1) float32: per class, high-passed residual rms per gradient bin
    strength: float
    cutoff: float
    background: float  # decoded intensities below this keep G(u)
    labelled: bool  # classes are label classes (True) or decoded intensity bins (False)

    def apply(self, images: Tensor, seeds: Sequence[int], labels: Tensor | None = None) -> Tensor:
        """``images`` (B, 1, *sample_shape) in [0, 1] with texture added inside each voxel's class, from ``seeds[b]``."""
        if len(seeds) != len(images):
            raise ValueError(f"{len(images)} images but {len(seeds)} seeds")
        if self.labelled and labels is None:
            raise ValueError("a labelled model's tissue texture needs the samples' label maps")
        out = torch.empty_like(images)
        for b, seed in enumerate(seeds):
            image = images[b:b + 1].float()
            classes = self.classes(image, None if labels is None else labels[b:b + 1])
            grad = torch.bucketize(gradient_magnitude(image).contiguous(), self.gradient_edges)
            noise = self.field(int(seed), classes) * self.amplitude[classes, grad]
            textured = (image + self.strength * noise).clamp(0, 1)
            out[b] = torch.where(image < self.background, image, textured)[0]
        return out

    def classes(self, image: Tensor, labels: Tensor | None) -> Tensor:
        """Each voxel's class: its label, or its decoded intensity bin for an unlabelled model."""
        if self.labelled:
            return labels.long().clamp(0, len(self.filters) - 1)
        return torch.bucketize(image.contiguous(), torch.tensor(INTENSITY_EDGES))

    def field(self, seed: int, classes: Tensor) -> Tensor:
        """One white-noise draw, filtered by each present class's spectrum inside that class: (1, 1, *sample_shape)."""
        white = torch.fft.fftn(torch.randn(self.filters.shape[1:], generator=torch.Generator().manual_seed(seed)))
        field = torch.zeros(classes.shape)
        for k in torch.unique(classes).tolist():
            field = torch.where(classes == k, torch.fft.ifftn(white * self.filters[k]).real, field)
        return field

    def state(self) -> dict:
        """Tensors and numbers only: saved with `torch.save`, read back with ``weights_only=True``."""
        return {"format": FORMAT, "filters": self.filters, "gradient_edges": self.gradient_edges,
                "amplitude": self.amplitude, "strength": self.strength, "cutoff": self.cutoff,
                "background": self.background, "labelled": self.labelled}

    @classmethod
    def from_state(cls, state: dict, sample_shape: Sequence[int], num_labels: int, where: str) -> TissueTexture:
        """The texture in ``state``, checked against the model's grid and classes; a damaged one is a UserError."""
        labelled = state.get("labelled") if isinstance(state, dict) else None
        if not isinstance(labelled, bool) or labelled != (num_labels > 0):
            raise UserError(f"{where}: 'labelled' must be true for a labelled model and false otherwise")
        k = num_labels if labelled else len(INTENSITY_EDGES) + 1
        expected = {"filters": (k, *sample_shape), "gradient_edges": (len(GRADIENT_LEVELS),),
                    "amplitude": (k, len(GRADIENT_LEVELS) + 1)}
        return cls(state["filters"].float(), state["gradient_edges"].float(), state["amplitude"].float(),
                   *checked_state(state, expected, where), labelled)


@dataclass
class _Sums:
    """Running per-class sums over the training images."""

    power: Tensor  # (K, *shape) float64
    total: Tensor  # (K, G + 1): squared high-passed residual per class and gradient bin
    count: Tensor  # (K, G + 1): voxels


def fit_tissue_texture(
    images: Tensor, reconstructions: Tensor, strength: float, cutoff: float,
    labels: Tensor | None = None, decoded_labels: Tensor | None = None, num_labels: int = 0, batch: int = 64,
) -> TissueTexture:
    """The per-tissue texture of a fitted model, from its training images and their reconstructions G(u_σ(i)).

    With ``labels`` (the training label maps) and ``decoded_labels`` (G's, argmax) the
    classes are the ``num_labels`` label classes, counted where both agree; without, the
    reconstructions' intensity bins. All (N, 1, *sample_shape) on the CPU, read ``batch`` images at a time.
    """
    shape = tuple(images.shape[2:])
    labelled = labels is not None
    k = num_labels if labelled else len(INTENSITY_EDGES) + 1
    keep = (frequency_radius(shape) > cutoff).float()
    edges = gradient_quantiles(reconstructions, batch)
    cells = (k, len(GRADIENT_LEVELS) + 1)
    sums = _Sums(torch.zeros((k, *shape), dtype=torch.float64), torch.zeros(cells, dtype=torch.float64),
                 torch.zeros(cells, dtype=torch.float64))
    for start in range(0, len(images), batch):
        part = slice(start, start + batch)
        classes = _classes(reconstructions[part], None if not labelled else (labels[part], decoded_labels[part]))
        _add(sums, images[part].float(), reconstructions[part].float(), classes, keep, edges)
    overall = sums.total.sum() / sums.count.sum().clamp_min(1)
    per_class = sums.total.sum(1, keepdim=True) / sums.count.sum(1, keepdim=True).clamp_min(1)
    per_class = torch.where(sums.count.sum(1, keepdim=True) > 0, per_class, overall)
    amplitude = torch.where(sums.count > 0, sums.total / sums.count.clamp_min(1), per_class).sqrt()
    mean_power = sums.power.flatten(1).mean(1).clamp_min(1e-30).view(k, *(1,) * len(shape))
    filters = torch.where(sums.power.flatten(1).sum(1).view_as(mean_power) > 0, sums.power / mean_power, keep.double())
    return TissueTexture(filters.sqrt().float(), edges, amplitude.float(), float(strength), float(cutoff),
                         measured_background(images, reconstructions, batch), labelled)


def _classes(recon: Tensor, maps: tuple[Tensor, Tensor] | None) -> Tensor:
    """Each voxel's class for the sums; -1 where the training label and G's label disagree."""
    if maps is None:
        return torch.bucketize(recon.float().contiguous(), torch.tensor(INTENSITY_EDGES))
    true, decoded = maps
    return torch.where(true == decoded, true.long(), torch.full_like(true, -1, dtype=torch.long))


def _add(sums: _Sums, images: Tensor, recon: Tensor, classes: Tensor, keep: Tensor, edges: Tensor) -> None:
    """One batch's residual spectra and amplitudes, per class."""
    dims = tuple(range(1, images.ndim - 1))
    residual = torch.where(classes >= 0, images - recon, 0.0)[:, 0]  # a misplaced border must not ring into its neighbours
    high = torch.fft.ifftn(torch.fft.fftn(residual, dim=dims) * keep, dim=dims).real
    grad = torch.bucketize(gradient_magnitude(recon).contiguous(), edges)[:, 0]
    cls = classes[:, 0]
    for k in range(len(sums.power)):
        inside = cls == k
        if inside.any():
            sums.power[k] += torch.fft.fftn(high * inside, dim=dims).abs().square().sum(0).double()
            sums.total[k].index_add_(0, grad[inside], high[inside].double().square())
            sums.count[k].index_add_(0, grad[inside], torch.ones(int(inside.sum()), dtype=torch.float64))
