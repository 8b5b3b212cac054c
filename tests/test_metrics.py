import numpy as np
import pytest
import torch
from scipy import ndimage

from neurosql_med.errors import UserError
from neurosql_med.metrics import (
    PSNR_CAP, audit, check_tau, coverage, distribution, diversity, fidelity, ms_ssim, ms_ssim_settings, pairwise_mae,
)

SHAPE = (24, 32)


def brains(n: int, seed: int, shape: tuple[int, int] = SHAPE) -> torch.Tensor:
    """Brain-like slices: an ellipse of tissue with a darker rim, two ventricles and texture, each subject different."""
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    out = []
    for _ in range(n):
        cy, cx = rng.normal(0, 0.05, 2)
        ry, rx = rng.uniform(0.65, 0.9, 2)
        q = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2
        img = np.where(q < 1, 0.5, 0.0) + np.where(q < rng.uniform(0.35, 0.6), 0.3, 0.0)
        for side in (-1, 1):
            vy, vx = rng.uniform(0.15, 0.3), rng.uniform(0.06, 0.12)
            img = np.where(((y - cy) / vy) ** 2 + ((x - cx - side * 0.12) / vx) ** 2 < 1, 0.1, img)
        img += (q < 1) * ndimage.gaussian_filter(rng.normal(size=shape), 1.0) * 0.1
        out.append(np.clip(ndimage.gaussian_filter(img, 0.6), 0, 1))
    return torch.tensor(np.stack(out), dtype=torch.float32)[:, None]


def shuffled(images: torch.Tensor) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    flat = images.flatten(1)
    return torch.stack([row[torch.randperm(len(row), generator=gen)] for row in flat]).view_as(images)


def test_pairwise_mae_matches_the_definition_and_its_symmetric_form():
    a, b = brains(7, 0), brains(5, 1)
    direct = (a[:, None] - b[None]).abs().flatten(2).mean(2)
    assert torch.allclose(pairwise_mae(a, b, chunk=3), direct, atol=1e-6)
    assert torch.allclose(pairwise_mae(a, chunk=3), pairwise_mae(a, a), atol=1e-6)
    assert torch.all(pairwise_mae(a).diagonal() == 0)
    ramp, point = torch.tensor([[0.0, 0.0], [1.0, 1.0]]).view(2, 1, 1, 2), torch.tensor([0.5, 1.0]).view(1, 1, 1, 2)
    assert pairwise_mae(ramp, point).flatten().tolist() == [0.75, 0.25]  # (0.5 + 1) / 2 and (0.5 + 0) / 2


def test_fidelity_of_a_set_against_itself_is_perfect():
    x = brains(10, 0)
    assert fidelity(x, x) == {"mae": 0.0, "ssim": pytest.approx(1.0, abs=1e-5), "psnr": PSNR_CAP}


def test_shuffled_pixels_score_clearly_worse_than_real_like_samples():
    real, new = brains(20, 0), brains(20, 1)
    good, bad = fidelity(new, real), fidelity(shuffled(new), real)
    assert bad["mae"] > 1.5 * good["mae"]
    assert bad["ssim"] < good["ssim"] - 0.3
    assert bad["psnr"] < good["psnr"] - 3


def test_coverage_sees_a_generator_that_reproduces_one_image_only():
    real = brains(12, 0)
    assert coverage(real, real) == {"mae": 0.0, "covered": 1.0}
    assert coverage(real, real[:1].repeat(6, 1, 1, 1))["covered"] == pytest.approx(1 / 12)


def test_diversity_of_copies_of_one_image_is_minimal():
    real = brains(10, 0)
    result = diversity(real[:1].repeat(8, 1, 1, 1), real)
    assert result["ms_ssim_synthetic"] == pytest.approx(1.0, abs=1e-5)
    assert result["ms_ssim_real"] < 0.9
    assert result["ratio"] > 1.1
    assert result["pairs_synthetic"] == 28  # all 8 * 7 / 2 pairs of a small set


def test_diversity_uses_a_fixed_sample_of_pairs_when_there_are_many():
    x = brains(30, 0)  # 435 pairs
    first, again = diversity(x, x, limit=50), diversity(x, x, limit=50)
    assert first["pairs_synthetic"] == 50
    assert first == again


@pytest.mark.parametrize("shape, expected", [((24, 32), (3, 5)), ((64, 80), (3, 7)), ((16, 24, 16), (3, 3)), ((8, 10), (1, 7))])
def test_ms_ssim_is_defined_for_the_configured_image_sizes(shape, expected):
    assert ms_ssim_settings(shape) == expected
    x = torch.rand(2, 1, *shape)
    assert torch.allclose(ms_ssim(x, x), torch.ones(2), atol=1e-5)


def test_precision_recall_density_coverage_of_identical_sets():
    x = brains(20, 0)
    result = distribution(x, x)
    assert (result["precision"], result["recall"], result["coverage"]) == (1.0, 1.0, 1.0)
    assert result["density"] == pytest.approx((result["k"] + 1) / result["k"])  # each point in its own ball and k others


def test_distribution_separates_real_like_from_shuffled_samples():
    real, new = brains(20, 0), brains(20, 1)
    good, bad = distribution(real, new), distribution(real, shuffled(new))
    assert good["precision"] > 0.8 and good["recall"] > 0.8
    assert bad["precision"] < 0.2 and bad["coverage"] < 0.2
    assert bad["mmd2"] > good["mmd2"] + 0.1


def test_audit_flags_planted_copies_and_only_them():
    train, genuine = brains(20, 0), brains(12, 1)
    gen = torch.Generator().manual_seed(0)
    copies = (train[:6] + 0.01 * torch.randn(train[:6].shape, generator=gen)).clamp(0, 1)
    order = torch.randperm(18, generator=gen)
    synth = torch.cat([copies, genuine])[order]
    result = audit(train, synth, tau=0.5)
    planted = sorted(torch.nonzero(order < 6).flatten().tolist())
    assert result["flagged"] == planted
    assert [result["nearest"][i] for i in planted] == [int(order[i]) for i in planted]
    assert max(result["ratios"][i] for i in planted) < 0.5 < min(r for i, r in enumerate(result["ratios"]) if i not in planted)
    assert result["n_flagged"] == 6 and result["fraction_flagged"] == pytest.approx(6 / 18)


@pytest.mark.parametrize("tau", [0.0, -0.5, float("nan"), float("inf"), float("-inf")])
def test_tau_must_be_a_positive_finite_number(tau):
    with pytest.raises(UserError, match=f"--tau must be positive and finite, got {tau}"):
        check_tau(tau)
    check_tau(0.5)
