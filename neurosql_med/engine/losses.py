"""Per-sample reconstruction loss |a - b|_1 + w (1 - SSIM(a, b)) (+ a Laplacian-pyramid L1), and its all-pairs form.

The assignment step needs the loss of every (image, decoded lattice point) pair, so the
loss exposes a pairwise method that shares the per-image SSIM statistics across pairs.
With tissue labels the loss adds ``label_weight`` x (cross-entropy + soft Dice) of the
label logits, and its all-pairs form uses matrix products of one-hot labels against
log-softmax and softmax outputs, so a code is matched to an image and its anatomy
without ever forming n^2 label volumes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import Tensor

SSIM_K1 = 0.01
SSIM_K2 = 0.03
# Voxels of pair images filtered at once in `pairwise`: 1 MB per float32 temporary, small
# enough for the block's chain of element-wise operations to stay near the cache, large
# enough that Python overhead is negligible (>= 50 2D 64x80 pairs per block).
PAIR_VOXEL_BUDGET = 1 << 18
DICE_SMOOTH = 1e-5  # MONAI DiceLoss's smooth_nr and smooth_dr, so both forms agree


def gaussian_window(window: int, sigma: float) -> Tensor:
    """1-D normalised Gaussian taps, the same as MONAI's SSIM kernel so values agree."""
    offsets = torch.arange(window, dtype=torch.float32) - (window - 1) / 2
    taps = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return taps / taps.sum()


def gradient_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Per-sample mean absolute difference of the images' finite differences along every axis.

    L1 and SSIM forgive a soft edge or a faint mottle that a classifier spots at once;
    matching the gradients asks for the edges themselves.
    """
    with _float32(pred):
        pred, target = pred.float(), target.float()
        terms = [(pred.diff(dim=axis) - target.diff(dim=axis)).abs().flatten(1).mean(1) for axis in range(2, pred.ndim)]
        return torch.stack(terms).mean(0)


def laplacian_pyramid(images: Tensor, levels: int) -> list[Tensor]:
    """The Laplacian pyramid of (N, C, *S) images, finest band first: g_j - up(g_j+1), then the coarsest g.

    g_j+1 is g_j averaged over 2x2(x2) blocks (a partial block at an odd edge averages what
    it covers); up is a linear resize back. A level stops early once an axis is 1 voxel.
    """
    pool = F.avg_pool2d if images.ndim == 4 else F.avg_pool3d
    mode = "bilinear" if images.ndim == 4 else "trilinear"
    bands, current = [], images
    for _ in range(levels - 1):
        if min(current.shape[2:]) < 2:
            break
        coarse = pool(current, 2, ceil_mode=True)
        bands.append(current - F.interpolate(coarse, size=current.shape[2:], mode=mode, align_corners=False))
        current = coarse
    return bands + [current]


def laplacian_l1(pred: Tensor, target: Tensor, levels: int) -> Tensor:
    """Per-sample sum over pyramid levels of each level's mean |difference|.

    GLO's Lap1 loss (Bojanowski et al.): each level's sum weighted by 2^2j, which is its
    mean up to one constant. A blurred edge costs at every fine level, so the loss asks
    for sharp detail where plain L1 is content with the average.
    """
    with _float32(pred):
        pairs = zip(laplacian_pyramid(pred.float(), levels), laplacian_pyramid(target.float(), levels))
        return torch.stack([(a - b).abs().flatten(1).mean(1) for a, b in pairs]).sum(0)


def pyramid_features(images: Tensor, levels: int) -> Tensor:
    """Each image's pyramid levels flattened side by side, each divided by its size: L1 between two is `laplacian_l1`."""
    return torch.cat([band.flatten(1) / band[0].numel() for band in laplacian_pyramid(images.float(), levels)], dim=1)


@torch.no_grad()
def pairwise_laplacian(outputs: Tensor, images: Tensor, levels: int) -> Tensor:
    """`laplacian_l1` of every (image i, output j) pair as a (k, m) float32 matrix: one ``torch.cdist``."""
    with _float32(outputs):
        return torch.cdist(pyramid_features(images, levels), pyramid_features(outputs, levels), p=1)


@dataclass
class ImageTerms:
    """The per-sample parts of the image loss, unweighted: training reports them beside the loss."""

    l1: Tensor
    ssim: Tensor | None  # None where the loss has no SSIM term
    laplacian: Tensor | None  # the Laplacian-pyramid L1; None where the loss has no such term


class ReconstructionLoss(torch.nn.Module):
    """Mean absolute error plus ``ssim_weight`` times (1 - SSIM), one value per sample.

    With ``laplacian_weight`` > 0 it adds that times the Laplacian-pyramid L1 of
    ``laplacian_levels`` levels (`laplacian_l1`), in generator steps and pairwise alike.

    SSIM uses VALID windows only: zero padding makes the border windows of two unrelated
    volumes look alike. The Gaussian window is separable, and the five local statistics
    are filtered together, one pass per axis, much faster in 3D than MONAI's dense kernel
    (docs/decisions.md).
    """

    def __init__(
        self, spatial_dims: int, ssim_weight: float = 0.8, window: int = 7, sigma: float = 1.5, label_weight: float = 1.0,
        laplacian_weight: float = 0.0, laplacian_levels: int = 4,
    ):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        self.spatial_dims = spatial_dims
        self.ssim_weight = ssim_weight
        self.label_weight = label_weight
        self.laplacian_weight = laplacian_weight
        self.laplacian_levels = laplacian_levels
        self.c1 = SSIM_K1**2
        self.c2 = SSIM_K2**2
        self.taps: list[float] = gaussian_window(window, sigma).tolist()

    def forward(self, pred: Tensor, target: Tensor, labels: Tensor | None = None) -> Tensor:
        """Per-sample loss; ``pred`` is (N, 1, ...), or (N, 1 + K, ...) image and label logits with ``labels``."""
        return self.combined(*self.terms(pred, target, labels))

    def combined(self, image: ImageTerms, label: Tensor | None) -> Tensor:
        """The loss from its `terms`: the weighted image terms plus ``label_weight`` times the label loss."""
        total = self.image_total(image)
        return total if label is None else total + self.label_weight * label

    def terms(self, pred: Tensor, target: Tensor, labels: Tensor | None = None) -> tuple[ImageTerms, Tensor | None]:
        """The per-sample image terms and, with ``labels``, the unweighted label loss: what training reports apart."""
        if labels is None:
            return self.image_terms(pred, target), None
        return self.image_terms(pred[:, :1], target), label_loss(pred[:, 1:], labels)

    def image_loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return self.image_total(self.image_terms(pred, target))

    def image_terms(self, pred: Tensor, target: Tensor) -> ImageTerms:
        """Per-sample L1, and SSIM and pyramid L1 where the loss weighs them."""
        with _float32(pred):
            pred, target = pred.float(), target.float()
            return ImageTerms((pred - target).abs().flatten(1).mean(1),
                              self.ssim(pred, target) if self.ssim_weight else None,
                              laplacian_l1(pred, target, self.laplacian_levels) if self.laplacian_weight else None)

    def image_total(self, terms: ImageTerms) -> Tensor:
        """L1 + ``ssim_weight`` (1 - SSIM) + ``laplacian_weight`` pyramid L1, per sample."""
        loss = terms.l1
        if terms.ssim is not None:
            loss = loss + self.ssim_weight * (1 - terms.ssim)
        if terms.laplacian is not None:
            loss = loss + self.laplacian_weight * terms.laplacian
        return loss

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
    def pairwise(self, outputs: Tensor, images: Tensor, labels: Tensor | None = None, chunk: int | None = None) -> Tensor:
        """Loss of every (image i, output j) pair as a (k, m) float32 matrix, without gradients.

        The L1 term is one ``torch.cdist``. For SSIM the local means and variances of each
        image and each output are filtered once; per pair only the product x_i * y_j is,
        in blocks of at most ``chunk`` pairs (default: PAIR_VOXEL_BUDGET voxels' worth), so
        the k * m pair images are never all in memory. With ``labels`` the outputs carry
        label logits and `pairwise_label_loss` is added.
        """
        if labels is not None:
            image_cost = self.pairwise(outputs[:, :1], images, chunk=chunk)
            return image_cost + self.label_weight * pairwise_label_loss(outputs[:, 1:], labels)
        with _float32(outputs):
            x, y = images.float(), outputs.float()
            loss = torch.cdist(x.flatten(1), y.flatten(1), p=1) / x[0].numel()
            if self.ssim_weight:
                loss += self.ssim_weight * (1 - self._pairwise_ssim(x, y, chunk))
            if self.laplacian_weight:
                loss += self.laplacian_weight * pairwise_laplacian(y, x, self.laplacian_levels)
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


def label_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-sample voxel-mean cross-entropy plus soft Dice (MONAI's, every class weighted alike) of (N, K, ...) logits."""
    with _float32(logits):
        logits = logits.float()
        cross_entropy = F.cross_entropy(logits, labels[:, 0], reduction="none").flatten(1).mean(1)
        dice = DiceLoss(to_onehot_y=True, softmax=True, reduction="none", smooth_nr=DICE_SMOOTH, smooth_dr=DICE_SMOOTH)
        return cross_entropy + dice(logits, labels).flatten(1).mean(1)


@torch.no_grad()
def pairwise_label_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """`label_loss` of every (labels i, logits j) pair as a (k, m) float32 matrix, by matrix products.

    Cross-entropy is -<onehot_i, log_softmax_j> / V over all K*V entries; the Dice
    intersection of class c is <onehot_i[c], softmax_j[c]>, one (k, V) x (V, m) product
    per class, so memory is the k + m label volumes, never k * m of them.
    """
    with _float32(logits):
        classes = logits.shape[1]
        voxels = logits[0, 0].numel()
        onehot = F.one_hot(labels[:, 0].flatten(1), classes).float().permute(2, 0, 1)  # (K, k, V)
        log_p = torch.log_softmax(logits.float(), dim=1).flatten(2).transpose(0, 1)  # (K, m, V)
        cross_entropy = -torch.einsum("ckv,cmv->km", onehot, log_p) / voxels
        p = log_p.exp_()
        intersection = torch.bmm(onehot, p.transpose(1, 2))  # (K, k, m)
        sizes = onehot.sum(2)[:, :, None] + p.sum(2)[:, None, :]
        dice = 1 - (2 * intersection + DICE_SMOOTH) / (sizes + DICE_SMOOTH)
        return cross_entropy + dice.mean(0)


@torch.no_grad()
def dice_counts(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per class, the voxels where argmax(logits) and labels agree and the two maps' sizes summed.

    Summed over batches they give each class's Dice over a whole epoch, 2 * agree / sizes,
    without averaging per-sample ratios that are undefined where a slice lacks a class.
    """
    classes = logits.shape[1]
    predicted = F.one_hot(logits.argmax(1).flatten(1), classes)
    true = F.one_hot(labels[:, 0].flatten(1), classes)
    return (predicted * true).sum((0, 1)), (predicted + true).sum((0, 1))


def _float32(reference: Tensor) -> torch.autocast:
    """Disable autocast: SSIM's variance terms cancel badly in half precision."""
    return torch.autocast(reference.device.type, enabled=False)
