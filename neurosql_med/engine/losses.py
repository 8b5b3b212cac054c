"""Per-sample reconstruction loss |a - b|_1 + w (1 - SSIM(a, b)), and its all-pairs form.

The assignment step needs the loss of every (image, decoded lattice point) pair, so the
loss exposes a pairwise method that shares the per-image SSIM statistics across pairs.
"""
from __future__ import annotations

import torch
from torch import Tensor

SSIM_K1 = 0.01
SSIM_K2 = 0.03
# Voxels of pair images filtered at once in `pairwise`: 1 MB per float32 temporary, small
# enough for the block's chain of element-wise operations to stay near the cache, large
# enough that Python overhead is negligible (>= 50 2D 64x80 pairs per block).
PAIR_VOXEL_BUDGET = 1 << 18


def gaussian_window(window: int, sigma: float) -> Tensor:
    """1-D normalised Gaussian taps, the same as MONAI's SSIM kernel so values agree."""
    offsets = torch.arange(window, dtype=torch.float32) - (window - 1) / 2
    taps = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return taps / taps.sum()


class ReconstructionLoss(torch.nn.Module):
    """Mean absolute error plus ``ssim_weight`` times (1 - SSIM), one value per sample.

    SSIM uses VALID windows only: zero padding makes the border windows of two unrelated
    volumes look alike. The Gaussian window is separable, and the five local statistics
    are filtered together, one pass per axis, much faster in 3D than MONAI's dense kernel
    (docs/decisions.md).
    """

    def __init__(self, spatial_dims: int, ssim_weight: float = 0.8, window: int = 7, sigma: float = 1.5):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        self.spatial_dims = spatial_dims
        self.ssim_weight = ssim_weight
        self.c1 = SSIM_K1**2
        self.c2 = SSIM_K2**2
        self.taps: list[float] = gaussian_window(window, sigma).tolist()

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        with _float32(pred):
            pred, target = pred.float(), target.float()
            l1 = (pred - target).abs().flatten(1).mean(1)
            if self.ssim_weight == 0:
                return l1
            return l1 + self.ssim_weight * (1 - self.ssim(pred, target))

    def ssim(self, pred: Tensor, target: Tensor) -> Tensor:
        """Per-sample SSIM (data range 1) averaged over all valid window positions."""
        with _float32(pred):
            x, y = pred.float(), target.float()
            stats = self._blur(torch.cat([x, y, x * x, y * y, x * y], dim=1))
            mu_x, mu_y, e_xx, e_yy, e_xy = stats.unbind(1)
            t = mu_x * mu_y
            luminance = (2 * t + self.c1) / (mu_x**2 + mu_y**2 + self.c1)
            contrast = (2 * (e_xy - t) + self.c2) / (e_xx - mu_x**2 + e_yy - mu_y**2 + self.c2)
            return (luminance * contrast).flatten(1).mean(1)

    @torch.no_grad()
    def pairwise(self, outputs: Tensor, images: Tensor, chunk: int | None = None) -> Tensor:
        """Loss of every (image i, output j) pair as a (k, m) float32 matrix, without gradients.

        The L1 term is one ``torch.cdist``. For SSIM the local means and variances of each
        image and each output are filtered once; per pair only the product x_i * y_j is,
        in blocks of at most ``chunk`` pairs (default: PAIR_VOXEL_BUDGET voxels' worth), so
        the k * m pair images are never all in memory.
        """
        with _float32(outputs):
            x, y = images.float(), outputs.float()
            loss = torch.cdist(x.flatten(1), y.flatten(1), p=1) / x[0].numel()
            if self.ssim_weight:
                loss += self.ssim_weight * (1 - self._pairwise_ssim(x, y, chunk))
            return loss

    def _pairwise_ssim(self, x: Tensor, y: Tensor, chunk: int | None) -> Tensor:
        k, m = x.shape[0], y.shape[0]
        pairs = chunk or max(1, PAIR_VOXEL_BUDGET // x[0].numel())
        block_m = min(m, pairs)
        block_k = max(1, pairs // block_m)
        terms_x, terms_y = self._pair_terms(x), self._pair_terms(y)
        ssim = x.new_empty(k, m)
        for i in range(0, k, block_k):
            rows = [t[i : i + block_k, None] for t in terms_x]
            for j in range(0, m, block_m):
                columns = [t[None, j : j + block_m] for t in terms_y]
                ssim[i : i + block_k, j : j + block_m] = self._block_ssim(rows, columns)
        return ssim

    def _pair_terms(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per-image parts of the SSIM map: image, local mean, mean^2 + c1/2, variance + c2/2."""
        mu, e_sq = self._blur(torch.cat([images, images * images], dim=1)).unbind(1)
        mu_sq = mu * mu
        return images[:, 0], mu, mu_sq + self.c1 / 2, e_sq - mu_sq + self.c2 / 2

    def _block_ssim(self, rows: list[Tensor], columns: list[Tensor]) -> Tensor:
        """Mean SSIM of an (a, b) block of pairs from broadcastable per-image terms.

        SSIM = 4 (t + c1/2)(e_xy - t + c2/2) / ((A_x + A_y)(V_x + V_y)) with t = mu_x mu_y,
        A = mu^2 + c1/2 and V = var + c2/2; computed in place to limit memory traffic.
        """
        (x, mu_x, a_x, v_x), (y, mu_y, a_y, v_y) = rows, columns
        block = (x.shape[0], y.shape[1])
        e_xy = self._blur((x * y).flatten(0, 1)[:, None])[:, 0].reshape(*block, *mu_x.shape[2:])
        t = mu_x * mu_y
        e_xy.sub_(t).add_(self.c2 / 2)
        t.add_(self.c1 / 2).mul_(e_xy).div_((a_x + a_y).mul_(v_x + v_y))
        return 4 * t.flatten(2).mean(2)

    def _blur(self, stack: Tensor) -> Tensor:
        """Valid Gaussian filtering of every channel of (N, C, *S): w shifted multiply-adds per axis.

        As fast as grouped 1-D convolutions, and unlike them as fast for the thousands of
        single-channel pair products of `pairwise` (docs/decisions.md); one code path on
        CPU, GPU and under autograd.
        """
        window = len(self.taps)
        for axis in range(2, stack.ndim):
            valid = stack.shape[axis] - window + 1
            if valid < 1:
                raise ValueError(f"SSIM window {window} is larger than an image axis of {stack.shape[axis]} voxels")
            out = stack.narrow(axis, 0, valid) * self.taps[0]
            for shift in range(1, window):
                out.add_(stack.narrow(axis, shift, valid), alpha=self.taps[shift])
            stack = out
        return stack


def pairwise_mse(outputs: Tensor, images: Tensor) -> Tensor:
    """Mean squared error of every (image i, output j) pair as a (k, m) float32 matrix.

    Uses ||a||^2 + ||b||^2 - 2ab after subtracting the mean image, which removes the
    large common part and with it most of the float32 cancellation error.
    """
    x, y = images.float().flatten(1), outputs.float().flatten(1)
    centre = x.mean(0, keepdim=True)
    x, y = x - centre, y - centre
    squared = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T
    return squared.clamp_min_(0) / x.shape[1]


def _float32(reference: Tensor) -> torch.autocast:
    """Disable autocast: SSIM's variance terms cancel badly in half precision."""
    return torch.autocast(reference.device.type, enabled=False)
