"""Classifier two-sample test (C2ST): can a CNN tell synthetic images from real ones?

Nearest-real distances average texture away; a classifier does not. A MONAI CNN sees
each image and its Laplacian (a high-pass channel, where mottling and blur live: without
it a CNN of this size could not even tell real slices from blurred ones) and learns to
separate the two sets. Folds are grouped by subject, so it is always scored on subjects
it never saw; every test is repeated over seeds (new folds, new weights) and reported as
mean ± sd. AUC 0.5: indistinguishable; 1: always told apart.

Two classifiers: ``fast`` (widths 8/16/16, 8 epochs, 2 seeds; seconds) and ``strong``
(widths 16/32/32, 24 epochs, 3 seeds; minutes on a CPU). The fast one is cheap enough to
run while a generator is tuned; the strong one is the judge, and a generator tuned
against the fast one may pass it and still fail the strong one.

Both sides are quantised as nsql-med writes files (int16, 4095 levels) so storage is
never the tell. A C2ST is only as good as its controls, so `c2st_section` always runs
two: two halves of the real subjects against each other (must score near 0.5) and the
real images against themselves blurred by a Gaussian of σ = 0.5 px (must score near 1).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics import compute_roc_auc
from monai.networks.blocks import Convolution
from monai.transforms import GaussianSmooth
from monai.utils import convert_to_tensor
from torch import Tensor, nn

from neurosql_med.evaluation.options import FAST, Classifier
from neurosql_med.evaluation.splits import split_subjects, subject_parts
from neurosql_med.evaluation.small_network import Schedule, train_small_network
from neurosql_med.io.nifti import INTENSITY_MAX

FOLDS = 4
BATCH = 32
LR = 3e-3
MAX_PER_SIDE = 200  # images per side a test trains on (a random subset beyond): bounds its time
BLUR_SIGMA = 0.5  # px: the blur control, the smallest blur a useful test must see
NULL_MAX = 0.65  # real-vs-real control: an AUC above this means the classifier sees differences that are not there
BLUR_MIN = 0.85  # blur control: an AUC below this means the classifier is blind to a half-pixel blur
ACT = ("leakyrelu", {"negative_slope": 0.2})


def quantised(images: Tensor) -> Tensor:
    """``images`` in [0, 1] rounded to the int16 levels a written NIfTI holds (`io.nifti.to_nifti`)."""
    return torch.round(images.float().clamp(0, 1) * INTENSITY_MAX) / INTENSITY_MAX


def laplacian(images: Tensor) -> Tensor:
    """The discrete Laplacian of (N, 1, *spatial) images, edges replicated: a high-pass channel."""
    dims = images.ndim - 2
    kernel = torch.zeros((3,) * dims)
    centre = (1,) * dims
    kernel[centre] = -2.0 * dims
    for axis in range(dims):
        for side in (0, 2):
            kernel[tuple(side if a == axis else 1 for a in range(dims))] = 1.0
    padded = F.pad(images.float(), (1, 1) * dims, mode="replicate")
    conv = F.conv2d if dims == 2 else F.conv3d
    return conv(padded, kernel[None, None])


def classifier(spatial_dims: int, width: int = FAST.width) -> nn.Module:
    """A small CNN over (image, Laplacian) → one logit; 3D starts strided so a volume stays cheap on a CPU.

    No normalisation layers: a score never depends on the rest of the batch.
    """
    first = 1 if spatial_dims == 2 else 2
    return nn.Sequential(
        Convolution(spatial_dims, 2, width, strides=first, kernel_size=3, act=ACT, norm=None),
        Convolution(spatial_dims, width, 2 * width, strides=2, kernel_size=3, act=ACT, norm=None),
        Convolution(spatial_dims, 2 * width, 2 * width, strides=2, kernel_size=3, act=ACT, norm=None),
        nn.AdaptiveAvgPool3d(1) if spatial_dims == 3 else nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * width, 1),
    )


def fold_of(groups_a: Sequence[str], groups_b: Sequence[str], folds: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A fold per sample of each side; all samples of a group (a subject) share one, on both sides.

    Groups only one side has are dealt round-robin within that side, so every fold holds
    both sides; groups both sides share (an image and its blurred copy) go together.
    """
    a, b = set(groups_a), set(groups_b)
    fold: dict[str, int] = {}
    for pool in (sorted(a & b), sorted(a - b), sorted(b - a)):
        for k, group in enumerate(rng.permutation(pool).tolist() if pool else []):
            fold[group] = k % folds
    return subject_parts(groups_a, fold), subject_parts(groups_b, fold)


def _inputs(images: Tensor) -> Tensor:
    return torch.cat([images, laplacian(images)], dim=1)


def _train(x: Tensor, y: Tensor, seed: int, spec: Classifier) -> nn.Module:
    """The classifier fitted to ``x`` (inputs, standardised) and ``y`` (1: second side), sides weighted equally."""
    positives = float(y.sum())
    weight = torch.tensor((len(y) - positives) / max(positives, 1.0))

    def loss(logits: Tensor, sides: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(logits[:, 0], sides, pos_weight=weight)

    schedule = Schedule(spec.epochs, BATCH, LR)
    return train_small_network(lambda: classifier(x.ndim - 2, spec.width), loss, schedule.passes(x, y),
                               lr=schedule.lr, seed=seed)


def _scores(
    a: Tensor, b: Tensor, fold_a: np.ndarray, fold_b: np.ndarray, folds: int, seed: int, spec: Classifier,
) -> tuple[Tensor, Tensor]:
    """Out-of-fold logits of every sample and its side (0: a, 1: b)."""
    x, y = _inputs(torch.cat([a, b])), torch.cat([torch.zeros(len(a)), torch.ones(len(b))])
    fold = torch.from_numpy(np.concatenate([fold_a, fold_b]))
    logits = torch.empty(len(x))
    for k in range(folds):
        test = fold == k
        train_x = x[~test]
        mean = train_x.mean(dim=(0, *range(2, x.ndim)), keepdim=True)[0]
        std = train_x.std(dim=(0, *range(2, x.ndim)), keepdim=True)[0].clamp_min(1e-6)
        net = _train((train_x - mean) / std, y[~test], seed * 1000 + k, spec)
        with torch.no_grad():
            logits[test] = net((x[test] - mean) / std)[:, 0]
    return logits, y


def _subset(images: Tensor, groups: Sequence[str], rng: np.random.Generator) -> tuple[Tensor, list[str]]:
    if len(images) <= MAX_PER_SIDE:
        return images, list(groups)
    keep = np.sort(rng.choice(len(images), MAX_PER_SIDE, replace=False))
    return images[keep], [groups[i] for i in keep]


def two_sample_test(
    a: Tensor, groups_a: Sequence[str], b: Tensor, groups_b: Sequence[str], *,
    folds: int = FOLDS, spec: Classifier = FAST, seed: int = 0,
) -> dict | None:
    """C2ST of image sets ``a`` and ``b`` (N, 1, *spatial) in [0, 1], grouped (e.g. by subject) for the folds.

    Returns AUC and balanced accuracy (each side weighted equally) of out-of-fold
    predictions, mean ± sd and range over the classifier's seeds, or None when either
    side has fewer than two groups (no fold split can keep a subject out of its own training).
    """
    folds = min(folds, len(set(groups_a)), len(set(groups_b)))
    if folds < 2:
        return None
    aucs, accuracies = [], []
    repeats = spec.repeats
    for r in range(repeats):
        rng = np.random.default_rng([seed, r])
        sub_a, ga = _subset(quantised(a), groups_a, rng)
        sub_b, gb = _subset(quantised(b), groups_b, rng)
        fold_a, fold_b = fold_of(ga, gb, folds, rng)
        logits, y = _scores(sub_a, sub_b, fold_a, fold_b, folds, seed * 100 + r, spec)
        aucs.append(float(compute_roc_auc(logits, y)))
        said = logits > 0
        accuracies.append(float((said[y == 1].float().mean() + (~said[y == 0]).float().mean()) / 2))
    return {
        "auc": float(np.mean(aucs)), "auc_std": float(np.std(aucs, ddof=1)) if repeats > 1 else 0.0, "aucs": aucs,
        "accuracy": float(np.mean(accuracies)), "accuracy_std": float(np.std(accuracies, ddof=1)) if repeats > 1 else 0.0,
        "auc_range": [min(aucs), max(aucs)], "n": [len(a), len(b)], "folds": folds, "repeats": repeats,
        "classifier": spec.name,
    }


def blurred(images: Tensor, sigma: float = BLUR_SIGMA) -> Tensor:
    """``images`` smoothed by a Gaussian of ``sigma`` pixels (the blur control)."""
    smooth = GaussianSmooth(sigma=sigma)
    return torch.stack([convert_to_tensor(smooth(image), track_meta=False) for image in images.float()])


def real_halves(subjects: Sequence[str], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices of two halves of the samples, split by subject (the real-vs-real control)."""
    names = sorted(set(subjects))
    return split_subjects(subjects, set(np.random.default_rng(seed).permutation(names)[: len(names) // 2].tolist()))


def controls(real: Tensor, subjects: Sequence[str], seed: int = 0, spec: Classifier = FAST) -> dict:
    """The two controls every C2ST is read with, and whether the classifier passed them."""
    one, two = real_halves(subjects, seed)
    null = two_sample_test(real[one], [subjects[i] for i in one], real[two], [subjects[i] for i in two], seed=seed, spec=spec)
    blur = two_sample_test(real, subjects, blurred(real), subjects, seed=seed, spec=spec)
    passed = None if null is None or blur is None else bool(null["auc"] <= NULL_MAX and blur["auc"] >= BLUR_MIN)
    return {"real_vs_real": null, "blur": blur, "blur_sigma": BLUR_SIGMA, "passed": passed,
            "null_max": NULL_MAX, "blur_min": BLUR_MIN}


def c2st_section(
    real: Tensor, subjects: Sequence[str], synth: Tensor, *, reconstructions: Tensor | None = None,
    decoded: Tensor | None = None, seed: int = 0, spec: Classifier = FAST,
) -> dict:
    """The report's C2ST: synthetic vs real, reconstructions G(u_σ(i)) vs their own real images, and the controls.

    Each synthetic image is its own group. The reconstruction of sample i shares its
    subject, so a subject's real images and their reconstructions are always in one fold.
    ``decoded``, the reconstructions without the residual texture, is tested too when given:
    a texture can hide a blurred decoder from the classifier, and this says how much.
    All tests use the one classifier ``spec``.
    """
    synthetic_groups = [f"synthetic-{i}" for i in range(len(synth))]
    test = dict(seed=seed, spec=spec)

    def against_own(images: Tensor | None) -> dict | None:
        return None if images is None else two_sample_test(real, subjects, images, subjects, **test)

    return {
        "synthetic": two_sample_test(real, subjects, synth, synthetic_groups, **test),
        "reconstruction": against_own(reconstructions),
        "reconstruction_decoder": against_own(decoded),
        "controls": controls(real, subjects, seed, spec),
        "settings": {
            "classifier": spec.describe(), **asdict(spec),
            "folds": FOLDS, "max_per_side": MAX_PER_SIDE,
            "grouped_by": "subject", "quantised": f"int16, {INTENSITY_MAX} levels, both sides",
            "accuracy": "balanced (each side weighted equally)",
        },
    }
