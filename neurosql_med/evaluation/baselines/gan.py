"""GAN baseline: NeuroSQL's decoder as generator against a spectral-norm discriminator, with DiffAugment.

With a few hundred training images a discriminator memorises them within minutes and
the generator's gradients stop meaning anything. DiffAugment (Zhao et al. 2020) applies
the same random, differentiable augmentations (brightness, contrast, translation by up to
1/8 of a side, cutout of half a side) to real and generated images before the
discriminator sees them, which keeps it from memorising without teaching the generator
the augmentations.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from neurosql_med.evaluation.baselines import (
    EMA, budget_lr, count_parameters, latent_draws, neurosql_decoder, run_budgeted, set_lr,
)
from neurosql_med.evaluation.baselines.vae import Encoder
from neurosql_med.config import Config
from neurosql_med.runtime import autocast, seed_everything

# A minutes-long budget allows a few thousand steps, not SN-GAN's 100k at 2e-4 (docs/decisions.md).
# Betas as StyleGAN2 / DiffAugment.
LR = 1e-3
BETAS = (0.0, 0.99)
TRANSLATION = 1 / 8
CUTOUT = 1 / 2
SAMPLE_BATCH = 64


def diff_augment(x: Tensor, gen: torch.Generator) -> Tensor:
    """DiffAugment's colour, translation and cutout policies for one-channel 2D or 3D images."""
    b, dims = x.shape[0], x.ndim - 2
    shape = [b] + [1] * (x.ndim - 1)

    def uniform(low: float, high: float) -> Tensor:
        return low + (high - low) * torch.rand(shape, generator=gen, device=x.device)

    x = x + uniform(-0.5, 0.5)
    mean = x.mean(dim=tuple(range(1, x.ndim)), keepdim=True)
    x = (x - mean) * uniform(0.5, 1.5) + mean
    # translation: whole-voxel shifts with zero fill, as a nearest-neighbour resampling
    sides = torch.tensor(x.shape[2:], device=x.device)
    limit = (sides * TRANSLATION).long()
    shift = (torch.rand(b, dims, generator=gen, device=x.device) * (2 * limit + 1)).long() - limit
    theta = torch.eye(dims, dims + 1, device=x.device).repeat(b, 1, 1)
    theta[:, :, dims] = (-2 * shift / sides).flip(1)  # affine_grid orders coordinates last axis first
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    # cutout: zero a box of half each side at a random centre
    inside = torch.ones((b,) + (1,) * (x.ndim - 1), dtype=torch.bool, device=x.device)
    for axis, side in enumerate(x.shape[2:]):
        centre = torch.randint(0, side, (b,), generator=gen, device=x.device)
        coords = torch.arange(side, device=x.device).view([1] * (axis + 2) + [side] + [1] * (dims - axis - 1))
        inside = inside & ((coords - centre.view(shape)).abs() < max(1, int(side * CUTOUT) // 2))
    return x * ~inside


def discriminator(shape: Sequence[int], channels: list[int]) -> nn.Module:
    """The VAE's mirrored encoder to one logit, every weight spectrally normalised (1-Lipschitz layers)."""
    net = Encoder(shape, channels, 1)
    for module in list(net.modules()):
        if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.Linear)):
            spectral_norm(module)
    return net


class GAN:
    """Hinge-loss GAN, one discriminator step per generator step, sampled from an EMA of the generator."""

    def __init__(self, cfg: Config, lr: float = LR):
        self.cfg, self.lr = cfg, lr

    def fit(self, images: Tensor, budget_seconds: float, seed: int, device: torch.device) -> dict:
        seed_everything(seed)
        m, t = self.cfg.model, self.cfg.train
        self.device = device
        self.generator = neurosql_decoder(self.cfg, images, device)
        self.discriminator = discriminator(images.shape[2:], m.channels).to(device)
        self.ema = EMA(self.generator)
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=self.lr, betas=BETAS)
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=self.lr, betas=BETAS)
        data = images.to(device)
        gen = torch.Generator(device).manual_seed(seed)

        def step(idx: Tensor, fraction: float) -> None:
            for optimizer in (opt_g, opt_d):
                set_lr(optimizer, self.lr * budget_lr(fraction))
            real = data[idx.to(device)]
            z = torch.randn(len(real), m.latent_dim, generator=gen, device=device)
            with autocast(device, t.amp):
                fake = self.generator(z)
                d_real = self.discriminator(diff_augment(real, gen)).float()
                d_fake = self.discriminator(diff_augment(fake.detach(), gen)).float()
            d_loss = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            with autocast(device, t.amp):
                g_loss = -self.discriminator(diff_augment(fake, gen)).float().mean()
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            self.ema.update(self.generator)

        return run_budgeted(step, len(images), t.batch_size, budget_seconds, seed)

    @torch.no_grad()
    def sample(self, n: int, seed: int) -> Tensor:
        z = latent_draws(n, self.cfg.model.latent_dim, seed)
        return torch.cat([self.ema.model(z[i:i + SAMPLE_BATCH].to(self.device)).float().cpu()
                          for i in range(0, n, SAMPLE_BATCH)])

    def parameter_count(self) -> int:
        return count_parameters(self.generator, self.discriminator)
