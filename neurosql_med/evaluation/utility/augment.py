"""Classic augmentation: the MONAI random transforms a careful practitioner adds to a small training set.

The set and its ranges follow nnU-Net's default augmentation (rotation, scaling and an
elastic field in one spatial transform; Gaussian noise and blur; brightness, contrast and
gamma; simulated low resolution; mirroring), plus MONAI's bias field, which MRI needs.
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
from monai.transforms import (
    Compose,
    Rand2DElasticd,
    Rand3DElasticd,
    RandAdjustContrastd,
    RandBiasFieldd,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    RandSimulateLowResolutiond,
)
from torch import Tensor

LEFT_RIGHT = 0  # RAS: the first spatial axis runs left to right, in 2D axial slices and in 3D volumes
STRENGTH = 1.0  # chosen on the real arm; see the module docstring


def transforms_text(strength: float = STRENGTH) -> tuple[str, ...]:
    """What `ClassicAugmentation` applies at ``strength``, in order, as written to utility.json and utility.md."""
    r = _ranges(strength)
    return (
        "RandFlipd (left-right, p 0.5)",
        f"Rand{{2D,3D}}Elasticd (p {r['p_spatial']:.2f}: rotation ±{math.degrees(r['rotate']):.0f}°, scale "
        f"±{r['scale']:.0%}, shift ±{r['shift']:.0f} voxels, elastic magnitude up to {r['elastic']:.1f} voxels; "
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
    """Callable on a batch: (images, label maps or None) -> the same, each sample randomly transformed."""

    def __init__(self, spatial_dims: int, seed: int, strength: float = STRENGTH):
        r = _ranges(strength)
        geometry = ["image", "label"]
        self.transform = Compose([
            RandFlipd(geometry, prob=0.5, spatial_axis=LEFT_RIGHT, allow_missing_keys=True),
            _spatial(spatial_dims, r),
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
        """Label maps ride along as floats through the geometric transforms and come back as class indices."""
        out = [self.transform({"image": x} if labels is None else {"image": x, "label": labels[i].float()})
               for i, x in enumerate(images)]
        augmented = torch.stack([torch.as_tensor(d["image"]).float() for d in out]).as_subclass(Tensor).clamp(0, 1)
        if labels is None:
            return augmented, None
        return augmented, torch.stack([torch.as_tensor(d["label"]).round().long() for d in out]).as_subclass(Tensor)


def _spatial(spatial_dims: int, r: dict[str, float]):
    """Rotation, scaling, shift and an elastic field in one resampling, as nnU-Net does (labels nearest)."""
    common = dict(prob=r["p_spatial"], magnitude_range=(0.0, r["elastic"]), scale_range=r["scale"],
                  translate_range=r["shift"], mode=("bilinear", "nearest"), padding_mode="zeros",
                  allow_missing_keys=True)
    if spatial_dims == 2:
        return Rand2DElasticd(["image", "label"], spacing=(12, 12), rotate_range=r["rotate"], **common)
    return Rand3DElasticd(["image", "label"], sigma_range=(5, 8), rotate_range=(r["rotate"],) * 3, **common)
