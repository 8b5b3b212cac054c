"""Classic augmentation: the MONAI random transforms a practitioner adds to a small training set.

Geometry moves image and label map together (the labels with nearest-neighbour
interpolation); intensity transforms touch the image only. The left-right flip is the
one flip brain anatomy allows (the hemispheres mirror each other; up-down or front-back
do not). Every batch is transformed sample by sample from one seeded random state, so a
run sees the same augmented batches every time.
"""
from __future__ import annotations

import math

import torch
from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandAffined,
    RandBiasFieldd,
    RandFlipd,
    RandGaussianNoised,
)
from torch import Tensor

LEFT_RIGHT = 0  # RAS: the first spatial axis runs left to right, in 2D axial slices and in 3D volumes
ROTATE = math.radians(12)
SCALE = 0.1
SHIFT = 4  # voxels

# What `classic_augmentation` applies, in order, as written to utility.json and utility.md.
TRANSFORMS = (
    "RandFlipd (left-right, p 0.5)",
    f"RandAffined (p 0.8: rotation ±{math.degrees(ROTATE):.0f}°, scale ±{SCALE:.0%}, shift ±{SHIFT} voxels; "
    "labels nearest)",
    "RandBiasFieldd (p 0.5, degree 3, coefficients 0-0.3)",
    "RandAdjustContrastd (p 0.5, gamma 0.7-1.5)",
    "RandGaussianNoised (p 0.5, sd 0.03)",
)


class ClassicAugmentation:
    """Callable on a batch: (images, label maps or None) -> the same, each sample randomly transformed."""

    def __init__(self, spatial_dims: int, seed: int):
        geometry = ["image", "label"]
        rotate = ROTATE if spatial_dims == 2 else (ROTATE,) * 3
        self.transform = Compose([
            RandFlipd(geometry, prob=0.5, spatial_axis=LEFT_RIGHT, allow_missing_keys=True),
            RandAffined(geometry, prob=0.8, rotate_range=rotate, scale_range=SCALE, translate_range=SHIFT,
                        mode=("bilinear", "nearest"), padding_mode="zeros", allow_missing_keys=True),
            RandBiasFieldd("image", prob=0.5, degree=3, coeff_range=(0.0, 0.3)),
            RandAdjustContrastd("image", prob=0.5, gamma=(0.7, 1.5)),
            RandGaussianNoised("image", prob=0.5, std=0.03),
        ]).set_random_state(seed)

    def __call__(self, images: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Label maps ride along as floats through the geometric transforms and come back as class indices."""
        out = [self.transform({"image": x} if labels is None else {"image": x, "label": labels[i].float()})
               for i, x in enumerate(images)]
        augmented = torch.stack([torch.as_tensor(d["image"]).float() for d in out]).as_subclass(Tensor)
        if labels is None:
            return augmented, None
        return augmented, torch.stack([torch.as_tensor(d["label"]).round().long() for d in out]).as_subclass(Tensor)
