"""How good, how varied and how original a synthetic cohort is, measured against real images.

Every function takes image batches shaped (N, 1, *spatial) with values in [0, 1] (2D
slices or 3D volumes) and works on whole distance matrices, never on Python loops over
pairs. The image distance throughout is the mean absolute pixel difference (MAE), the
"mean pixel distance" of the NeuroSQL paper, so every number reads in intensity units.
Distance matrices are the expensive part (all pairs of images), so the functions that
need one accept it precomputed: `evaluate` computes each matrix once and shares it.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from monai.metrics import MultiScaleSSIMMetric, PSNRMetric, SSIMMetric
from torch import Tensor

from neurosql_med.errors import UserError
from neurosql_med.options import TAU  # the copy threshold's default: --tau of synthesize and evaluate

# Identical images have infinite PSNR; 100 dB is above anything a file can hold (int16
# storage at 4095 levels alone limits it to ~83 dB), so the cap only replaces infinity.
PSNR_CAP = 100.0
SSIM_WINDOW = 7  # the training loss's default window (config loss.ssim_window)
SSIM_SIGMA = 1.5
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, finest scale first
MS_SSIM_SCALES = 3
DIVERSITY_PAIRS = 300
PRDC_K = 5
FEATURE_EXTRACTOR = "random-conv-v1"
FEATURE_WIDTHS = (16, 32, 64, 128)
FEATURE_SEED = 0
# Voxels of image pairs filtered at once by SSIM-type metrics: bounds memory for 3D volumes.
PAIR_VOXEL_BUDGET = 1 << 23


def pairwise_mae(a: Tensor, b: Tensor | None = None, chunk: int = 128) -> Tensor:
    """(len(a), len(b)) mean absolute pixel distances; ``b=None`` means ``a`` against itself.

    Rows go through ``torch.cdist(p=1)`` ``chunk`` at a time, which bounds its working
    memory. Against itself only the upper triangle of blocks is computed and mirrored,
    which cuts the largest matrix an evaluation needs (real against real) by about a third.
    """
    x = a.flatten(1).float()
    if b is None:
        n = len(x)
        out = x.new_empty((n, n))
        for i in range(0, n, chunk):
            block = torch.cdist(x[i:i + chunk], x[i:], p=1)
            out[i:i + chunk, i:] = block
            out[i:, i:i + chunk] = block.T
        return out / x.shape[1]
    y = b.flatten(1).float()
    return torch.cat([torch.cdist(x[i:i + chunk], y, p=1) for i in range(0, len(x), chunk)]) / x.shape[1]


def nearest_other(d_self: Tensor) -> Tensor:
    """Each sample's distance to its nearest *other* sample of the same set (diagonal excluded)."""
    eye = torch.eye(len(d_self), dtype=torch.bool, device=d_self.device)
    return d_self.masked_fill(eye, math.inf).min(dim=1).values


def _window(shape: tuple[int, ...], cap: int) -> int:
    """The largest odd window up to ``cap`` that fits in the smallest side."""
    w = min(cap, min(shape))
    return w if w % 2 else w - 1


def ssim_window(shape: tuple[int, ...]) -> int:
    """SSIM's window for images of ``shape``: the training loss's 7, or less where a side is shorter."""
    return _window(shape, SSIM_WINDOW)


def ms_ssim_settings(shape: tuple[int, ...]) -> tuple[int, int]:
    """(scales, window) for MS-SSIM on images of ``shape``.

    The standard 5 scales with an 11-pixel window need sides over 160 pixels; these
    samples are 24-80 pixels a side. Three scales (each halves the image) with a window
    of at most 7 fit from 28 pixels up (64x80 keeps 16x20 at the coarsest scale); smaller
    sides shrink the window to what MONAI's size check allows (side // 4 >= window), and
    below 12 pixels MS-SSIM falls back to one scale, i.e. plain SSIM.
    """
    side = min(shape)
    if side >= 12:
        return MS_SSIM_SCALES, _window((side // 4,), SSIM_WINDOW)
    return 1, ssim_window(shape)


def _paired(metric: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor) -> Tensor:
    """Per-pair values of a MONAI image metric, a memory-bounded batch of pairs at a time."""
    step = max(1, PAIR_VOXEL_BUDGET // x[0].numel())
    return torch.cat([metric(x[i:i + step].float(), y[i:i + step].float()).flatten() for i in range(0, len(x), step)])


def ssim(x: Tensor, y: Tensor) -> Tensor:
    """Per-pair SSIM (Gaussian window of at most 7, data range 1), MONAI's definition."""
    metric = SSIMMetric(spatial_dims=x.ndim - 2, data_range=1.0, win_size=ssim_window(tuple(x.shape[2:])),
                        kernel_sigma=SSIM_SIGMA, reduction="none")
    return _paired(metric, x, y)


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """Per-pair PSNR in dB for data range 1, capped at ``PSNR_CAP`` for identical pairs."""
    return _paired(PSNRMetric(max_val=1.0, reduction="none"), x, y).clamp(max=PSNR_CAP)


def ms_ssim(x: Tensor, y: Tensor) -> Tensor:
    """Per-pair MS-SSIM with the scales and window of :func:`ms_ssim_settings`."""
    scales, window = ms_ssim_settings(tuple(x.shape[2:]))
    weights = torch.tensor(MS_SSIM_WEIGHTS[:scales])
    metric = MultiScaleSSIMMetric(spatial_dims=x.ndim - 2, data_range=1.0, kernel_size=window,
                                  kernel_sigma=SSIM_SIGMA, weights=tuple((weights / weights.sum()).tolist()),
                                  reduction="none")
    return _paired(metric, x, y)


def fidelity(synth: Tensor, real: Tensor, d: Tensor | None = None) -> dict:
    """How close each synthetic sample is to its nearest real one (lower MAE, higher SSIM/PSNR: closer).

    ``d`` is ``pairwise_mae(synth, real)`` when already computed.
    """
    d = pairwise_mae(synth, real) if d is None else d
    mae, nearest = d.min(dim=1)
    matched = real[nearest]
    return {
        "mae": float(mae.mean()),
        "ssim": float(ssim(synth, matched).mean()),
        "psnr": float(psnr(synth, matched).mean()),
    }


def coverage(real: Tensor, synth: Tensor, d_sr: Tensor | None = None, d_rr: Tensor | None = None) -> dict:
    """How well the synthetic set reaches every real sample.

    ``covered`` is the fraction of real samples with a synthetic sample nearer than their
    nearest other real sample: a generator that reproduces only part of the anatomy
    leaves the rest uncovered however good each of its images is. ``d_sr`` is
    ``pairwise_mae(synth, real)``, ``d_rr`` is ``pairwise_mae(real)``.
    """
    d_sr = pairwise_mae(synth, real) if d_sr is None else d_sr
    d_rr = pairwise_mae(real) if d_rr is None else d_rr
    to_synth = d_sr.min(dim=0).values
    return {"mae": float(to_synth.mean()), "covered": float((to_synth < nearest_other(d_rr)).float().mean())}


def _pairs(n: int, limit: int, seed: int) -> tuple[Tensor, Tensor]:
    """All pairs i < j when there are at most ``limit``, else ``limit`` seeded random pairs of distinct images."""
    if n * (n - 1) // 2 <= limit:
        i, j = torch.triu_indices(n, n, offset=1)
        return i, j
    gen = torch.Generator().manual_seed(seed)
    i = torch.randint(n, (limit,), generator=gen)
    return i, (i + torch.randint(1, n, (limit,), generator=gen)) % n


def mean_ms_ssim(images: Tensor, limit: int = DIVERSITY_PAIRS, seed: int = 0) -> tuple[float | None, int]:
    """Mean MS-SSIM over (a fixed sample of) pairs within one set, and the number of pairs."""
    i, j = _pairs(len(images), limit, seed)
    if len(i) == 0:
        return None, 0
    return float(ms_ssim(images[i], images[j]).mean()), len(i)


def diversity(synth: Tensor, real: Tensor, limit: int = DIVERSITY_PAIRS, seed: int = 0) -> dict:
    """Mean pairwise MS-SSIM within each set (1: all alike) and their ratio synthetic / real.

    A ratio above 1 means the synthetic samples resemble one another more than real
    scans do (mode collapse); near 1 means the real variety is kept.
    """
    synth_value, synth_pairs = mean_ms_ssim(synth, limit, seed)
    real_value, real_pairs = mean_ms_ssim(real, limit, seed)
    scales, window = ms_ssim_settings(tuple(real.shape[2:]))
    ratio = synth_value / real_value if synth_value is not None and real_value else None
    return {
        "ms_ssim_synthetic": synth_value,
        "ms_ssim_real": real_value,
        "ratio": ratio,
        "pairs_synthetic": synth_pairs,
        "pairs_real": real_pairs,
        "ms_ssim_scales": scales,
        "ms_ssim_window": window,
    }


@torch.no_grad()
def random_conv_features(images: Tensor, seed: int = FEATURE_SEED, batch: int = 64) -> Tensor:
    """Features from a fixed, randomly initialised convolutional network (``FEATURE_EXTRACTOR``).

    Naeem et al. (2020, sec. 5) found precision/recall/density/coverage on randomly
    initialised CNN embeddings to track sample quality and diversity; a random network
    needs no download, is not trained on natural photographs that look nothing like MRI,
    and does not depend on which real images are evaluated (unlike a PCA fitted to them),
    so scores from different runs share one feature space. Four 3x3(x3) stride-2
    convolutions (widths 16-32-64-128, He-normal weights from ``seed``, ReLU), then average
    pooling onto a 2x2(x2) grid that keeps the coarse layout (which slice level, which side):
    512 features in 2D, 1024 in 3D.
    """
    dims = images.ndim - 2
    conv = F.conv2d if dims == 2 else F.conv3d
    gen = torch.Generator().manual_seed(seed)
    weights, inputs = [], 1
    for width in FEATURE_WIDTHS:
        fan_in = inputs * 3**dims
        weights.append(torch.randn((width, inputs) + (3,) * dims, generator=gen) * math.sqrt(2 / fan_in))
        inputs = width
    pool = F.adaptive_avg_pool2d if dims == 2 else F.adaptive_avg_pool3d
    out = []
    for start in range(0, len(images), batch):
        x = images[start:start + batch].float()
        for w in weights:
            x = F.relu(conv(x, w, stride=2, padding=1))
        out.append(pool(x, 2).flatten(1))
    return torch.cat(out)


def mmd2(real_f: Tensor, synth_f: Tensor) -> float:
    """Unbiased squared MMD with a Gaussian kernel; bandwidth: median real-real feature distance.

    MONAI's ``MMDMetric`` does not fit here: it needs equally many real and synthetic
    samples (evaluations compare e.g. 500 against 1000) and uses a linear kernel, which
    only compares the two means. The Gaussian kernel compares whole distributions; fixing
    its bandwidth on the real set keeps the synthetic set from moving the yardstick. Being
    unbiased, the estimate scatters around 0 for matching sets and can be slightly negative.
    """
    d_rr, d_ss, d_sr = (torch.cdist(a, b) for a, b in ((real_f, real_f), (synth_f, synth_f), (synth_f, real_f)))
    off = ~torch.eye(len(real_f), dtype=torch.bool)
    gamma = 1 / (2 * d_rr[off].median().clamp_min(1e-12) ** 2)
    k_rr, k_ss, k_sr = (torch.exp(-gamma * d**2) for d in (d_rr, d_ss, d_sr))
    m, n = len(real_f), len(synth_f)
    within = (k_rr.sum() - k_rr.trace()) / (m * (m - 1)) + (k_ss.sum() - k_ss.trace()) / (n * (n - 1))
    return float(within - 2 * k_sr.mean())


def prdc(real_f: Tensor, synth_f: Tensor, k: int = PRDC_K) -> dict:
    """Precision, recall, density and coverage of Naeem et al. 2020 with k nearest neighbours.

    Each real feature gets a ball reaching its k-th nearest real neighbour. Precision:
    fraction of synthetic samples inside some real ball (realism). Recall: fraction of
    real samples inside some synthetic ball (variety). Density: mean number of real balls
    holding a synthetic sample, over k (about 1 for matching distributions; (k+1)/k for
    identical sets). Coverage: fraction of real balls holding a synthetic sample.
    """
    d_rr, d_ss, d_sr = torch.cdist(real_f, real_f), torch.cdist(synth_f, synth_f), torch.cdist(synth_f, real_f)
    real_radius = d_rr.kthvalue(k + 1, dim=1).values  # the 1st is the sample itself
    synth_radius = d_ss.kthvalue(k + 1, dim=1).values
    inside = d_sr <= real_radius[None, :]  # (synthetic, real)
    return {
        "precision": float(inside.any(dim=1).float().mean()),
        "recall": float((d_sr <= synth_radius[:, None]).any(dim=0).float().mean()),
        "density": float(inside.sum() / (k * len(synth_f))),
        "coverage": float((d_sr.min(dim=0).values <= real_radius).float().mean()),
    }


def distribution(real: Tensor, synth: Tensor, k: int = PRDC_K) -> dict:
    """Set-level agreement of real and synthetic images in the ``FEATURE_EXTRACTOR`` space.

    ``k`` shrinks to fit sets with fewer than k + 1 samples; the value used is returned.
    """
    real_f, synth_f = random_conv_features(real), random_conv_features(synth)
    k = max(1, min(k, len(real_f) - 1, len(synth_f) - 1))
    return {"feature_extractor": FEATURE_EXTRACTOR, "k": k, "mmd2": mmd2(real_f, synth_f), **prdc(real_f, synth_f, k)}


def check_tau(tau: float) -> None:
    """The one rule for the copy threshold: a NaN would flag nothing and write NaN into every report."""
    if not (math.isfinite(tau) and tau > 0):
        raise UserError(f"--tau must be positive and finite, got {tau}")


def audit(train: Tensor, synth: Tensor, tau: float = TAU, d_st: Tensor | None = None, d_tt: Tensor | None = None) -> dict:
    """Flag synthetic samples that sit closer to a training sample than training samples sit to each other.

    d_syn (each synthetic sample's MAE to its nearest training sample) is divided by the
    median of d_train (each training sample's MAE to its nearest other one): the cohort's
    own spacing is the yardstick, so the test reads the same for smooth 3D volumes and
    noisy slices. A ratio below ``tau`` flags a likely copy. ``train_fraction_below_tau``
    is the share of training samples that close to another training sample: the flagged
    share a generator of genuinely new samples can be expected to show. ``d_st`` is
    ``pairwise_mae(synth, train)``, ``d_tt`` is ``pairwise_mae(train)``. Everything
    returned is plain Python, ready for JSON.
    """
    d_st = pairwise_mae(synth, train) if d_st is None else d_st
    d_tt = pairwise_mae(train) if d_tt is None else d_tt
    d_syn, nearest = d_st.min(dim=1)
    d_train = nearest_other(d_tt)
    scale = d_train.median().clamp_min(torch.finfo(d_train.dtype).eps)
    ratios = d_syn / scale
    flagged = torch.nonzero(ratios < tau).flatten()
    return {
        "tau": tau,
        "median_d_train": float(scale),
        "n_flagged": len(flagged),
        "fraction_flagged": len(flagged) / len(ratios),
        "ratio_min": float(ratios.min()),
        "ratio_median": float(ratios.median()),
        "train_fraction_below_tau": float((d_train / scale < tau).float().mean()),
        "flagged": flagged.tolist(),
        "ratios": ratios.tolist(),
        "nearest": nearest.tolist(),
        "train_ratios": (d_train / scale).tolist(),
    }
