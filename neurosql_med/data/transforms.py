"""The preprocessing pipeline, composed from MONAI dictionary transforms.

Training, evaluation and benchmarking all call :func:`preprocess` so a scan is seen
exactly the same way everywhere. A label map ("label" key) goes through the same spatial
steps as its image, with nearest-neighbour resampling and the image's crop box and slices,
so the two stay aligned voxel for voxel; only the image's intensities are scaled.
"""
from __future__ import annotations

from typing import Any, Hashable, Mapping

import torch
from monai.config import KeysCollection
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

IMAGE, LABEL = "image", "label"
FOREGROUND = 0.01  # intensity (after scaling to [0, 1]) above which a voxel is brain


def is_foreground(x: torch.Tensor) -> torch.Tensor:
    return x > FOREGROUND


class SliceSamplesd(MapTransform):
    """Turn one preprocessed volume into 2D slice samples.

    Slices are taken from a fraction range of the brain's own extent along the axis
    (not of the padded grid), so "the central 60 %" means the same anatomy for large
    and small brains. Each sample keeps its source scan id and slice index. The first
    key (the image) chooses the slices; every other key (its label map) is cut the same.
    """

    def __init__(self, keys: KeysCollection, axis: int, fraction: tuple[float, float], stride: int) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.axis, self.fraction, self.stride = axis, fraction, stride

    def slice_indices(self, volume: torch.Tensor) -> list[int]:
        return [index for index, _ in self.slices(volume)]

    def slices(self, volume: torch.Tensor) -> list[tuple[int, float]]:
        """Each slice taken, with its relative level: its centre's position within the brain's extent, in (0, 1)."""
        other = tuple(i for i in range(1, 4) if i != self.axis + 1)
        present = torch.nonzero(is_foreground(volume).any(dim=0).any(dim=tuple(o - 1 for o in other))).flatten()
        if present.numel() == 0:
            return []
        first, last = int(present[0]), int(present[-1]) + 1
        extent = last - first
        start = first + int(round(self.fraction[0] * extent))
        stop = max(first + int(round(self.fraction[1] * extent)), start + 1)
        return [(index, (index + 0.5 - first) / extent) for index in range(start, stop, self.stride)]

    def __call__(self, data: Mapping[Hashable, Any]) -> list[dict[Hashable, Any]]:
        keys = list(self.key_iterator(dict(data)))
        volume = data[keys[0]]
        samples = []
        for index, level in self.slices(volume):
            sample = {k: v for k, v in data.items() if k not in keys}
            for key in keys:
                sample[key] = data[key].select(self.axis + 1, index).as_tensor().clone()
            sample["slice_index"] = index
            sample["slice_level"] = level
            sample["affine"] = volume.affine.clone()
            samples.append(sample)
        return samples


def volume_transforms(cfg: DataConfig, labels: bool = False) -> list:
    """Load → RAS → target spacing → robust [0, 1] scaling → brain crop → target grid.

    Class indices must never be blended: the label map is resampled and resized with
    nearest neighbours, and padded with 0 (background), like the image's empty border.
    """
    lower, upper = cfg.intensity_percentiles
    keys = [IMAGE, LABEL] if labels else [IMAGE]
    if cfg.fit == "pad_crop":
        to_shape = ResizeWithPadOrCropd(keys=keys, spatial_size=cfg.shape)
    else:
        to_shape = Resized(keys=keys, spatial_size=cfg.shape, mode=["trilinear", "nearest"][: len(keys)],
                           anti_aliasing=[True, False][: len(keys)])
    # not "label_format": Spacingd treats every "label_*" key as the label's meta dictionary
    loads = [LoadScand(keys=IMAGE)] + ([LoadScand(keys=LABEL, format_key="format_label")] if labels else [])
    return [
        *loads,
        Orientationd(keys=keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        Spacingd(keys=keys, pixdim=cfg.spacing, mode=["bilinear", "nearest"][: len(keys)], dtype="float32"),
        ScaleIntensityRangePercentilesd(keys=IMAGE, lower=lower, upper=upper, b_min=0.0, b_max=1.0, clip=True),
        CropForegroundd(keys=keys, source_key=IMAGE, select_fn=is_foreground, margin=cfg.foreground_margin),
        to_shape,
        EnsureTyped(keys=keys, dtype=torch.float32, track_meta=True),
    ]


def preprocess(cfg: DataConfig, labels: bool = False) -> Compose:
    """The full pipeline for the configured mode: volumes (3d) or lists of slices (2d); with labels, both keys."""
    steps = volume_transforms(cfg, labels)
    if cfg.mode == "2d":
        keys = [IMAGE, LABEL] if labels else [IMAGE]
        steps.append(SliceSamplesd(keys, cfg.slice_axis, tuple(cfg.slice_range), cfg.slice_stride))
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
