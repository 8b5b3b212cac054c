"""Sharpness and texture: how much high-frequency energy synthetic images carry next to real ones.

Mottling shows as excess power at middle frequencies, blur as missing power at the
highest: both hide inside a nearest-real MAE. The radial power spectrum averages
|FFT|² of each mean-subtracted image over rings of equal spatial frequency (cycles per
pixel, 0.5 = Nyquist); the ratios compare synthetic with real (1 = same).
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor

from neurosql_med.viz.plots import save_figure

BINS = 16  # rings between 0 and the Nyquist frequency
CUTOFF = 0.25  # cycles per pixel: "high frequency" is above half of Nyquist


def radial_power(images: Tensor, bins: int = BINS) -> tuple[np.ndarray, np.ndarray]:
    """(ring centres in cycles/pixel, mean power per ring) of (N, 1, *spatial) images; corners past Nyquist left out."""
    spatial = images.shape[2:]
    x = images.float()[:, 0]
    x = x - x.mean(dim=tuple(range(1, x.ndim)), keepdim=True)
    power = torch.fft.fftn(x, dim=tuple(range(1, x.ndim))).abs().square().mean(0) / np.prod(spatial)
    grids = torch.meshgrid(*(torch.fft.fftfreq(n) for n in spatial), indexing="ij")
    radius = torch.sqrt(sum(g.square() for g in grids))
    edges = torch.linspace(0, 0.5, bins + 1)
    ring = torch.bucketize(radius.flatten(), edges[1:-1])
    inside = radius.flatten() <= 0.5
    totals = torch.zeros(bins, dtype=torch.float64).index_add_(0, ring[inside], power.flatten()[inside].double())
    counts = torch.bincount(ring[inside], minlength=bins).clamp_min(1)
    return ((edges[:-1] + edges[1:]) / 2).numpy(), (totals / counts).numpy()


def mean_gradient(images: Tensor) -> float:
    """Mean gradient magnitude (central differences, intensity per pixel): a sharpness score."""
    x = images.float()[:, 0]
    parts = torch.gradient(x, dim=tuple(range(1, x.ndim)))
    return float(torch.sqrt(sum(p.square() for p in parts)).mean())


def texture(real: Tensor, synth: Tensor, cutoff: float = CUTOFF) -> dict:
    """Synthetic over real: power above ``cutoff`` cycles/pixel and mean gradient magnitude, with both spectra."""
    freqs, p_real = radial_power(real)
    _, p_synth = radial_power(synth)
    high = freqs > cutoff
    return {
        "high_frequency_ratio": float(p_synth[high].sum() / max(p_real[high].sum(), 1e-30)),
        "gradient_ratio": mean_gradient(synth) / max(mean_gradient(real), 1e-30),
        "cutoff": cutoff,
        "frequencies": freqs.tolist(),
        "power_real": p_real.tolist(),
        "power_synthetic": p_synth.tolist(),
    }


def spectrum_picture(path: Path, tex: dict) -> None:
    """spectrum.png: both radial power spectra (log scale) above their ratio; mottling is a bump, blur a drop."""
    freqs = np.asarray(tex["frequencies"])
    real, synth = np.asarray(tex["power_real"]), np.asarray(tex["power_synthetic"])
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.4, 5.6), sharex=True)
    top.semilogy(freqs, real, "o-", label="real")
    top.semilogy(freqs, synth, "s-", label="synthetic")
    top.set_ylabel("mean power")
    top.legend(fontsize=8)
    top.set_title(f"radial power spectrum; power above {tex['cutoff']:g} cycles/px: "
                  f"synthetic / real = {tex['high_frequency_ratio']:.3g}", fontsize=9)
    bottom.plot(freqs, synth / np.maximum(real, 1e-30), "k.-")
    bottom.axhline(1.0, color="grey", linestyle="--", linewidth=0.8)
    bottom.axvline(tex["cutoff"], color="red", linestyle=":", linewidth=0.8)
    bottom.set_yscale("log")
    bottom.set_xlabel("spatial frequency (cycles per pixel; 0.5 = Nyquist)")
    bottom.set_ylabel("synthetic / real")
    fig.tight_layout()
    save_figure(fig, path)
