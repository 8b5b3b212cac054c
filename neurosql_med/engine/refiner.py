"""Detail drawn by a stochastic refiner (``model.texture_mode: refiner``), trained by conditional IMLE.

G is the conditional mean of the images coded near u, so it smooths what varies between
them: the cortical ribbon, thin sulci, acquisition noise. The Gaussian textures
(engine/residual.py, engine/tissue_texture.py) add noise with the residual's spectrum but
draw no anatomy, and a strong classifier still tells every G(u) apart. Here a small
network R reads G(u), its one-hot label map (for a labelled model) and a white-noise map
z, and draws the residual; the global residual texture is then added on top, at strength
``model.texture``: a sample is grain(G(u) + R(G(u), labels, z)).

R is trained without a discriminator, by implicit maximum likelihood estimation (IMLE,
Li & Malik 2018; conditional IMLE, Li et al. 2020) — NeuroSQL's own idea of matching each
real image to the nearest of a set of generated ones, applied to the residual. For each
training image, ``CANDIDATES`` noise maps are decoded; for each ``PATCH``-sized tile the
candidate whose output lies nearest the real tile (L1) is chosen; R then steps towards the
real image from the noise map made of the chosen tiles. A plain L1 fit of R would learn the
conditional median — the blur; choosing per tile gives every region its own nearest
candidate, so R is pulled towards covering the real detail rather than averaging it.

R trains on the reconstructions G(u_σ(i)) and G's own label maps — what it reads for fresh
samples too — after the generator is fitted, with G frozen. Its last convolution starts at
zero, so R starts as "no refinement". R draws the anatomy-following detail but under-draws
the acquisition noise (docs/results/realistic.md), which the grain supplies. Voxels darker
than the measured background keep G(u), as with the Gaussian textures. Only R's weights and
the grain's summaries are kept, never a residual image.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from torch import Tensor, nn

from neurosql_med.engine.decoder import ACT
from neurosql_med.engine.residual import ResidualTexture
from neurosql_med.errors import UserError

FORMAT = "nsql-med-texture/3"
NOISE_CHANNELS = 4  # white-noise maps R reads beside G(u) and its labels
WIDTH = 24  # R's channels at full resolution (twice that at half resolution)
CANDIDATES = 8  # noise maps decoded per training image and step; each tile keeps its nearest
PATCH = 4  # side of the tiles each chosen independently (voxels)
BATCH = 8  # training images per step
LR = 2e-3
GRAIN_STREAM = 0x5A5A5A  # the grain's field seed is the sample's seed XOR this, apart from its noise map


class RefinerNet(nn.Module):
    """Full-resolution convolutions around a half-resolution middle (a wider view for little cost); residual out."""

    def __init__(self, spatial_dims: int, num_labels: int):
        super().__init__()
        conv = lambda cin, cout, **kw: Convolution(spatial_dims, cin, cout, kernel_size=3, act=ACT, norm=None, **kw)  # noqa: E731
        self.num_labels = num_labels
        self.head = conv(1 + num_labels + NOISE_CHANNELS, WIDTH)
        self.down = conv(WIDTH, 2 * WIDTH, strides=2)
        self.middle = nn.Sequential(conv(2 * WIDTH, 2 * WIDTH), conv(2 * WIDTH, 2 * WIDTH, dilation=2))
        self.up = conv(2 * WIDTH, WIDTH)
        self.tail = conv(2 * WIDTH, WIDTH)
        self.out = Convolution(spatial_dims, WIDTH, 1, kernel_size=3, conv_only=True)
        nn.init.zeros_(self.out.conv.weight)
        nn.init.zeros_(self.out.conv.bias)

    def forward(self, images: Tensor, labels: Tensor | None, noise: Tensor) -> Tensor:
        """The residual for ``images`` (B, 1, *S) with their label maps (B, 1, *S) int and ``noise`` (B, NOISE_CHANNELS, *S)."""
        parts = [images, noise]
        if self.num_labels:
            parts.insert(1, F.one_hot(labels[:, 0].long(), self.num_labels).movedim(-1, 1).to(images.dtype))
        head = self.head(torch.cat(parts, 1))
        middle = self.middle(self.down(head))
        up = self.up(F.interpolate(middle, size=head.shape[2:], mode="nearest"))
        return self.out(self.tail(torch.cat([head, up], 1)))


def composite(images: Tensor, residual: Tensor, background: float) -> Tensor:
    """G(u) plus the residual inside tissue, clamped to [0, 1]; the background keeps G(u)."""
    return torch.where(images < background, images, (images + residual).clamp(0, 1))


@dataclass
class RefinerTexture:
    """A trained refiner, and the global residual texture added after it."""

    net: RefinerNet
    grain: ResidualTexture  # its strength is model.texture; its background is also the refiner's

    def apply(self, images: Tensor, seeds: Sequence[int], labels: Tensor | None = None) -> Tensor:
        """``images`` (B, 1, *sample_shape) in [0, 1] refined, then grained; image b's draws from ``seeds[b]``."""
        grain_seeds = [int(seed) ^ GRAIN_STREAM for seed in seeds]
        return self.grain.apply(self.refine(images, seeds, labels), grain_seeds, labels)

    @torch.no_grad()
    def refine(self, images: Tensor, seeds: Sequence[int], labels: Tensor | None = None) -> Tensor:
        """The refiner's part alone, image b from the noise map of ``seeds[b]``.

        One image at a time, so an image's bytes never depend on its batch.
        """
        if len(seeds) != len(images):
            raise ValueError(f"{len(images)} images but {len(seeds)} seeds")
        if self.net.num_labels and labels is None:
            raise ValueError("a labelled model's refiner needs the samples' label maps")
        out = torch.empty_like(images)
        for b, seed in enumerate(seeds):
            image = images[b:b + 1].float()
            noise = noise_map(int(seed), image.shape[2:])
            residual = self.net(image, None if labels is None else labels[b:b + 1], noise)
            out[b] = composite(image, residual, self.grain.background)[0]
        return out

    def state(self) -> dict:
        """Tensors and numbers only: saved with `torch.save`, read back with ``weights_only=True``."""
        return {"format": FORMAT, "weights": dict(self.net.state_dict()), "num_labels": self.net.num_labels,
                "grain": self.grain.state()}

    @classmethod
    def from_state(cls, state: dict, sample_shape: Sequence[int], num_labels: int, where: str) -> RefinerTexture:
        """The refiner in ``state``, checked against the model's grid and classes; a damaged one is a UserError."""
        if state.get("num_labels") != num_labels:
            raise UserError(f"{where}: the refiner reads {state.get('num_labels')} label classes; the model has {num_labels}")
        net = RefinerNet(len(sample_shape), num_labels)
        weights = state.get("weights")
        try:
            net.load_state_dict(weights)
        except (RuntimeError, TypeError, AttributeError):
            raise UserError(f"{where}: 'weights' are not those of an nsql-med refiner") from None
        if not all(torch.isfinite(w).all() for w in weights.values()):
            raise UserError(f"{where}: 'weights' must be finite")
        grain = state.get("grain")
        if not isinstance(grain, dict):
            raise UserError(f"{where}: 'grain' must hold the residual texture added after the refiner")
        return cls(net.eval(), ResidualTexture.from_state(grain, sample_shape, f"{where} (grain)"))


def noise_map(seed: int, shape: Sequence[int]) -> Tensor:
    """The white-noise map (1, NOISE_CHANNELS, *shape) of one sample."""
    return torch.randn((1, NOISE_CHANNELS, *shape), generator=torch.Generator().manual_seed(seed))


def fit_refiner(
    images: Tensor, reconstructions: Tensor, labels: Tensor | None, num_labels: int, grain: ResidualTexture, steps: int,
    seed: int, device: torch.device = torch.device("cpu"), progress: Callable[[int, float], None] | None = None,
) -> RefinerTexture:
    """The refiner of a fitted model, from its training images, their reconstructions G(u_σ(i)) and G's label maps,
    with ``grain`` (the global texture of the same residuals) to add after it.

    All (N, 1, *sample_shape) on the CPU; ``progress(step, loss)`` is called after every step.
    """
    background = grain.background
    shape = tuple(images.shape[2:])
    with torch.random.fork_rng(devices=[]):  # R's initial weights, without moving the caller's random stream
        torch.manual_seed(seed)
        net = RefinerNet(len(shape), num_labels).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=LR)
    draws = torch.Generator().manual_seed(seed)
    for step in range(steps):
        index = torch.randint(len(images), (min(BATCH, len(images)),), generator=draws)
        x, g = images[index].float().to(device), reconstructions[index].float().to(device)
        lab = None if labels is None else labels[index].to(device)
        noise = torch.randn((len(index), CANDIDATES, NOISE_CHANNELS, *shape), generator=draws).to(device)
        chosen = _nearest_tiles(net, x, g, lab, noise, background)
        loss = (composite(g, net(g, lab, chosen), background) - x).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if progress is not None:
            progress(step + 1, loss.item())
    return RefinerTexture(net.cpu().eval(), grain)


@torch.no_grad()
def _nearest_tiles(net: RefinerNet, x: Tensor, g: Tensor, labels: Tensor | None, noise: Tensor, background: float) -> Tensor:
    """Per image, the noise map whose every tile is the candidate's whose output lies nearest that tile of ``x``."""
    b, m = noise.shape[:2]
    spatial = x.shape[2:]
    repeat = lambda t: t.repeat_interleave(m, 0)  # noqa: E731
    residuals = net(repeat(g), None if labels is None else repeat(labels), noise.flatten(0, 1))
    outputs = composite(repeat(g), residuals, background)
    error = (outputs - repeat(x)).abs()
    pool = F.avg_pool2d if len(spatial) == 2 else F.avg_pool3d
    tiles = pool(error, PATCH, ceil_mode=True)  # (b * m, 1, *coarse)
    best = tiles.view(b, m, *tiles.shape[2:]).argmin(1)  # (b, *coarse)
    for axis, size in enumerate(spatial):
        best = best.repeat_interleave(PATCH, axis + 1).narrow(axis + 1, 0, size)
    index = best[:, None, None].expand(b, 1, noise.shape[2], *spatial)
    return noise.gather(1, index)[:, 0]
