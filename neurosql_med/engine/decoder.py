"""The generator G: latent code -> image in [0, 1], for 2D slices and 3D volumes."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import torch
from monai.networks.blocks import Convolution
from torch import Tensor, nn

from neurosql_med.errors import UserError

if TYPE_CHECKING:  # a type only: config imports nothing from engine, and engine needs no config at run time
    from neurosql_med.config import ModelConfig

ACT = ("leakyrelu", {"negative_slope": 0.2})
MAX_PARAMETERS = 200_000_000  # 0.8 GB of float32 weights, ~3.2 GB with gradients and AdamW state


class Decoder(nn.Module):
    """Linear layer to a coarse grid, then per stage a 3x3 convolution and a x2 upsampling.

    Each stage convolves at the coarse resolution and only then doubles the grid (a
    stride-2 kernel-2 transposed convolution): full-resolution feature maps are
    memory-bound on a CPU (docs/decisions.md). No normalisation layers, so an image never
    depends on the rest of its batch. The grid is the output shape rounded up to a
    multiple of 2^stages and centre-cropped at the end, so any shape works.

    The output is sigmoid(body(z) + template), with the template a learned per-voxel
    logit that ``init_template`` sets to the training images' mean: started from grey
    instead, a 3D fit collapsed to all-black (docs/decisions.md).
    """

    def __init__(self, spatial_dims: int, latent_dim: int, out_shape: Sequence[int], channels: Sequence[int]):
        super().__init__()
        if spatial_dims not in (2, 3) or len(out_shape) != spatial_dims:
            raise ValueError(f"out_shape {tuple(out_shape)} does not match spatial_dims={spatial_dims}")
        if not channels:
            raise ValueError("channels must list at least one width")
        self.out_shape = tuple(out_shape)
        stages = len(channels) - 1
        self.base_shape = tuple(math.ceil(size / 2**stages) for size in out_shape)
        self.project = nn.Sequential(
            nn.Linear(latent_dim, channels[0] * math.prod(self.base_shape)),
            nn.Unflatten(1, (channels[0], *self.base_shape)),
            nn.LeakyReLU(ACT[1]["negative_slope"]),
        )
        layers: list[nn.Module] = []
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            layers.append(Convolution(spatial_dims, c_in, c_out, kernel_size=3, act=ACT, norm=None))
            layers.append(
                Convolution(
                    spatial_dims, c_out, c_out, strides=2, kernel_size=2, is_transposed=True,
                    act=ACT, norm=None, padding=0, output_padding=0,
                )
            )
        layers.append(Convolution(spatial_dims, channels[-1], 1, kernel_size=3, conv_only=True))
        self.body = nn.Sequential(*layers)
        self.template = nn.Parameter(torch.zeros(1, 1, *self.out_shape))

    @torch.no_grad()
    def init_template(self, images: Tensor) -> None:
        """Start every output at the mean of ``images`` (N, 1, *out_shape) in [0, 1]."""
        mean = images.float().mean(0, keepdim=True).clamp(1e-3, 1 - 1e-3)
        self.template.copy_(torch.logit(mean).to(self.template.device))

    def forward(self, z: Tensor) -> Tensor:
        raw = self.body(self.project(z))
        raw = raw[(..., *self._crop(raw.shape[2:]))] + self.template
        return torch.sigmoid(raw)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _crop(self, grid: Sequence[int]) -> tuple[slice, ...]:
        return tuple(slice((g - o) // 2, (g - o) // 2 + o) for g, o in zip(grid, self.out_shape))


def build_decoder(model: ModelConfig, sample_shape: Sequence[int]) -> Decoder:
    """The generator ``model`` describes for samples of ``sample_shape``: 2D slices or 3D volumes."""
    check_decoder_size(model, sample_shape)
    return Decoder(len(sample_shape), model.latent_dim, tuple(sample_shape), model.channels)


def decoder_parameters(model: ModelConfig, sample_shape: Sequence[int]) -> int:
    """The generator's size, counted on torch's meta device: no memory, no random draws."""
    with torch.device("meta"):
        return Decoder(len(sample_shape), model.latent_dim, tuple(sample_shape), model.channels).parameter_count()


def check_decoder_size(model: ModelConfig, sample_shape: Sequence[int]) -> None:
    """Refuse a generator too large to allocate before anything tries (a huge first layer used to abort the process)."""
    count = decoder_parameters(model, sample_shape)
    if count > MAX_PARAMETERS:
        raise UserError(
            f"config key 'model.channels' with model.latent_dim and data.shape gives a decoder of {count:,} parameters; "
            f"at most {MAX_PARAMETERS:,} are allowed (use fewer or narrower channels, or a smaller grid)"
        )
