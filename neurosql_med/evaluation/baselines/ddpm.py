"""DDPM baseline: a small time-conditioned U-Net trained on MONAI's DDPM schedule, sampled with DDIM.

The network is MONAI's DiffusionModelUNet layout assembled from its own blocks (DownBlock,
DiffusionUNetResnetBlock, UpBlock) without self-attention: DiffusionModelUNet always puts an
attention block in its middle, and MONAI's attention needs ``einops``, which nsql-med does
not depend on. On a CPU budget of minutes attention would also cost more than it gives.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.inferers import DiffusionInferer
from monai.networks.blocks import Convolution
from monai.networks.nets.diffusion_model_unet import (
    DiffusionUNetResnetBlock,
    DownBlock,
    UpBlock,
    get_timestep_embedding,
    zero_module,
)
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler
from torch import Tensor, nn

from neurosql_med.evaluation.baselines import EMA, budget_lr, count_parameters, run_budgeted, set_lr
from neurosql_med.config import Config
from neurosql_med.runtime import autocast, seed_everything

TRAIN_TIMESTEPS = 1000
DDIM_STEPS = 50  # sampling cost: 50 U-Net passes per batch, whatever the training schedule
UNET_CHANNELS = (32, 64, 64)
LR = 5e-4  # above the usual 1e-4 for a short budget, below what trained worse (docs/decisions.md)
SAMPLE_BATCH = 64


class DenoisingUNet(nn.Module):
    """Predicts the noise in x_t; same forward signature as DiffusionModelUNet, so MONAI's inferer drives it."""

    def __init__(self, spatial_dims: int, channels: Sequence[int] = UNET_CHANNELS, num_res_blocks: int = 1,
                 norm_num_groups: int = 32):
        super().__init__()
        self.base = channels[0]
        temb = 4 * channels[0]
        conv = dict(spatial_dims=spatial_dims, strides=1, kernel_size=3, padding=1, conv_only=True)
        norm = dict(norm_num_groups=norm_num_groups, norm_eps=1e-6)
        self.time_embed = nn.Sequential(nn.Linear(channels[0], temb), nn.SiLU(), nn.Linear(temb, temb))
        self.conv_in = Convolution(in_channels=1, out_channels=channels[0], **conv)
        last = len(channels) - 1
        self.down_blocks = nn.ModuleList(
            DownBlock(spatial_dims, channels[max(i - 1, 0)], c, temb, num_res_blocks, add_downsample=i < last, **norm)
            for i, c in enumerate(channels)
        )
        self.middle_block = nn.ModuleList(
            DiffusionUNetResnetBlock(spatial_dims, channels[-1], temb, **norm) for _ in range(2)
        )
        up = list(reversed(channels))
        self.up_blocks = nn.ModuleList(
            UpBlock(spatial_dims, up[min(i + 1, last)], up[max(i - 1, 0)], c, temb, num_res_blocks + 1,
                    add_upsample=i < last, **norm)
            for i, c in enumerate(up)
        )
        self.out = nn.Sequential(
            nn.GroupNorm(norm_num_groups, channels[0], eps=1e-6), nn.SiLU(),
            zero_module(Convolution(in_channels=channels[0], out_channels=1, **conv)),
        )

    def forward(self, x: Tensor, timesteps: Tensor, context: Tensor | None = None) -> Tensor:
        emb = self.time_embed(get_timestep_embedding(timesteps, self.base).to(x.dtype))
        h = self.conv_in(x)
        skips = [h]
        for block in self.down_blocks:
            h, states = block(h, emb)
            skips += states
        for block in self.middle_block:
            h = block(h, emb)
        for block in self.up_blocks:
            take = len(block.resnets)
            h = block(h, skips[-take:], emb)
            skips = skips[:-take]
        return self.out(h)


def _margins(shape: Sequence[int], multiple: int) -> list[tuple[int, int]]:
    """Per axis, the (before, after) padding that makes the side a multiple of ``multiple``."""
    return [((-side % multiple) // 2, -side % multiple - (-side % multiple) // 2) for side in shape]


class DDPM:
    """Denoising diffusion in image space, at [-1, 1]; outputs are mapped back and clipped to [0, 1].

    Sides that do not halve evenly through the U-Net are padded with background (0) on
    the way in and cropped on the way out.
    """

    def __init__(self, cfg: Config, channels: Sequence[int] = UNET_CHANNELS, lr: float = LR, ddim_steps: int = DDIM_STEPS):
        self.batch_size, self.amp = cfg.train.batch_size, cfg.train.amp
        self.channels, self.lr, self.ddim_steps = tuple(channels), lr, ddim_steps
        self.inferer = DiffusionInferer(DDPMScheduler(num_train_timesteps=TRAIN_TIMESTEPS))

    def fit(self, images: Tensor, budget_seconds: float, seed: int, device: torch.device) -> dict:
        seed_everything(seed)
        self.device, self.shape = device, tuple(images.shape[2:])
        self.margins = _margins(self.shape, 2 ** (len(self.channels) - 1))
        self.unet = DenoisingUNet(len(self.shape), self.channels).to(device)
        self.ema = EMA(self.unet)
        x0 = self._to_model(images.to(device))
        optimizer = torch.optim.AdamW(self.unet.parameters(), lr=self.lr, weight_decay=0.0)
        noise_gen = torch.Generator(device).manual_seed(seed)

        def step(idx: Tensor, fraction: float) -> None:
            set_lr(optimizer, self.lr * budget_lr(fraction))
            batch = x0[idx.to(device)]
            noise = torch.randn(batch.shape, generator=noise_gen, device=device)
            t = torch.randint(0, TRAIN_TIMESTEPS, (len(batch),), generator=noise_gen, device=device)
            with autocast(device, self.amp):
                predicted = self.inferer(batch, self.unet, noise, t)
            loss = F.mse_loss(predicted.float(), noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(self.unet.parameters(), 1.0)
            optimizer.step()
            self.ema.update(self.unet)

        return run_budgeted(step, len(images), self.batch_size, budget_seconds, seed)

    @torch.no_grad()
    def sample(self, n: int, seed: int) -> Tensor:
        """Deterministic DDIM (eta 0) from seeded noise, with the EMA weights."""
        scheduler = DDIMScheduler(num_train_timesteps=TRAIN_TIMESTEPS)
        scheduler.set_timesteps(self.ddim_steps)
        model = self.ema.model.eval()
        gen = torch.Generator().manual_seed(seed)
        padded = [side + lo + hi for side, (lo, hi) in zip(self.shape, self.margins)]
        out = []
        for start in range(0, n, SAMPLE_BATCH):
            noise = torch.randn((min(SAMPLE_BATCH, n - start), 1, *padded), generator=gen).to(self.device)
            x = self.inferer.sample(noise, model, scheduler=scheduler, verbose=False)
            out.append(self._from_model(x).cpu())
        return torch.cat(out)

    def parameter_count(self) -> int:
        return count_parameters(self.unet)

    def _to_model(self, images: Tensor) -> Tensor:
        pad = [amount for lo_hi in reversed(self.margins) for amount in lo_hi]  # F.pad wants the last axis first
        return F.pad(images.float(), pad) * 2 - 1

    def _from_model(self, x: Tensor) -> Tensor:
        crop = tuple(slice(lo, lo + side) for side, (lo, _) in zip(self.shape, self.margins))
        return ((x[(..., *crop)] + 1) / 2).clamp(0, 1).float()
