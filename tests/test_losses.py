"""Reconstruction loss: valid-window SSIM, per-sample values, the all-pairs form."""
from __future__ import annotations

import pytest
import torch
from monai.metrics import SSIMMetric

from neurosql_med.engine.losses import ReconstructionLoss, pairwise_mse

SHAPES = {2: (20, 24), 3: (12, 14, 10)}


def _images(count: int, dims: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 1, *SHAPES[dims], generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("dims", [2, 3])
def test_ssim_matches_monai_valid_windows(dims):
    a = _images(3, dims)
    b = (a + 0.3 * _images(3, dims, seed=1)).clamp(0, 1)
    ours = ReconstructionLoss(dims, window=5).ssim(a, b)
    reference = SSIMMetric(dims, win_size=5, kernel_sigma=1.5)(a, b).flatten()
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dims", [2, 3])
def test_ssim_of_self_is_one_and_of_unrelated_noise_near_zero(dims):
    loss = ReconstructionLoss(dims, window=5)
    a = _images(2, dims)
    torch.testing.assert_close(loss.ssim(a, a), torch.ones(2))
    assert loss(a, a).abs().max() < 1e-6
    shape = (96, 96) if dims == 2 else (32, 32, 32)
    noise = torch.rand(2, 2, 1, *shape, generator=torch.Generator().manual_seed(3))
    assert ReconstructionLoss(dims).ssim(noise[0], noise[1]).abs().max() < 0.05


def test_loss_is_per_sample_and_combines_l1_and_ssim():
    loss = ReconstructionLoss(2, ssim_weight=0.5, window=5)
    a, b = _images(4, 2), _images(4, 2, seed=1)
    values = loss(a, b)
    assert values.shape == (4,)
    expected = (a - b).abs().flatten(1).mean(1) + 0.5 * (1 - loss.ssim(a, b))
    torch.testing.assert_close(values, expected)
    torch.testing.assert_close(loss(a[:1], b[:1]), values[:1])


@pytest.mark.parametrize("dims", [2, 3])
def test_pairwise_equals_the_per_pair_loss(dims):
    loss = ReconstructionLoss(dims, window=5)
    images, outputs = _images(3, dims), _images(5, dims, seed=1)
    expected = torch.stack([loss(outputs, image.expand_as(outputs)) for image in images])
    for chunk in (None, 1, 4):
        torch.testing.assert_close(loss.pairwise(outputs, images, chunk=chunk), expected, atol=1e-5, rtol=0)


def test_pairwise_mse_equals_direct_squared_error():
    images, outputs = _images(3, 2), _images(5, 2, seed=1)
    expected = ((images[:, None] - outputs[None]) ** 2).flatten(2).mean(2)
    torch.testing.assert_close(pairwise_mse(outputs, images), expected, atol=1e-6, rtol=0)


def test_loss_has_gradients_and_runs_under_autocast():
    loss = ReconstructionLoss(2, window=5)
    pred = _images(2, 2).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(pred.bfloat16(), _images(2, 2, seed=1))
    assert value.dtype == torch.float32
    value.sum().backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()


def test_window_larger_than_image_is_rejected():
    with pytest.raises(ValueError, match="window"):
        ReconstructionLoss(2, window=7).ssim(torch.rand(1, 1, 5, 9), torch.rand(1, 1, 5, 9))
