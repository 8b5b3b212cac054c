"""The preprocessing pipeline, composed from MONAI dictionary transforms.

Training, evaluation and benchmarking all call :func:`preprocess` so a scan is seen
exactly the same way everywhere. A label map ("label" key) goes through the same spatial
steps as its image, with the image's crop box and slices, so the two stay aligned voxel for
voxel; only the image's intensities are scaled.

Going to a coarser spacing, both are low-passed first (``data.anti_alias``): a 1 mm scan
resampled to 2.5 mm by interpolation alone keeps noise and thin structures as aliased
speckle, and a tissue map resampled by nearest neighbour keeps one voxel's class out of
each 2.5 mm cell, not the cell's majority. With it the image is smoothed by the Gaussian
skimage uses for anti-aliasing (sigma = (zoom - 1) / 2 source voxels per axis) and a
label map is resampled as its class channels (one-hot, the same smoothing, linear
interpolation), then each voxel takes its most present class.
"""
from __future__ import annotations

from typing import Any, Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureTyped,
    GaussianSmooth,
    MapTransform,
    Orientationd,
    ResizeWithPadOrCropd,
    Resized,
    ScaleIntensityRangePercentilesd,
    Spacing,
    Spacingd,
)

from neurosql_med.config import DataConfig
from neurosql_med.data.readers import LoadScand
from neurosql_med.errors import UserError

IMAGE, LABEL = "image", "label"
FOREGROUND = 0.01  # intensity (after scaling to [0, 1]) above which a voxel is brain
MAX_SOFT_CLASSES = 16  # label maps with more classes (atlases of regions) keep nearest-neighbour resampling: memory


def anti_alias_sigma(affine: torch.Tensor, target: list[float]) -> list[float]:
    """skimage's anti-aliasing Gaussian per axis, in source voxels: (zoom - 1) / 2, 0 where the grid gets finer."""
    source = np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))
    return [max(0.0, (t / s - 1.0) / 2.0) for s, t in zip(source, target)]


class AntiAliasd(MapTransform):
    """Low-pass the image, and turn a label map into its smoothed class channels, before a coarser Spacingd."""

    def __init__(self, keys: KeysCollection, spacing: list[float]) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.spacing = spacing

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            x = out[key]
            sigma = anti_alias_sigma(x.affine, self.spacing)
            if key == LABEL:
                x = class_channels(x)
            if any(sigma) and (key != LABEL or x.shape[0] > 1):
                x = GaussianSmooth(sigma=sigma)(x)
            out[key] = x
        return out


def class_channels(label: MetaTensor) -> MetaTensor:
    """A label map as float one-hot channels (background included); unchanged with one class or past MAX_SOFT_CLASSES."""
    classes = int(label.max()) + 1
    if not 2 <= classes <= MAX_SOFT_CLASSES:
        return label
    onehot = torch.nn.functional.one_hot(label[0].long().clamp(min=0), classes).movedim(-1, 0).float()
    return MetaTensor(onehot, meta=label.meta)


class LabelSpacingd(MapTransform):
    """Spacingd for a label map: linear on class channels, nearest neighbours on class indices (never blended)."""

    def __init__(self, keys: KeysCollection, spacing: list[float]) -> None:
        super().__init__(keys)
        self.spacing = Spacing(pixdim=spacing, dtype=torch.float32)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            out[key] = self.spacing(out[key], mode="bilinear" if out[key].shape[0] > 1 else "nearest")
        return out


class MostPresentClassd(MapTransform):
    """Class channels back to one channel of class indices (a one-channel map passes unchanged)."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            if out[key].shape[0] > 1:
                out[key] = out[key].argmax(dim=0, keepdim=True).float()
        return out


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
    """Load → RAS → (anti-alias) → target spacing → robust [0, 1] scaling → brain crop → target grid.

    Class indices are never blended: a label map is resampled as class channels then
    argmax (anti-aliased) or by nearest neighbours, resized by nearest neighbours, and padded
    with 0 (background), like the image's empty border.
    """
    lower, upper = cfg.intensity_percentiles
    keys = [IMAGE, LABEL] if labels else [IMAGE]
    spacing = [AntiAliasd(keys, cfg.spacing)] if cfg.anti_alias else []
    spacing += [Spacingd(keys=IMAGE, pixdim=cfg.spacing, mode="bilinear", dtype="float32")]
    spacing += [LabelSpacingd(LABEL, cfg.spacing), MostPresentClassd(LABEL)] if labels else []
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
        *spacing,
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
