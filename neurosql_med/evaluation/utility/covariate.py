"""The network `regress` trains: one that must read a brain-wide signal from few subjects.

A MONAI ``Regressor`` (a flattened feature map into a dense head) memorised the 16
training subjects of the realistic cohort (training MAE under a year of age) and stayed at
the trivial answer on held-out subjects. Atrophy, which age acts through there, is a
global, coarse signal read against three sites' contrasts. So, each choice
measured on the real arm at k = 16 (docs/results/realistic.md, "Why the real arm finds no
signal"):

- **rank intensities** (`ForegroundRanks`): each foreground voxel becomes its rank among
  the image's foreground voxels. An increasing map of the intensities leaves ranks unchanged
  (a site's gain exactly; its gamma nearly, as the 2x averaging comes first), while the
  tissue fractions atrophy shifts still set where each tissue's ranks fall;
- **half resolution, then global average pooling**: the head sees the brain-wide mean of
  each feature, not every position, which is what let the dense head memorise subjects;
- **dropout** before the linear head.
"""
from __future__ import annotations

from collections.abc import Sequence

from monai.networks.layers.factories import Conv, Norm, Pool
from torch import Tensor, nn

WIDTHS = (16, 32, 64)  # feature channels per block; every block after the first halves the grid
DROPOUT = 0.5
FOREGROUND = 0.02  # intensities at or below this (of the scan's 0-1 range) are background: rank 0


class ForegroundRanks(nn.Module):
    """Each image's foreground voxels -> their rank among its foreground voxels, in (0, 1]; background -> 0.

    Contrast-invariant: any increasing map of a scan's intensities gives the same ranks.
    """

    def forward(self, x: Tensor) -> Tensor:
        flat = x.flatten(1)
        foreground = flat > FOREGROUND
        rank = flat.argsort(1).argsort(1).float()  # background (lowest) first, so foreground ranks follow it
        background = (~foreground).sum(1, keepdim=True)
        count = foreground.sum(1, keepdim=True).clamp(min=1)
        return ((rank - background + 1) / count * foreground).view_as(x)


def covariate_network(sample_shape: Sequence[int], outputs: int) -> nn.Module:
    """Ranks at half resolution, conv-norm-ReLU blocks, global average pooling, dropout, a linear head.

    ``outputs``: 1 for regress (or a class per level). 2D or 3D, whatever ``sample_shape``.
    """
    dims = len(sample_shape)
    layers: list[nn.Module] = [Pool[Pool.AVG, dims](2, ceil_mode=True), ForegroundRanks()]
    channels = 1
    for i, width in enumerate(WIDTHS):
        if i:
            layers.append(Pool[Pool.MAX, dims](2, ceil_mode=True))
        layers += [Conv[Conv.CONV, dims](channels, width, 3, padding=1), Norm[Norm.INSTANCE, dims](width, affine=True),
                   nn.ReLU()]
        channels = width
    layers += [Pool[Pool.ADAPTIVEAVG, dims](1), nn.Flatten(), nn.Dropout(DROPOUT), nn.Linear(channels, outputs)]
    return nn.Sequential(*layers)


def covariate_network_name() -> str:
    """How utility.json and utility.md name the network."""
    widths = "/".join(map(str, WIDTHS))
    return (f"rank-normalised CNN at half resolution (channels {widths}, instance norm), "
            f"global average pooling, dropout {DROPOUT}")
