"""Resampling to a coarser spacing: the image is low-passed and a label map keeps each cell's majority class."""
from __future__ import annotations

import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Spacingd

from neurosql_med.data.transforms import (IMAGE, LABEL, AntiAliasd, LabelSpacingd, MostPresentClassd,
                                          anti_alias_sigma)

COARSE = [3.0, 3.0, 3.0]


def _resample(image: torch.Tensor, label: torch.Tensor, anti_alias: bool) -> dict:
    steps = [AntiAliasd([IMAGE, LABEL], COARSE)] if anti_alias else []
    steps += [Spacingd(keys=IMAGE, pixdim=COARSE, mode="bilinear", dtype=torch.float32),
              LabelSpacingd(LABEL, COARSE), MostPresentClassd(LABEL)]
    affine = torch.eye(4, dtype=torch.float64)
    return Compose(steps)({IMAGE: MetaTensor(image, affine=affine), LABEL: MetaTensor(label, affine=affine)})


def _majority_stripes() -> torch.Tensor:
    """Class 2 in two of every three 1 mm planes along x, class 1 in the third: every 3 mm cell is mostly class 2,
    but its centre lies on class 1."""
    label = torch.full((1, 30, 12, 12), 2.0)
    label[:, 0::3] = 1.0  # the planes a 3 mm grid with the same origin samples
    return label


def test_sigma_is_skimage_rule_and_zero_when_the_grid_gets_finer():
    affine = torch.diag(torch.tensor([1.0, 2.0, 4.0, 1.0]))
    assert anti_alias_sigma(affine, [2.5, 2.5, 2.5]) == [0.75, 0.125, 0.0]


def test_label_map_keeps_each_cells_majority_class_not_one_voxel():
    label = _majority_stripes()
    soft = _resample(torch.zeros_like(label), label, anti_alias=True)[LABEL]
    nearest = _resample(torch.zeros_like(label), label, anti_alias=False)[LABEL]
    inner = (slice(None), slice(1, -1), slice(1, -1), slice(1, -1))  # away from the padded border
    assert soft.shape == nearest.shape and soft.shape[0] == 1
    assert (soft[inner] == 2).all()
    assert (nearest[inner] == 1).any()  # a nearest neighbour lands on the minority planes


def test_image_noise_is_low_passed_before_subsampling():
    noise = torch.randn(1, 48, 48, 48, generator=torch.Generator().manual_seed(0))
    label = torch.zeros_like(noise)
    smooth = _resample(noise, label, anti_alias=True)[IMAGE]
    aliased = _resample(noise, label, anti_alias=False)[IMAGE]
    inner = (slice(None), slice(2, -2), slice(2, -2), slice(2, -2))
    assert smooth[inner].std() < 0.6 * aliased[inner].std()


def test_label_maps_of_many_regions_stay_class_indices():
    label = torch.arange(30.0).reshape(1, 30, 1, 1).expand(1, 30, 6, 6).clone()
    out = _resample(torch.zeros_like(label), label, anti_alias=True)[LABEL]
    assert out.shape[0] == 1 and set(out.unique().tolist()) <= set(range(30))
    assert torch.equal(out, out.round())


def test_an_empty_label_map_stays_background():
    label = torch.zeros(1, 12, 12, 12)
    out = _resample(torch.zeros_like(label), label, anti_alias=True)[LABEL]
    assert out.shape[0] == 1 and not out.any()
