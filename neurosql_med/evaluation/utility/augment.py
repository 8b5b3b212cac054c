"""Classic augmentation: the MONAI random transforms a careful practitioner adds to a small training set.

The set and its ranges follow nnU-Net's default augmentation (rotation, scaling and an
elastic field in one spatial transform; Gaussian noise and blur; brightness, contrast and
gamma; simulated low resolution; mirroring), plus a bias field, which MRI needs; the
intensity transforms are MONAI's.
The left-right flip is the one flip brain anatomy allows (the hemispheres mirror each
other; up-down or front-back do not). ``strength`` scales every range and probability
together; its default was chosen once on the real arm (benchmarks/tune_classic.py,
docs/results/realistic.md) and is what every utility grid uses. Geometry moves image and
label map together (labels nearest); intensity transforms touch the image only. Every
batch is transformed sample by sample from one seeded random state, so a run sees the
same augmented batches every time.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandBiasFieldd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    RandSimulateLowResolutiond,
)
from torch import Tensor

LEFT_RIGHT = 0  # RAS: the first spatial axis runs left to right, in 2D axial slices and in 3D volumes
STRENGTH = 0.5  # chosen on the real arm (k = 4, 1000 steps): see the module docstring


def transforms_text(strength: float = STRENGTH) -> tuple[str, ...]:
    """What `ClassicAugmentation` applies at ``strength``, in order, as written to utility.json and utility.md."""
    r = _ranges(strength)
    return (
        "flip (left-right, p 0.5)",
        f"spatial (p {r['p_spatial']:.2f}: rotation ±{math.degrees(r['rotate']):.0f}°, scale ±{r['scale']:.0%}, "
        f"shift ±{r['shift']:.0f} voxels, elastic displacement up to {r['elastic']:.1f} voxels on a 12-voxel grid; "
        "labels nearest)",
        f"RandGaussianNoised (p {r['p_intensity']:.2f}, sd {r['noise']:.3f})",
        f"RandGaussianSmoothd (p {r['p_intensity']:.2f}, sigma 0.5-{r['blur']:.2f} voxels)",
        f"RandScaleIntensityd (p {r['p_intensity']:.2f}, brightness ±{r['brightness']:.0%})",
        f"RandAdjustContrastd (p {r['p_gamma']:.2f}, gamma {1 - r['gamma']:.2f}-{1 + 2 * r['gamma']:.2f})",
        f"RandBiasFieldd (p {r['p_gamma']:.2f}, degree 3, coefficients 0-{r['bias']:.2f})",
        f"RandSimulateLowResolutiond (p {r['p_intensity']:.2f}, zoom {1 - r['lowres']:.2f}-1)",
    )


def _ranges(strength: float) -> dict[str, float]:
    """nnU-Net's ranges at strength 1; probabilities capped at 1."""
    s = strength
    return {
        "p_spatial": min(1.0, 0.8 * s), "rotate": math.radians(15) * s, "scale": 0.15 * s, "shift": 4 * s,
        "elastic": 2.0 * s, "p_intensity": min(1.0, 0.2 * s), "noise": 0.03 * s, "blur": 0.5 + 0.5 * s,
        "brightness": 0.25 * s, "p_gamma": min(1.0, 0.3 * s), "gamma": min(0.3 * s, 0.6), "bias": 0.3 * s,
        "lowres": min(0.5 * s, 0.75),
    }


class ClassicAugmentation:
    """Callable on a batch: (images, label maps or None) -> the same, each sample randomly transformed.

    The flip and the spatial transform run on the whole batch at once (one `grid_sample`,
    a per-sample transform each): MONAI's per-sample elastic transform cost ~10 ms a 2D
    slice on one CPU thread, several times the downstream network's own step. The intensity
    transforms are MONAI's, sample by sample.
    """

    def __init__(self, spatial_dims: int, seed: int, strength: float = STRENGTH):
        self.ranges = _ranges(strength)
        self.generator = torch.Generator().manual_seed(seed)
        r = self.ranges
        self.intensity = Compose([
            RandGaussianNoised("image", prob=r["p_intensity"], std=r["noise"]),
            RandGaussianSmoothd("image", prob=r["p_intensity"], sigma_x=(0.5, r["blur"]), sigma_y=(0.5, r["blur"]),
                                sigma_z=(0.5, r["blur"])),
            RandScaleIntensityd("image", prob=r["p_intensity"], factors=r["brightness"]),
            RandAdjustContrastd("image", prob=r["p_gamma"], gamma=(1 - r["gamma"], 1 + 2 * r["gamma"])),
            RandBiasFieldd("image", prob=r["p_gamma"], degree=3, coeff_range=(0.0, r["bias"])),
            RandSimulateLowResolutiond("image", prob=r["p_intensity"], zoom_range=(1 - r["lowres"], 1.0),
                                       upsample_mode="bilinear" if spatial_dims == 2 else "trilinear"),
        ]).set_random_state(seed)

    def __call__(self, images: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Label maps ride along through the flip and the spatial transform (nearest) and come back as class indices."""
        images = images.float()
        flip = torch.rand(len(images), generator=self.generator) < 0.5
        images = torch.where(_per_sample(flip, images), images.flip(2 + LEFT_RIGHT), images)
        grid = spatial_grid(images.shape, self.ranges, self.generator)
        images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        images = torch.stack([torch.as_tensor(self.intensity({"image": x})["image"]).float() for x in images])
        images = images.as_subclass(Tensor).clamp(0, 1)
        if labels is None:
            return images, None
        labels = torch.where(_per_sample(flip, labels), labels.flip(2 + LEFT_RIGHT), labels).float()
        labels = F.grid_sample(labels, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        return images, labels.round().long()


def _per_sample(mask: Tensor, like: Tensor) -> Tensor:
    return mask.view(-1, *[1] * (like.ndim - 1))


def spatial_grid(shape: torch.Size, r: dict[str, float], generator: torch.Generator) -> Tensor:
    """Sampling grids for a batch: rotation, isotropic scaling, shift and a smooth elastic field per sample.

    Built in voxel units, then mapped to `grid_sample`'s [-1, 1] coordinates, so rotations
    stay rigid on non-square grids. A sample the transform skips (probability
    ``p_spatial``) gets the identity grid.
    """
    n, dims, sizes = shape[0], len(shape) - 2, torch.tensor(shape[2:], dtype=torch.float32).flip(0)  # grid order: x=last
    rotation = _rotations(n, dims, r["rotate"], generator)
    scale = 1 + (torch.rand(n, generator=generator) * 2 - 1) * r["scale"]
    shift = (torch.rand(n, dims, generator=generator) * 2 - 1) * r["shift"] * 2 / sizes
    apply = torch.rand(n, generator=generator) < r["p_spatial"]
    half = torch.diag(sizes / 2)
    linear = torch.linalg.inv(half) @ (rotation / scale.view(-1, 1, 1)) @ half
    eye = torch.eye(dims).expand(n, dims, dims)
    theta = torch.cat([torch.where(apply.view(-1, 1, 1), linear, eye),
                       torch.where(apply.view(-1, 1), shift, 0.0).unsqueeze(-1)], dim=2)
    grid = F.affine_grid(theta, list(shape), align_corners=False)
    coarse = [max(2, s // 12) for s in shape[2:]]
    noise = torch.randn(n, dims, *coarse, generator=generator)
    magnitude = torch.rand(n, generator=generator) * r["elastic"] * apply
    field = F.interpolate(noise, size=list(shape[2:]), mode="bilinear" if dims == 2 else "trilinear",
                          align_corners=True)
    field = field * magnitude.view(-1, *[1] * (dims + 1)) * 2 / sizes.view(1, dims, *[1] * dims)
    return grid + field.movedim(1, -1)


def _rotations(n: int, dims: int, limit: float, generator: torch.Generator) -> Tensor:
    """Random rotation matrices: one angle in 2D, three (about each axis, composed) in 3D."""
    angles = (torch.rand(n, 1 if dims == 2 else 3, generator=generator) * 2 - 1) * limit
    out = torch.eye(dims).repeat(n, 1, 1)
    planes = [(0, 1)] if dims == 2 else [(1, 2), (0, 2), (0, 1)]
    for k, (i, j) in enumerate(planes):
        c, s = torch.cos(angles[:, k]), torch.sin(angles[:, k])
        step = torch.eye(dims).repeat(n, 1, 1)
        step[:, i, i], step[:, i, j], step[:, j, i], step[:, j, j] = c, -s, s, c
        out = out @ step
    return out
