"""The preprocessing pipeline, composed from MONAI dictionary transforms.

Training, evaluation and benchmarking all call :func:`preprocess` so a scan is seen
exactly the same way everywhere.
"""
from __future__ import annotations

from typing import Any, Hashable, Mapping

import torch
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureTyped,
    MapTransform,
    Orientationd,
    ResizeWithPadOrCropd,
    Resized,
    ScaleIntensityRangePercentilesd,
    Spacingd,
)

from neurosql_med.config import DataConfig
from neurosql_med.data.readers import LoadScand
from neurosql_med.errors import UserError

FOREGROUND = 0.01  # intensity (after scaling to [0, 1]) above which a voxel is brain


def is_foreground(x: torch.Tensor) -> torch.Tensor:
    return x > FOREGROUND


class SliceSamplesd(MapTransform):
    """Turn one preprocessed volume into 2D slice samples.

    Slices are taken from a fraction range of the brain's own extent along the axis
    (not of the padded grid), so "the central 60 %" means the same anatomy for large
    and small brains. Each sample keeps its source scan id and slice index.
    """

    def __init__(self, keys: str, axis: int, fraction: tuple[float, float], stride: int) -> None:
        super().__init__(keys)
        self.axis, self.fraction, self.stride = axis, fraction, stride

    def slice_indices(self, volume: torch.Tensor) -> list[int]:
        other = tuple(i for i in range(1, 4) if i != self.axis + 1)
        present = torch.nonzero(is_foreground(volume).any(dim=0).any(dim=tuple(o - 1 for o in other))).flatten()
        if present.numel() == 0:
            return []
        first, last = int(present[0]), int(present[-1]) + 1
        extent = last - first
        start = first + int(round(self.fraction[0] * extent))
        stop = max(first + int(round(self.fraction[1] * extent)), start + 1)
        return list(range(start, stop, self.stride))

    def __call__(self, data: Mapping[Hashable, Any]) -> list[dict[Hashable, Any]]:
        (key,) = self.keys
        volume = data[key]
        samples = []
        for index in self.slice_indices(volume):
            sample = {k: v for k, v in data.items() if k != key}
            sample[key] = volume.select(self.axis + 1, index).as_tensor().clone()
            sample["slice_index"] = index
            sample["affine"] = volume.affine.clone()
            samples.append(sample)
        return samples


def volume_transforms(cfg: DataConfig) -> list:
    """Load → RAS → target spacing → robust [0, 1] scaling → brain crop → target grid."""
    lower, upper = cfg.intensity_percentiles
    if cfg.fit == "pad_crop":
        to_shape = ResizeWithPadOrCropd(keys="image", spatial_size=cfg.shape)
    else:
        to_shape = Resized(keys="image", spatial_size=cfg.shape, mode="trilinear", anti_aliasing=True)
    return [
        LoadScand(keys="image"),
        Orientationd(keys="image", axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        Spacingd(keys="image", pixdim=cfg.spacing, mode="bilinear", dtype="float32"),
        ScaleIntensityRangePercentilesd(keys="image", lower=lower, upper=upper, b_min=0.0, b_max=1.0, clip=True),
        CropForegroundd(keys="image", source_key="image", select_fn=is_foreground, margin=cfg.foreground_margin),
        to_shape,
        EnsureTyped(keys="image", dtype=torch.float32, track_meta=True),
    ]


def preprocess(cfg: DataConfig) -> Compose:
    """The full pipeline for the configured mode: volumes (3d) or lists of slices (2d)."""
    steps = volume_transforms(cfg)
    if cfg.mode == "2d":
        steps.append(SliceSamplesd("image", cfg.slice_axis, tuple(cfg.slice_range), cfg.slice_stride))
    return Compose(steps)


def preprocess_one(cfg: DataConfig, record: dict) -> list[dict]:
    """One scan through :func:`preprocess` outside a dataset, its samples as a list.

    MONAI wraps whatever a transform raises in a RuntimeError; a scan's own problem
    (a ScanError, i.e. a UserError naming the file) is handed on as itself.
    """
    try:
        out = preprocess(cfg)(record)
    except RuntimeError as exc:
        if isinstance(exc.__cause__, UserError):
            raise exc.__cause__ from None
        raise
    return out if isinstance(out, list) else [out]
