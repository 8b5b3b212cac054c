"""Do a labelled synthetic cohort's tissue maps fit its images, and are they anatomically plausible?

Both questions are read against what real data scores, because neither number means much
alone. *Agreement*: a small MONAI UNet trained on real image-label pairs segments the
synthetic images; its Dice against the synthetic labels says whether each label map
describes the image it comes with, and the same network's Dice on held-out real pairs is
the most that can be expected of it (the ceiling). *Plausibility*: each class's share of
the brain (non-background) voxels, compared as distributions (Wasserstein distance) with
the real labels; held-out real labels against the training ones are the yardstick. In 2D
the shares depend mostly on where a slice sits in the slab, so they are compared level by
level; a synthetic slice takes the level of its nearest real training slice.
"""
from __future__ import annotations

import csv
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric
from monai.networks.nets import UNet
from monai.networks.utils import one_hot
from scipy.stats import wasserstein_distance
from torch import Tensor

from neurosql_med.data.cohort import Cohort
from neurosql_med.errors import UserError
from neurosql_med.evaluation.small_network import Schedule, train_small_network
from neurosql_med.evaluation.splits import split_by_subject
from neurosql_med.viz.plots import save_figure

DSEG_TSV = "dseg.tsv"  # BIDS: the class index -> name table at a labelled dataset's root
CHANNELS = (8, 16, 32)
STRIDES = (2, 2)
# Epochs of segmenter training: about a minute for 300 64x80 slices on 2 CPU cores
# (benchmarks/bench_labels.py); a fixed count, not a time budget, keeps the report reproducible.
EPOCHS = 60  # 20 s on 289 64x80 slices (2 quiet cores); 12 epochs left the held-out ceiling at 0.75 mean Dice, 60 reach 0.79
BATCH_SIZE = 16
LR = 1e-2
SEED = 0
HOLDOUT_FRACTION = 0.2  # of the real subjects, held out when no --holdout folder is given
LEVELS = 4  # slab levels (inferior to superior) over which 2D tissue shares are compared
CHUNK = 32  # samples segmented or scored at once: bounds memory for 3D volumes


def read_label_names(folder: Path) -> list[str] | None:
    """The class names in ``folder``/dseg.tsv (columns ``index``, ``name``); None when there is none."""
    path = folder / DSEG_TSV
    if not path.is_file():
        return None
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    try:
        names = {int(row["index"]): row["name"].strip() for row in rows}
    except (KeyError, TypeError, ValueError, AttributeError):
        raise UserError(f"{path}: needs tab-separated columns 'index' (integers) and 'name'") from None
    if sorted(names) != list(range(len(names))) or len(names) < 2:
        raise UserError(f"{path}: indices must run 0, 1, 2, ... (0 = background) with at least one tissue class")
    return [names[i] for i in range(len(names))]


def class_names(named: list[str] | None, real: Cohort, synth_labels: Tensor) -> list[str]:
    """Index -> name for every class either side uses: the synthetic cohort's table, else the real one's."""
    names = named or real.label_names or []
    used = int(max(real.labels.max(), synth_labels.max())) + 1  # type: ignore[union-attr]
    if named is not None and used > len(named):
        raise UserError(f"the label maps use class {used - 1}, but {DSEG_TSV} names only {len(named)} classes")
    return list(names) + [f"class {i}" for i in range(len(names), used)]


def pad_to_stride(x: Tensor) -> Tensor:
    """Zero-pad the spatial axes to a multiple of the UNet's total stride (its skip connections need it)."""
    step = int(np.prod(STRIDES))
    pads = [p for n in reversed(x.shape[2:]) for p in (0, -n % step)]
    return F.pad(x, pads)


def build_segmenter(spatial_dims: int, n_classes: int) -> UNet:
    """The small UNet every segmentation score in nsql-med uses (label agreement and `utility`)."""
    return UNet(spatial_dims=spatial_dims, in_channels=1, out_channels=n_classes,
                channels=CHANNELS, strides=STRIDES, num_res_units=1)


def train_segmenter(images: Tensor, labels: Tensor, n_classes: int, epochs: int = EPOCHS, seed: int = SEED) -> UNet:
    """A small UNet fitted to real image-label pairs: a fixed seed and epoch count, so the same inputs give the same net."""
    x, y = pad_to_stride(images.float()), pad_to_stride(labels.long())
    schedule = Schedule(epochs, BATCH_SIZE, LR)
    return train_small_network(lambda: build_segmenter(images.ndim - 2, n_classes), DiceCELoss(to_onehot_y=True, softmax=True),
                               schedule.passes(x, y, "segmenter for label agreement"), lr=LR, seed=seed)


@torch.no_grad()
def segment(net: UNet, images: Tensor) -> Tensor:
    """Class indices (N, 1, *spatial), cropped back from the padded grid."""
    crop = (slice(None), slice(None), *(slice(0, n) for n in images.shape[2:]))
    return torch.cat([net(pad_to_stride(images[i:i + CHUNK].float())).argmax(1, keepdim=True)[crop]
                      for i in range(0, len(images), CHUNK)])


def dice_per_class(pred: Tensor, truth: Tensor, n_classes: int) -> list[float | None]:
    """Mean Dice of each tissue class over the samples that contain it (None: no sample does)."""
    metric = DiceMetric(include_background=False, reduction="mean_batch", get_not_nans=True)
    for i in range(0, len(pred), CHUNK):
        metric(one_hot(pred[i:i + CHUNK], n_classes), one_hot(truth[i:i + CHUNK].long(), n_classes))
    values, counts = metric.aggregate()
    return [float(v) if c > 0 else None for v, c in zip(values, counts)]


def tissue_fractions(labels: Tensor, n_classes: int) -> np.ndarray:
    """(N, classes - 1): each tissue class's share of a sample's brain voxels; NaN where it has none."""
    counts = torch.stack([(labels == c).flatten(1).sum(1) for c in range(1, n_classes)], dim=1).double()
    brain = counts.sum(1, keepdim=True)
    return (counts / brain.where(brain > 0, torch.nan)).numpy()


def slab_levels(cohort: Cohort) -> np.ndarray:
    """Each sample's level (0 = inferior) by its rank among its scan's slices; one level for 3D volumes."""
    levels = np.zeros(len(cohort), dtype=int)
    if cohort.geometry.mode == "3d":
        return levels
    for scan in set(cohort.scan_ids):
        members = [i for i, s in enumerate(cohort.scan_ids) if s == scan]
        members.sort(key=lambda i: cohort.slice_index[i])
        levels[members] = np.arange(len(members)) * LEVELS // len(members)
    return levels


def level_distance(a: np.ndarray, a_levels: np.ndarray, b: np.ndarray, b_levels: np.ndarray) -> float | None:
    """Wasserstein distance of ``b`` to ``a`` within each level, weighted by ``b``'s samples per level."""
    total, weight = 0.0, 0
    for level in np.unique(b_levels):
        x, y = a[(a_levels == level) & ~np.isnan(a)], b[(b_levels == level) & ~np.isnan(b)]
        if len(x) and len(y):
            total, weight = total + len(y) * wasserstein_distance(x, y), weight + len(y)
    return total / weight if weight else None


def label_section(
    real: Cohort, synth_images: Tensor, synth_labels: Tensor, nearest: list[int], *, held: Cohort | None = None,
    names: list[str] | None = None, epochs: int = EPOCHS, seed: int = SEED,
) -> dict:
    """The report's ``labels`` section; ``nearest`` is each synthetic sample's nearest sample in ``real``.

    The segmenter learns from ``real`` less the held-out side: ``held`` when it has labels,
    else ``HOLDOUT_FRACTION`` of the real subjects (a by-subject split with ``seed``).
    """
    names = class_names(names, real, synth_labels)
    fit_on, held, source = _sides(real, held, seed)
    net = train_segmenter(fit_on.images, fit_on.labels, len(names), epochs, seed)  # type: ignore[arg-type]
    dice = {
        "synthetic": _named(names, dice_per_class(segment(net, synth_images), synth_labels, len(names))),
        "holdout": _named(names, dice_per_class(segment(net, held.images), held.labels, len(names))),  # type: ignore[arg-type]
    }
    segmenter = {
        "network": "MONAI UNet", "channels": list(CHANNELS), "strides": list(STRIDES), "num_res_units": 1,
        "loss": "Dice + cross-entropy", "epochs": epochs, "batch_size": BATCH_SIZE, "lr": LR, "seed": seed,
        "training_samples": len(fit_on), "training_subjects": len(set(fit_on.subjects)),
    }
    return {
        "classes": names[1:], "segmenter": segmenter, "holdout": source,
        "holdout_samples": len(held), "dice": dice, "tissue": _tissue(real, synth_labels, nearest, fit_on, held, names),
    }


def _sides(real: Cohort, held: Cohort | None, seed: int) -> tuple[Cohort, Cohort, str]:
    """(segmenter training set, held-out real pairs, where the held-out pairs came from)."""
    if held is not None and held.labels is not None:
        return real, held, "the --holdout scans"
    train, held = split_by_subject(real, HOLDOUT_FRACTION, seed)
    return train, held, f"{len(set(held.subjects))} of {len(set(real.subjects))} real subjects (by-subject split, seed {seed})"


def _named(names: list[str], values: list[float | None]) -> dict[str, float | None]:
    """Per tissue class by name, and their mean (over the classes that have a value)."""
    known = [v for v in values if v is not None]
    return {**dict(zip(names[1:], values)), "mean": float(np.mean(known)) if known else None}


def _tissue(real: Cohort, synth_labels: Tensor, nearest: list[int], fit_on: Cohort, held: Cohort, names: list[str]) -> dict:
    """Tissue shares: synthetic against all real samples, and the yardstick held-out against training real."""
    k = len(names)
    real_f, synth_f = tissue_fractions(real.labels, k), tissue_fractions(synth_labels, k)  # type: ignore[arg-type]
    fit_f, held_f = tissue_fractions(fit_on.labels, k), tissue_fractions(held.labels, k)  # type: ignore[arg-type]
    real_l = slab_levels(real)
    synth_l, fit_l, held_l = real_l[np.asarray(nearest, dtype=int)], slab_levels(fit_on), slab_levels(held)
    tissues = range(k - 1)
    return {
        "levels": 1 if real.geometry.mode == "3d" else LEVELS,
        "wasserstein": {
            "synthetic": _named(names, [level_distance(real_f[:, c], real_l, synth_f[:, c], synth_l) for c in tissues]),
            "holdout": _named(names, [level_distance(fit_f[:, c], fit_l, held_f[:, c], held_l) for c in tissues]),
        },
        "fractions": {side: {names[c + 1]: _json_list(f[:, c]) for c in tissues}
                      for side, f in (("real", real_f), ("synthetic", synth_f), ("holdout", held_f))},
    }


def _json_list(values: np.ndarray) -> list[float | None]:
    """Shares as JSON numbers; a sample without brain voxels has none (JSON has no NaN)."""
    return [None if np.isnan(v) else float(v) for v in values]


def _pair(a: float | None, b: float | None) -> str:
    return " / ".join("n/a" if v is None else f"{v:.3g}" for v in (a, b))


def label_rows(section: dict) -> list[tuple[str, str, str, str]]:
    """(section, metric, value, reading) rows for the terminal table and report.md."""
    dice, w = section["dice"], section["tissue"]["wasserstein"]
    rows = [("labels", f"Dice {name}: synthetic / held-out real", _pair(dice["synthetic"][name], dice["holdout"][name]),
             "segmenter trained on real pairs; held-out = ceiling" if name == "mean" else "")
            for name in ["mean", *section["classes"]]]
    return rows + [
        ("tissue", f"W {name} share: synthetic / held-out real", _pair(w["synthetic"][name], w["holdout"][name]),
         "≈ held-out or below: plausible" if name == "mean" else "")
        for name in ["mean", *section["classes"]]
    ]


def label_markdown(section: dict) -> list[str]:
    """report.md's note on how the label numbers were made."""
    s = section["segmenter"]
    levels = section["tissue"]["levels"]
    return [
        "## Labels",
        "",
        f"- classes: {', '.join(section['classes'])} (background excluded from Dice and shares)",
        f"- segmenter: {s['network']} channels {tuple(s['channels'])}, strides {tuple(s['strides'])}, "
        f"{s['num_res_units']} residual unit, {s['loss']}, {s['epochs']} epochs, batch {s['batch_size']}, "
        f"lr {s['lr']:g}, seed {s['seed']}; trained on {s['training_samples']} real samples of "
        f"{s['training_subjects']} subjects",
        f"- held-out real pairs: {section['holdout_samples']} samples from {section['holdout']}",
        "- tissue shares: each class's share of the brain (non-background) voxels, Wasserstein distance per class"
        + (f", compared within {levels} slab levels (a synthetic slice takes its nearest real slice's level)"
           if levels > 1 else ", per volume")
        + "; tissue.png shows the distributions",
        "",
    ]


def tissue_picture(path: Path, section: dict) -> None:
    """Per class, the spread of tissue shares: real, held-out real and synthetic side by side."""
    fractions, classes = section["tissue"]["fractions"], section["classes"]
    fig, axes = plt.subplots(1, len(classes), figsize=(3.2 * len(classes), 3.0), squeeze=False)
    for ax, name in zip(axes[0], classes):
        for side in ("real", "holdout", "synthetic"):
            values = [v for v in fractions[side][name] if v is not None]
            ax.hist(values, bins=np.linspace(0, 1, 41), alpha=0.5, density=True, label=side.replace("holdout", "held-out real"))
        ax.set_title(name)
        ax.set_xlabel("share of brain voxels")
    axes[0][0].set_ylabel("density")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("tissue shares: synthetic labels against real labels")
    fig.tight_layout()
    save_figure(fig, path)
