"""Pictures people would rather look at than numbers: grids of slices and training curves."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.figure import SubFigure  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from neurosql_med.io.files import atomic_path  # noqa: E402

Images = torch.Tensor | np.ndarray | Sequence[np.ndarray]
OVERLAY_ALPHA = 0.45
LABEL_COLOURS = plt.get_cmap("tab10").colors  # class k > 0 gets colour k - 1; background stays unpainted


def views(image: torch.Tensor | np.ndarray) -> list[np.ndarray]:
    """A 2D sample as itself; a 3D volume as its axial, coronal and sagittal mid-slices.

    Arrays are RAS, so each plane is rotated to put anterior/superior at the top the
    way radiologists look at them.
    """
    a = np.asarray(image, dtype=np.float32)
    a = a[0] if a.ndim in (3, 4) and a.shape[0] == 1 else a
    if a.ndim == 2:
        return [np.rot90(a)]
    x, y, z = (s // 2 for s in a.shape)
    return [np.rot90(a[:, :, z]), np.rot90(a[:, y, :]), np.rot90(a[x, :, :])]


def save_figure(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", facecolor=fig.get_facecolor())
    plt.close(fig)


def image_grid(
    rows: Sequence[tuple[str, Images]],
    path: Path,
    title: str | None = None,
    marked: Sequence[Sequence[bool]] | None = None,
    overlays: Sequence[Images | None] | None = None,
    label_names: Sequence[str] | None = None,
) -> None:
    """One labelled row per group; a red frame marks flagged images (e.g. suspected copies).

    ``overlays``: per row, label maps painted over its images (or None), coloured and
    named in a legend by ``label_names`` (needed with overlays).
    """
    columns = grid_columns(rows)
    fig = plt.figure(figsize=(1.5 * columns, 1.7 * len(rows) + (0.4 if label_names else 0)))
    draw_grid(fig, rows, title=title, marked=marked, overlays=overlays, classes=len(label_names or ()))
    if label_names:
        label_legend(fig, label_names)
    fig.tight_layout()
    save_figure(fig, path)


def label_colours(classes: int) -> ListedColormap:
    """Class k > 0 in colour k - 1 of tab10 (cycled); class 0, background, transparent."""
    colours = [(0.0, 0.0, 0.0, 0.0)] + [(*LABEL_COLOURS[(k - 1) % len(LABEL_COLOURS)], 1.0) for k in range(1, classes)]
    return ListedColormap(colours)


def draw_overlay(ax: plt.Axes, labels: np.ndarray, classes: int) -> None:
    """A label map painted translucently over an image already drawn in ``ax``."""
    ax.imshow(np.asarray(labels), cmap=label_colours(classes), vmin=-0.5, vmax=classes - 0.5,
              alpha=OVERLAY_ALPHA, interpolation="nearest")


def label_legend(fig: plt.Figure, label_names: Sequence[str]) -> None:
    cmap = label_colours(len(label_names))
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(k)) for k in range(1, len(label_names))]
    fig.legend(handles, list(label_names[1:]), loc="lower center", ncol=len(handles), frameon=False,
               labelcolor="white", fontsize=8)


def grid_columns(rows: Sequence[tuple[str, Images]]) -> int:
    """Panels per row: every view (one for a slice, three for a volume) of the longest row's images."""
    return max(len(images) for _, images in rows) * len(views(rows[0][1][0]))


def draw_grid(
    target: plt.Figure | SubFigure,
    rows: Sequence[tuple[str, Images]],
    *,
    title: str | None = None,
    marked: Sequence[Sequence[bool]] | None = None,
    overlays: Sequence[Images | None] | None = None,
    classes: int = 0,
) -> None:
    """`image_grid`'s panels drawn into a figure or a subfigure, so a larger figure can hold them."""
    per_image = len(views(rows[0][1][0]))
    columns = grid_columns(rows)
    axes = target.subplots(len(rows), columns, squeeze=False)
    target.patch.set_facecolor("black")
    for r, (label, images) in enumerate(rows):
        for c in range(columns):
            ax = axes[r][c]
            ax.set_xticks([]), ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            i, v = divmod(c, per_image)
            if i >= len(images):
                ax.set_facecolor("black")
                continue
            ax.imshow(views(images[i])[v], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            if overlays is not None and overlays[r] is not None:
                draw_overlay(ax, views(overlays[r][i])[v], classes)
            if marked is not None and marked[r][i]:
                for spine in ax.spines.values():
                    spine.set_visible(True), spine.set_color("red"), spine.set_linewidth(2.5)
        axes[r][0].set_ylabel(label, color="white", fontsize=9)
    if title:
        target.suptitle(title, color="white", fontsize=11)


def real_vs_reconstruction(
    real: torch.Tensor, recon: torch.Tensor, path: Path,
    labels: tuple[torch.Tensor, torch.Tensor] | None = None, label_names: Sequence[str] | None = None,
) -> None:
    """Training images above their reconstructions, bare (a label overlay hides blur and grain), then with
    ``labels`` (true, reconstructed) painted over each when given."""
    rows = [("real", real), ("reconstruction", recon)]
    overlays = None
    if labels is not None:
        rows += [("real labels", real), ("reconstructed labels", recon)]
        overlays = [None, None, *labels]
    image_grid(rows, path, title="training images and their NeuroSQL reconstructions", overlays=overlays,
               label_names=label_names)


def training_curves(history: list[dict], path: Path) -> None:
    epochs = [r["epoch"] for r in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot(epochs, [r["loss"] for r in history], label="loss (L1 + w·(1−SSIM))")
    left.plot(epochs, [r["l1"] for r in history], label="L1")
    left.set_xlabel("epoch"), left.set_yscale("log"), left.legend(), left.set_title("reconstruction loss")
    right.plot(epochs, [r["ssim"] for r in history], color="tab:green", label="SSIM")
    assigned = [(r["epoch"], r["changed_fraction"]) for r in history if "changed_fraction" in r]
    if assigned:
        right.plot(*zip(*assigned), "o-", color="tab:red", markersize=3, label="changed assignments")
    right.set_xlabel("epoch"), right.set_ylim(0, 1.02), right.legend(), right.set_title("SSIM and assignment changes")
    fig.tight_layout()
    save_figure(fig, path)


def preprocessed_preview(cohort, path: Path, count: int = 12) -> None:
    """What training will see: evenly chosen preprocessed samples of a cohort."""
    shown = torch.linspace(0, len(cohort) - 1, min(len(cohort), count)).long()
    rows = [(f"{cohort.geometry.mode} samples", cohort.images[shown])]
    image_grid(rows, path, title=f"{len(cohort)} preprocessed samples, shape {cohort.geometry.sample_shape}")
