"""VAE baseline: NeuroSQL's decoder and loss, with a learned encoder instead of assigned codes.

Everything but the way codes are found is shared with NeuroSQL (decoder, widths, latent
size, reconstruction loss, optimiser settings), so the comparison isolates amortised
variational inference against exact quantile assignment.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from torch import Tensor, nn

from neurosql_med.evaluation.baselines import (
    budget_lr, count_parameters, latent_draws, neurosql_decoder, run_budgeted, set_lr,
)
from neurosql_med.config import Config
from neurosql_med.engine.losses import ReconstructionLoss
from neurosql_med.engine.decoder import ACT
from neurosql_med.runtime import autocast, seed_everything

BETA = 1e-3
KL_WARMUP = 0.25  # share of the budget over which beta ramps up from 0
LOGVAR_RANGE = (-12.0, 6.0)
SAMPLE_BATCH = 64


class Encoder(nn.Module):
    """The Decoder mirrored: image of ``in_shape`` (2D or 3D) → ``out_features``.

    The image is zero-padded (centred) to the decoder's grid, then per stage a stride-2
    kernel-2 convolution halves the grid and a 3x3 convolution maps c_{i+1} → c_i, down to
    the decoder's coarse grid and widest layer, which a linear layer reads. No
    normalisation layers, like the decoder.
    """

    def __init__(self, in_shape: Sequence[int], channels: Sequence[int], out_features: int):
        super().__init__()
        spatial_dims, stages = len(in_shape), len(channels) - 1
        self.in_shape = tuple(in_shape)
        self.grid = tuple(math.ceil(s / 2**stages) * 2**stages for s in in_shape)
        widths = list(reversed(channels))
        layers: list[nn.Module] = [Convolution(spatial_dims, 1, widths[0], kernel_size=3, act=ACT, norm=None)]
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers.append(Convolution(spatial_dims, c_in, c_in, strides=2, kernel_size=2, act=ACT, norm=None, padding=0))
            layers.append(Convolution(spatial_dims, c_in, c_out, kernel_size=3, act=ACT, norm=None))
        base = math.prod(g // 2**stages for g in self.grid)
        self.body = nn.Sequential(*layers, nn.Flatten(), nn.Linear(widths[-1] * base, out_features))

    def forward(self, x: Tensor) -> Tensor:
        pad = []
        for side, grid in zip(reversed(self.in_shape), reversed(self.grid)):  # F.pad: last axis first
            extra = grid - side
            pad += [extra // 2, extra - extra // 2]
        return self.body(nn.functional.pad(x, pad))


class VAE:
    """Gaussian-prior VAE: loss(decode(z), x) + beta · KL(q(z|x) || N(0, I)), z reparameterised.

    The reconstruction term is NeuroSQL's per-pixel mean L1 + w (1 − SSIM), not a
    likelihood summed over pixels, so beta is on that scale: 1e-3 sits between blank
    samples (prior holes) and near-identical ones (docs/decisions.md). Beta ramps up over
    the first quarter of the budget (KL warm-up). Like NeuroSQL it samples with its final
    weights (no EMA), decoding N(0, I) draws.
    """

    def __init__(self, cfg: Config, beta: float = BETA, kl_warmup: float = KL_WARMUP):
        self.cfg, self.beta, self.kl_warmup = cfg, beta, kl_warmup

    def fit(self, images: Tensor, budget_seconds: float, seed: int, device: torch.device) -> dict:
        seed_everything(seed)
        m, t = self.cfg.model, self.cfg.train
        self.device = device
        self.decoder = neurosql_decoder(self.cfg, images, device)
        self.encoder = Encoder(images.shape[2:], m.channels, 2 * m.latent_dim).to(device)
        loss_fn = ReconstructionLoss(images.ndim - 2, self.cfg.loss.ssim_weight, self.cfg.loss.ssim_window).to(device)
        params = [*self.encoder.parameters(), *self.decoder.parameters()]
        optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
        data = images.to(device)
        noise_gen = torch.Generator(device).manual_seed(seed)

        def step(idx: Tensor, fraction: float) -> None:
            set_lr(optimizer, t.lr * budget_lr(fraction))
            x = data[idx.to(device)]
            with autocast(device, t.amp):
                mu, logvar = self.encoder(x).float().chunk(2, dim=1)
                logvar = logvar.clamp(*LOGVAR_RANGE)
                z = mu + torch.randn(mu.shape, generator=noise_gen, device=device) * (0.5 * logvar).exp()
                recon = self.decoder(z)
            kl = 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(1)
            beta = self.beta * min(1.0, fraction / self.kl_warmup)
            loss = (loss_fn(recon.float(), x) + beta * kl).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return run_budgeted(step, len(images), t.batch_size, budget_seconds, seed)

    @torch.no_grad()
    def sample(self, n: int, seed: int) -> Tensor:
        self.decoder.eval()
        z = latent_draws(n, self.cfg.model.latent_dim, seed)
        return torch.cat([self.decoder(z[i:i + SAMPLE_BATCH].to(self.device)).float().cpu()
                          for i in range(0, n, SAMPLE_BATCH)])

    def parameter_count(self) -> int:
        return count_parameters(self.encoder, self.decoder)
