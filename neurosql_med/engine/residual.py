"""Residual texture: the fine detail and acquisition noise that a reconstruction loss averages away.

G is fitted by L1 + SSIM, so G(u) is the conditional mean of the images coded near u:
smoother than any real scan, and a classifier two-sample test tells every sample and
every reconstruction from a real image (AUC 1.0, `evaluation/c2st.py`). After a fit the
training residuals r_i = x_i - G(u_σ(i)) are summarised by two statistics (and a level, below):

- their power spectrum above ``cutoff`` cycles per voxel: below it the residual is
  anatomy the decoder placed differently, which a random field would only turn into blobs.
  With ``spectrum="lacking"`` the field's spectrum is instead the power the decoder lacks,
  P(x) - P(G(u_σ(i))), and the field is scaled to add that much: G's own high frequencies
  are partly misplaced detail, so x - G holds them twice (once as G's, once as x's), and a
  field with the residual's spectrum gave samples too much power near the Nyquist frequency
  (1.26x the real at 0.66 cycles per voxel) and too little below it. Measured on the realistic
  cohort (docs/results/generator-v2.md, "Where the strong classifier looks");
- the rms of that high-passed residual as a function of the decoded intensity and the
  local gradient magnitude of G(u): noise is stronger in tissue than in the background,
  and the decoder's misfit gathers at tissue borders, so the amplitude follows each
  sample's own anatomy rather than a fixed map.

A sample is G(u) plus ``strength`` times a Gaussian field with that spectrum, scaled
voxel by voxel by the amplitude looked up on G(u). Where G(u) is darker than
``background`` it stays G(u): skull-stripped scans are exactly 0 outside the brain, a
high-passed residual rings out of the brain's border into that background, and a
classifier sees any noise there at once. ``background`` is measured too: the decoded
intensity below which the training images are exactly 0 at least ``ZERO_SHARE`` of the
time (0 for scans whose background is not zeroed: their texture covers every voxel).

Only these summaries are kept, never a residual image, so no training subject's detail
reaches a sample. Each image's field comes from its own seed and its own FFT: its bytes
never depend on the batch.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from neurosql_med.errors import UserError

INTENSITY_EDGES = tuple(k / 10 for k in range(1, 10))  # decoded intensity bins: tenths of [0, 1]
GRADIENT_LEVELS = (0.5, 0.75, 0.9, 0.97)  # gradient-magnitude bins: these quantiles of the reconstructions'
QUANTILE_POINTS = 1 << 20  # voxels the gradient quantiles are estimated on (torch.quantile's input is bounded)
ZERO_SHARE = 0.95  # below `background`, this share of training voxels is exactly 0
BACKGROUND_STEP = 0.005  # the decoded-intensity resolution `background` is measured at
BACKGROUND_MAX = 0.1  # `background` is never above this: brighter voxels are tissue, whatever the scans say
STREAM = 0x7E7  # separates the texture's random stream from the latent draws of the same (seed, index)
RECONSTRUCTION_STREAM = 0x7E8  # the fields of reconstructions, apart from every synthesize run's
FORMAT = "nsql-med-texture/1"


@dataclass(frozen=True)
class ResidualTexture:
    """The fitted residual summaries and the strength they are added with."""

    filter: Tensor  # (*sample_shape) float32: sqrt of the normalised residual power spectrum, 0 below the cutoff
    gradient_edges: Tensor  # (len(GRADIENT_LEVELS),) float32
    amplitude: Tensor  # (len(INTENSITY_EDGES) + 1, len(GRADIENT_LEVELS) + 1) float32: high-passed residual rms per bin
    strength: float
    cutoff: float
    background: float  # decoded intensities below this keep G(u): the training scans are exactly 0 there

    def apply(self, images: Tensor, seeds: Sequence[int], labels: Tensor | None = None) -> Tensor:
        """``images`` (B, 1, *sample_shape) in [0, 1] with texture added, image b's field drawn from ``seeds[b]``.

        ``labels`` is not read: this texture is blind to the anatomy (engine/tissue_texture.py is not).
        """
        if len(seeds) != len(images):
            raise ValueError(f"{len(images)} images but {len(seeds)} seeds")
        out = torch.empty_like(images)
        for b, seed in enumerate(seeds):
            image = images[b:b + 1].float()
            textured = (image + self.strength * self.field(int(seed)) * self.amplitude_of(image)).clamp(0, 1)
            out[b] = torch.where(image < self.background, image, textured)[0]
        return out

    def field(self, seed: int) -> Tensor:
        """A unit-variance Gaussian field with the residual's spectrum, (1, 1, *sample_shape)."""
        generator = torch.Generator().manual_seed(seed)
        white = torch.randn(self.filter.shape, generator=generator)
        return torch.fft.ifftn(torch.fft.fftn(white) * self.filter).real[None, None]

    def amplitude_of(self, images: Tensor) -> Tensor:
        """The residual rms expected at each voxel of ``images``, from its intensity and gradient bin."""
        return self.amplitude[bins(images, self.gradient_edges)]

    def state(self) -> dict:
        """Tensors and numbers only: saved with `torch.save`, read back with ``weights_only=True``."""
        return {"format": FORMAT, "filter": self.filter, "gradient_edges": self.gradient_edges,
                "amplitude": self.amplitude, "strength": self.strength, "cutoff": self.cutoff,
                "background": self.background}

    @classmethod
    def from_state(cls, state: dict, sample_shape: Sequence[int], where: str) -> ResidualTexture:
        """The texture in ``state``, checked against the model's sample grid; a damaged one is a UserError."""
        expected = {"filter": tuple(sample_shape), "gradient_edges": (len(GRADIENT_LEVELS),),
                    "amplitude": (len(INTENSITY_EDGES) + 1, len(GRADIENT_LEVELS) + 1)}
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise UserError(f"{where}: not an nsql-med residual texture ({FORMAT})")
        return cls(state["filter"].float(), state["gradient_edges"].float(), state["amplitude"].float(),
                   *checked_state(state, expected, where))


def checked_state(state: dict, expected: dict[str, tuple[int, ...]], where: str) -> tuple[float, float, float]:
    """A saved texture's tensors checked against their ``expected`` shapes; its (strength, cutoff, background)."""
    for name, shape in expected.items():
        value = state.get(name)
        if not (isinstance(value, Tensor) and tuple(value.shape) == shape and value.is_floating_point()
                and torch.isfinite(value).all()):
            raise UserError(f"{where}: '{name}' must be a finite float tensor of shape {shape}")
    numbers = [state.get(k) for k in ("strength", "cutoff", "background")]
    if not all(isinstance(v, float) for v in numbers) or not (
            numbers[0] > 0 and 0 <= numbers[1] < 1 and 0 <= numbers[2] <= BACKGROUND_MAX):
        raise UserError(f"{where}: 'strength' must be a positive number, 'cutoff' one in [0, 1) and "
                        f"'background' one in [0, {BACKGROUND_MAX}]")
    return numbers[0], numbers[1], numbers[2]


def gradient_magnitude(images: Tensor) -> Tensor:
    """|∇x| by central differences along every spatial axis, (N, 1, *spatial)."""
    x = images.float()[:, 0]
    parts = torch.gradient(x, dim=tuple(range(1, x.ndim)))
    return torch.sqrt(sum(p.square() for p in parts))[:, None]


def bins(images: Tensor, gradient_edges: Tensor) -> tuple[Tensor, Tensor]:
    """(intensity bin, gradient bin) of every voxel: indices into the amplitude table."""
    return (torch.bucketize(images.float().contiguous(), torch.tensor(INTENSITY_EDGES)),
            torch.bucketize(gradient_magnitude(images).contiguous(), gradient_edges))


def frequency_radius(shape: Sequence[int]) -> Tensor:
    """|f| in cycles per voxel at every FFT bin of a grid of ``shape``."""
    grids = torch.meshgrid(*(torch.fft.fftfreq(n) for n in shape), indexing="ij")
    return torch.sqrt(sum(g.square() for g in grids))


def fit_texture(
    images: Tensor, reconstructions: Tensor, strength: float, cutoff: float, spectrum: str = "residual", batch: int = 64,
) -> ResidualTexture:
    """The residual texture of a fitted model, from its training images and their reconstructions G(u_σ(i)).

    Both are (N, 1, *sample_shape) on the CPU; they are read ``batch`` images at a time.
    ``spectrum``: "residual" (the residual's power spectrum) or "lacking" (P(x) - P(G), see the module's docstring).
    """
    shape = tuple(images.shape[2:])
    keep = (frequency_radius(shape) > cutoff).float()
    edges = gradient_quantiles(reconstructions, batch)
    power = torch.zeros(shape, dtype=torch.float64)
    lacking = torch.zeros(shape, dtype=torch.float64)  # sum of P(x) - P(G) per frequency
    cells = (len(INTENSITY_EDGES) + 1) * (len(GRADIENT_LEVELS) + 1)
    total, count = torch.zeros(cells, dtype=torch.float64), torch.zeros(cells, dtype=torch.float64)
    dims = tuple(range(1, len(shape) + 1))
    for start in range(0, len(images), batch):
        recon = reconstructions[start:start + batch].float()
        residual = torch.fft.fftn((images[start:start + batch].float() - recon)[:, 0], dim=dims) * keep
        power += residual.abs().square().sum(0).double()
        if spectrum == "lacking":
            lacking += (power_sum(images[start:start + batch]) - power_sum(recon)) * keep
        high = torch.fft.ifftn(residual, dim=dims).real[:, None]
        level, grad = bins(recon, edges)
        cell = (level * (len(GRADIENT_LEVELS) + 1) + grad).flatten()
        total.index_add_(0, cell, high.flatten().double().square())
        count.index_add_(0, cell, torch.ones_like(cell, dtype=torch.float64))
    overall = float(total.sum() / count.sum().clamp_min(1))
    amplitude = torch.where(count > 0, total / count.clamp_min(1), torch.tensor(overall)).sqrt()
    if spectrum == "lacking":
        lacking = lacking.clamp_min(0)
        amplitude = amplitude * float((lacking.sum() / power.sum().clamp_min(1e-30)).sqrt())  # add the power G lacks
        power = lacking
    normalised = power / power.mean().clamp_min(1e-30)  # a unit-variance white field filtered by it keeps unit variance
    return ResidualTexture(normalised.sqrt().float(), edges, amplitude.float().view(len(INTENSITY_EDGES) + 1, -1),
                           float(strength), float(cutoff), measured_background(images, reconstructions, batch))


def power_sum(images: Tensor) -> Tensor:
    """The sum over ``images`` (N, 1, *spatial) of their power spectra |FFT|^2, (*spatial) float64."""
    dims = tuple(range(1, images.ndim - 1))
    return torch.fft.fftn(images[:, 0].double(), dim=dims).abs().square().sum(0)


def measured_background(images: Tensor, reconstructions: Tensor, batch: int = 64) -> float:
    """The decoded intensity below which the training images are exactly 0 at least ``ZERO_SHARE`` of the time.

    It is the end of the first run of decoded-intensity steps where they are.
    """
    steps = round(BACKGROUND_MAX / BACKGROUND_STEP)
    zeros, dark = torch.zeros(steps, dtype=torch.float64), torch.zeros(steps, dtype=torch.float64)
    for start in range(0, len(images), batch):
        step = (reconstructions[start:start + batch].float() / BACKGROUND_STEP).long().flatten()
        inside = step < steps
        dark.index_add_(0, step[inside], torch.ones(int(inside.sum()), dtype=torch.float64))
        zeros.index_add_(0, step[inside], (images[start:start + batch] == 0).flatten()[inside].double())
    mostly_zero = (zeros >= ZERO_SHARE * dark) & (dark > 0)
    run = int(torch.cumprod(mostly_zero.long(), 0).sum())
    return run * BACKGROUND_STEP


def gradient_quantiles(reconstructions: Tensor, batch: int) -> Tensor:
    """Quantiles of the reconstructions' gradient magnitude, on an evenly strided subset of the voxels."""
    magnitudes = torch.cat([gradient_magnitude(reconstructions[i:i + batch]).flatten()
                            for i in range(0, len(reconstructions), batch)])
    subset = magnitudes[:: max(1, len(magnitudes) // QUANTILE_POINTS)]
    return torch.quantile(subset, torch.tensor(GRADIENT_LEVELS)).float()


def texture_seeds(seed: int, indices: Sequence[int] | np.ndarray, stream: int = STREAM) -> list[int]:
    """One field seed per latent index of a run with ``seed``: the same (seed, index) always draws the same field."""
    return [int(np.random.SeedSequence([stream, int(seed), int(i)]).generate_state(1, np.uint64)[0] >> 1)
            for i in indices]
