"""The Laplacian-pyramid L1 (loss.laplacian_weight): its pyramid, its pairwise form, and the assignment cost it selects."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from neurosql_med.config import load_config, override
from neurosql_med.engine.assignment import LOSS_COST_LIMIT, PYRAMID_COST_LIMIT, cost_kind, pair_costs
from neurosql_med.engine.losses import ReconstructionLoss, laplacian_l1, laplacian_pyramid, pairwise_laplacian
from neurosql_med.errors import UserError


@pytest.mark.parametrize("shape", [(2, 1, 16, 20), (2, 1, 9, 13), (1, 1, 8, 10, 6)])
def test_pyramid_bands_add_back_to_the_image(shape):
    images = torch.rand(shape)
    bands = laplacian_pyramid(images, 3)
    assert len(bands) == 3 and bands[0].shape == images.shape
    mode = "bilinear" if images.ndim == 4 else "trilinear"
    rebuilt = bands[-1]
    for band in reversed(bands[:-1]):
        rebuilt = band + F.interpolate(rebuilt, size=band.shape[2:], mode=mode, align_corners=False)
    torch.testing.assert_close(rebuilt, images)


def test_at_equal_l1_a_blurred_edge_costs_more_than_a_contrast_change():
    """L1 cannot tell a blur from a faint contrast change; the pyramid charges the blur at every fine level."""
    sharp = torch.zeros(1, 1, 32, 32)
    sharp[..., :, 15:] = 1
    blurred = F.avg_pool2d(F.pad(sharp, (2, 2, 2, 2), mode="replicate"), 5, stride=1)
    offset = (blurred - sharp).abs().mean()
    faint = sharp * (1 - 2 * offset) + offset
    torch.testing.assert_close((faint - sharp).abs().mean(), offset)
    assert laplacian_l1(blurred, sharp, 4) > 1.5 * laplacian_l1(faint, sharp, 4)
    assert laplacian_l1(sharp, sharp, 4).item() == 0


def test_pairwise_form_equals_the_per_sample_loss():
    a, b = torch.rand(4, 1, 12, 14), torch.rand(3, 1, 12, 14)
    pairs = pairwise_laplacian(b, a, 3)
    direct = torch.stack([laplacian_l1(b, a[i:i + 1].expand_as(b), 3) for i in range(4)])
    torch.testing.assert_close(pairs, direct, atol=1e-5, rtol=1e-5)
    loss = ReconstructionLoss(2, ssim_weight=0.5, window=5, laplacian_weight=2.0, laplacian_levels=3)
    per_sample = torch.stack([loss(b, a[i:i + 1].expand_as(b)) for i in range(4)])
    torch.testing.assert_close(loss.pairwise(b, a), per_sample, atol=1e-5, rtol=1e-4)


def test_auto_cost_keeps_the_pyramid_term_above_the_full_loss_limit():
    voxels = 64 * 80
    small, large, huge = 100, 300, 1000
    assert small**2 * voxels < LOSS_COST_LIMIT < large**2 * voxels < PYRAMID_COST_LIMIT < huge**2 * voxels
    assert cost_kind("auto", small, voxels, multiscale=True) == "loss"
    assert cost_kind("auto", large, voxels, multiscale=False) == "mse"
    assert cost_kind("auto", large, voxels, multiscale=True) == "pyramid"
    assert cost_kind("auto", huge, voxels, multiscale=True) == "mse"
    loss = ReconstructionLoss(2, window=5, laplacian_weight=1.0, laplacian_levels=3)
    outputs, images = torch.rand(3, 1, 12, 14), torch.rand(4, 1, 12, 14)
    torch.testing.assert_close(pair_costs(outputs, images, loss, "pyramid"), pairwise_laplacian(outputs, images, 3))


def test_laplacian_keys_are_checked():
    with pytest.raises(UserError, match="loss.laplacian_weight"):
        override(load_config("tiny"), loss__laplacian_weight=-1.0)
    with pytest.raises(UserError, match="loss.laplacian_levels"):
        override(load_config("tiny"), loss__laplacian_levels=0)


@pytest.mark.parametrize("ssim_weight,laplacian_weight", [(0.8, 0.0), (0.0, 0.5), (0.6, 0.3)])
def test_the_loss_is_the_weighted_sum_of_the_terms_training_reports(ssim_weight, laplacian_weight):
    """History's l1 and ssim are the loss's own terms, read directly: an SSIM it does not weigh is not computed."""
    generator = torch.Generator().manual_seed(0)
    pred, target = torch.rand(3, 1, 16, 20, generator=generator), torch.rand(3, 1, 16, 20, generator=generator)
    loss = ReconstructionLoss(2, ssim_weight, window=5, laplacian_weight=laplacian_weight, laplacian_levels=3)
    terms, label = loss.terms(pred, target)
    assert label is None and (terms.ssim is None) == (ssim_weight == 0) and (terms.laplacian is None) == (laplacian_weight == 0)
    l1 = (pred - target).abs().mean(dim=(1, 2, 3))
    torch.testing.assert_close(terms.l1, l1)
    ssim = loss.ssim(pred, target)
    assert bool((ssim < 0.5).all())  # unrelated noise: far from identical, so the SSIM term matters
    expected = l1 + ssim_weight * (1 - ssim) + laplacian_weight * laplacian_l1(pred, target, 3)
    torch.testing.assert_close(loss.combined(terms, None), expected)
    torch.testing.assert_close(loss(pred, target), expected)
