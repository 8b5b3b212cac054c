"""The generator G: latent code -> image in [0, 1] (and label logits), for 2D slices and 3D volumes."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import torch
from monai.networks.blocks import Convolution, UpSample
from torch import Tensor, nn

from neurosql_med.errors import UserError

if TYPE_CHECKING:  # a type only: config imports nothing from engine, and engine needs no config at run time
    from neurosql_med.config import ModelConfig

ACT = ("leakyrelu", {"negative_slope": 0.2})
NORM_GROUPS = 8  # GroupNorm groups of a modulated block (fewer when the width is not a multiple)
STYLE_WIDTH = 128  # the style vector every modulated block reads
MAX_PARAMETERS = 200_000_000  # 0.8 GB of float32 weights, ~3.2 GB with gradients and AdamW state


class TemplateOutput(nn.Module):
    """What every generator shares: outputs on top of learned mean templates, and a centre crop to the sample grid.

    The output is sigmoid(body + template), the template a learned per-voxel logit that
    ``init_template`` sets to the training images' mean: started from grey instead, a 3D
    fit collapsed to all-black (docs/decisions.md). With K label classes the body also
    outputs K logits, each plus a learned per-voxel label template set to the training
    labels' log class frequencies. Output channel 0 is the image, channels 1..K the logits.
    """

    out_shape: tuple[int, ...]
    num_labels: int

    def _set_grid(self, spatial_dims: int, out_shape: Sequence[int], channels: Sequence[int], num_labels: int) -> None:
        """The output grid, and the coarse grid of the first layer: the output rounded up to 2^stages, halved per stage."""
        if spatial_dims not in (2, 3) or len(out_shape) != spatial_dims:
            raise ValueError(f"out_shape {tuple(out_shape)} does not match spatial_dims={spatial_dims}")
        if not channels:
            raise ValueError("channels must list at least one width")
        self.out_shape = tuple(out_shape)
        self.num_labels = num_labels
        self.base_shape = tuple(math.ceil(size / 2 ** (len(channels) - 1)) for size in out_shape)

    def _add_templates(self) -> None:
        """Registered after the body, so a model's parameters keep their order (and model.pt its bytes)."""
        self.template = nn.Parameter(torch.zeros(1, 1, *self.out_shape))
        if self.num_labels:  # registered only for labelled models: an unlabelled model keeps its exact parameters
            self.label_template = nn.Parameter(torch.zeros(1, self.num_labels, *self.out_shape))

    @torch.no_grad()
    def init_template(self, images: Tensor) -> None:
        """Start every output at the mean of ``images`` (N, 1, *out_shape) in [0, 1]."""
        mean = images.float().mean(0, keepdim=True).clamp(1e-3, 1 - 1e-3)
        self.template.copy_(torch.logit(mean).to(self.template.device))

    @torch.no_grad()
    def init_label_template(self, labels: Tensor) -> None:
        """Start the label logits at the per-voxel log class frequencies of ``labels`` (N, 1, *out_shape).

        Counts are smoothed by half a sample per class, so a class never seen at a voxel
        starts unlikely rather than impossible (log 0).
        """
        counts = torch.stack([(labels[:, 0] == k).sum(0) for k in range(self.num_labels)]).float()
        frequency = (counts + 0.5) / (len(labels) + 0.5 * self.num_labels)
        self.label_template.copy_(frequency.log()[None].to(self.label_template.device))

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _output(self, raw: Tensor) -> Tensor:
        """The body's raw output on the padded grid → cropped image (and label logits) on their templates."""
        raw = raw[(..., *self._crop(raw.shape[2:]))]
        if not self.num_labels:
            return torch.sigmoid(raw + self.template)
        image = torch.sigmoid(raw[:, :1] + self.template)
        return torch.cat([image, raw[:, 1:] + self.label_template], dim=1)

    def _crop(self, grid: Sequence[int]) -> tuple[slice, ...]:
        return tuple(slice((g - o) // 2, (g - o) // 2 + o) for g, o in zip(grid, self.out_shape))


class RefineBlock(nn.Module):
    """Two 3x3 convolutions and a skip at full resolution, where the plain decoder otherwise has one linear convolution.

    The second convolution starts at zero, so each block starts as the identity and a
    decoder with refine blocks starts as the one without them: the blocks add detail only
    where the loss asks for it.
    """

    def __init__(self, spatial_dims: int, channels: int):
        super().__init__()
        self.conv = Convolution(spatial_dims, channels, channels, kernel_size=3, act=ACT, norm=None)
        self.out = Convolution(spatial_dims, channels, channels, kernel_size=3, conv_only=True)
        nn.init.zeros_(self.out.conv.weight)
        nn.init.zeros_(self.out.conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.out(self.conv(x))


class Decoder(TemplateOutput):
    """Linear layer to a coarse grid, then per stage a 3x3 convolution and a x2 upsampling.

    Each stage convolves at the coarse resolution and only then doubles the grid (a
    stride-2 kernel-2 transposed convolution): full-resolution feature maps are
    memory-bound on a CPU (docs/decisions.md). No normalisation layers, so an image never
    depends on the rest of its batch. The grid is the output shape rounded up to a
    multiple of 2^stages and centre-cropped at the end, so any shape works. With
    ``num_labels`` K > 0 the same body also outputs the K label logits: one network, one
    code per subject for its image and its anatomy (``TemplateOutput``). ``refine_blocks``
    ``RefineBlock``s at full resolution give it capacity where thin sulci and the cortical
    ribbon live.
    """

    def __init__(
        self, spatial_dims: int, latent_dim: int, out_shape: Sequence[int], channels: Sequence[int], num_labels: int = 0,
        upsample: str = "transposed", refine_blocks: int = 0,
    ):
        super().__init__()
        self._set_grid(spatial_dims, out_shape, channels, num_labels)
        self.project = nn.Sequential(
            nn.Linear(latent_dim, channels[0] * math.prod(self.base_shape)),
            nn.Unflatten(1, (channels[0], *self.base_shape)),
            nn.LeakyReLU(ACT[1]["negative_slope"]),
        )
        layers: list[nn.Module] = []
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            layers.append(Convolution(spatial_dims, c_in, c_out, kernel_size=3, act=ACT, norm=None))
            layers.append(upsampler(spatial_dims, c_out, upsample))
        layers.extend(RefineBlock(spatial_dims, channels[-1]) for _ in range(refine_blocks))
        layers.append(Convolution(spatial_dims, channels[-1], 1 + num_labels, kernel_size=3, conv_only=True))
        self.body = nn.Sequential(*layers)
        self._add_templates()

    def forward(self, z: Tensor) -> Tensor:
        return self._output(self.body(self.project(z)))


def upsampler(spatial_dims: int, channels: int, how: str) -> nn.Module:
    """The x2 upsampling of a stage: a stride-2 transposed convolution, or nearest resize then a 3x3 convolution.

    A kernel-2 stride-2 transposed convolution paints each output 2x2 block from one input
    voxel with the same four weights: a known source of checkerboard texture. Resizing
    first and convolving after costs a full-resolution convolution instead.
    """
    if how == "resize":
        return nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            Convolution(spatial_dims, channels, channels, kernel_size=3, act=ACT, norm=None),
        )
    return Convolution(
        spatial_dims, channels, channels, strides=2, kernel_size=2, is_transposed=True,
        act=ACT, norm=None, padding=0, output_padding=0,
    )


class ModulatedBlock(nn.Module):
    """Two 3x3 convolutions and a skip; after each convolution a per-sample normalisation and a FiLM from the style.

    GroupNorm normalises each sample on its own (no batch statistics, so an image never
    depends on its batch); the style vector (from the code u and the condition c) then
    scales and shifts every channel, (1 + gamma) x + beta, so the code steers every
    resolution rather than the first layer only. gamma and beta start at 0.
    """

    def __init__(self, spatial_dims: int, channels: int, style_dim: int):
        super().__init__()
        self.convs = nn.ModuleList(
            Convolution(spatial_dims, channels, channels, kernel_size=3, conv_only=True) for _ in range(2))
        self.norm = nn.GroupNorm(math.gcd(channels, NORM_GROUPS), channels, affine=False)
        self.film = nn.Linear(style_dim, 4 * channels)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        self.act = nn.LeakyReLU(ACT[1]["negative_slope"])

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        shape = (len(x), -1) + (1,) * (x.ndim - 2)
        scale_1, shift_1, scale_2, shift_2 = (t.reshape(shape) for t in self.film(style).chunk(4, dim=1))
        h = self.act(self.norm(self.convs[0](x)) * (1 + scale_1) + shift_1)
        h = self.norm(self.convs[1](h)) * (1 + scale_2) + shift_2
        return self.act(x + h)


class ResidualDecoder(TemplateOutput):
    """Linear layer to a coarse grid, then per resolution a modulated residual block, linear x2 resize between them.

    Every resolution, full resolution included, has two 3x3 convolutions (``ModulatedBlock``)
    modulated by a style vector that a small MLP maps from the generator's input (u, c):
    where the plain ``Decoder`` runs one linear convolution at full resolution, this one
    can draw thin sulci and the cortical ribbon. Between resolutions a 1x1 convolution
    changes the width at the coarse grid and a (bi/tri)linear resize doubles it (MONAI
    ``UpSample``): no transposed-convolution checkerboard. ``channels[s]`` is the width at
    resolution s, the last one at full resolution: keep it small, full-resolution maps
    dominate the CPU cost.
    """

    def __init__(
        self, spatial_dims: int, latent_dim: int, out_shape: Sequence[int], channels: Sequence[int], num_labels: int = 0,
    ):
        super().__init__()
        self._set_grid(spatial_dims, out_shape, channels, num_labels)
        self.mapping = nn.Sequential(nn.Linear(latent_dim, STYLE_WIDTH), nn.LeakyReLU(ACT[1]["negative_slope"]),
                                     nn.Linear(STYLE_WIDTH, STYLE_WIDTH), nn.LeakyReLU(ACT[1]["negative_slope"]))
        self.project = nn.Sequential(
            nn.Linear(latent_dim, channels[0] * math.prod(self.base_shape)),
            nn.Unflatten(1, (channels[0], *self.base_shape)),
        )
        self.blocks = nn.ModuleList(ModulatedBlock(spatial_dims, c, STYLE_WIDTH) for c in channels)
        interp = "bilinear" if spatial_dims == 2 else "trilinear"
        self.ups = nn.ModuleList(
            UpSample(spatial_dims, c_in, c_out, scale_factor=2, mode="nontrainable", interp_mode=interp,
                     align_corners=False)
            for c_in, c_out in zip(channels[:-1], channels[1:]))
        self.head = Convolution(spatial_dims, channels[-1], 1 + num_labels, kernel_size=3, conv_only=True)
        self._add_templates()

    def forward(self, z: Tensor) -> Tensor:
        style = self.mapping(z)
        x = self.project(z)
        for s, block in enumerate(self.blocks):
            if s:
                x = self.ups[s - 1](x)
            x = block(x, style)
        return self._output(self.head(x))


def split_output(output: Tensor) -> tuple[Tensor, Tensor | None]:
    """A generator output as (images (B, 1, ...), label logits (B, K, ...) or None for an unlabelled model)."""
    return output[:, :1], (output[:, 1:] if output.shape[1] > 1 else None)


def build_decoder(
    model: ModelConfig, sample_shape: Sequence[int], num_labels: int = 0, condition_dim: int = 0,
) -> TemplateOutput:
    """The generator ``model`` describes for samples of ``sample_shape`` (2D slices or 3D volumes) and K label classes.

    A conditional generator G(u, c) reads the encoded condition c (``condition_dim``
    numbers) beside the latent u: both enter the first Linear layer together, so an
    unconditional one (``condition_dim`` 0) keeps exactly its parameters.
    """
    check_decoder_size(model, sample_shape, num_labels, condition_dim)
    return _decoder(model, sample_shape, num_labels, condition_dim)


def _decoder(model: ModelConfig, sample_shape: Sequence[int], num_labels: int, condition_dim: int) -> TemplateOutput:
    """``model.decoder``'s network: the plain one (the models before it) or the modulated residual one."""
    inputs, shape = model.latent_dim + condition_dim, tuple(sample_shape)
    if model.decoder == "residual":
        return ResidualDecoder(len(shape), inputs, shape, model.channels, num_labels)
    return Decoder(len(shape), inputs, shape, model.channels, num_labels, model.upsample, model.refine_blocks)


def decoder_parameters(model: ModelConfig, sample_shape: Sequence[int], num_labels: int = 0, condition_dim: int = 0) -> int:
    """The generator's size, counted on torch's meta device: no memory, no random draws."""
    with torch.device("meta"):
        return _decoder(model, sample_shape, num_labels, condition_dim).parameter_count()


def check_decoder_size(model: ModelConfig, sample_shape: Sequence[int], num_labels: int = 0, condition_dim: int = 0) -> None:
    """Refuse a generator too large to allocate before anything tries (a huge first layer used to abort the process)."""
    count = decoder_parameters(model, sample_shape, num_labels, condition_dim)
    if count > MAX_PARAMETERS:
        raise UserError(
            f"config key 'model.channels' with model.latent_dim and data.shape gives a decoder of {count:,} parameters; "
            f"at most {MAX_PARAMETERS:,} are allowed (use fewer or narrower channels, or a smaller grid)"
        )
