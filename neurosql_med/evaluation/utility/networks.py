"""The downstream network every arm trains, and how it is scored on the held-out real subjects.

Arms differ only in their training data. The network, its initial weights (seeded), the
optimiser, the batch size, the order generator and the number of optimiser steps are the
same in every arm, so a difference between arms is a difference their data made. A
fixed step count, not a wall-clock budget, keeps every run reproducible and the budget
equal even where augmentation makes one arm's steps slower.

Segmentation uses the label-agreement UNet (`evaluation.labels`), regression the
rank-normalised, globally pooled CNN of `covariate` (why: there) and classification a small
MONAI ``Classifier`` (with the classic augmentation it read CDR better than the pooled CNN:
docs/results/realistic.md). Regression and classification are scored per subject (the mean
prediction over a subject's slices).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from monai.metrics import compute_roc_auc
from monai.networks.nets import Classifier
from torch import Tensor, nn

from neurosql_med.evaluation.labels import CHUNK, build_segmenter, dice_per_class, pad_to_stride, segment
from neurosql_med.evaluation.small_network import train_small_network
from neurosql_med.evaluation.utility.augment import ClassicAugmentation
from neurosql_med.evaluation.utility.covariate import covariate_network, covariate_network_name
from neurosql_med.evaluation.utility.tasks import Task

BATCH_SIZE = 16
LR = {"segment": 1e-2, "regress": 3e-3, "classify": 1e-3}
CLASSIFIER_CHANNELS = (8, 16, 32, 64)
CLASSIFIER_STRIDES = (2, 2, 2, 2)
# The score each task is ranked by, and which way is better.
PRIMARY = {"segment": ("dice", "higher"), "regress": ("mae", "lower"), "classify": ("auc", "higher")}
HEADLINE = {"segment": ("dice",), "regress": ("mae",), "classify": ("auc", "balanced_accuracy")}


@dataclass(frozen=True)
class TrainingSet:
    """Images and what the network learns from them: label maps (segment), standardised values or class indices."""

    images: Tensor
    targets: Tensor
    synthetic: int = 0  # how many of the last samples are NeuroSQL cases (the rest are real)

    def __len__(self) -> int:
        return len(self.images)


@dataclass(frozen=True)
class Trained:
    net: nn.Module
    steps: int
    parameters: int


def network_name(task: Task) -> str:
    if task.kind == "segment":
        return "MONAI UNet (channels 8/16/32, strides 2/2, 1 residual unit)"
    if task.kind == "classify":
        return f"MONAI Classifier (channels {'/'.join(map(str, CLASSIFIER_CHANNELS))}, strides 2)"
    return covariate_network_name()


def build_network(task: Task, sample_shape: Sequence[int], outputs: int) -> nn.Module:
    """``outputs``: label classes (segment), 1 (regress) or the column's levels (classify)."""
    if task.kind == "segment":
        return build_segmenter(len(sample_shape), outputs)
    if task.kind == "classify":
        return Classifier((1, *sample_shape), outputs, CLASSIFIER_CHANNELS, CLASSIFIER_STRIDES)
    return covariate_network(sample_shape, outputs)


def train_network(task: Task, data: TrainingSet, outputs: int, *, steps: int, seed: int,
                  augment: ClassicAugmentation | None, device: torch.device,
                  advance: Callable[[], None] = lambda: None, schedule: str = "constant") -> Trained:
    """``steps`` Adam steps on batches from ``data`` (see `batches` for how they are drawn)."""
    def draw(order: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
        for batch in batches(len(data) - data.synthetic, data.synthetic, steps, order, schedule):
            x, y = _batch(task, data, batch, augment)
            yield x.to(device), y.to(device)
            advance()

    net = train_small_network(lambda: build_network(task, data.images.shape[2:], outputs).to(device), _loss(task), draw,
                              lr=LR[task.kind], seed=seed)
    return Trained(net, steps, sum(p.numel() for p in net.parameters()))


def batches(real: int, synthetic: int, steps: int, order: torch.Generator, schedule: str) -> Iterator[Tensor]:
    """The sample indices of each of ``steps`` batches; real samples come first, then the synthetic ones.

    ``constant``: epochs of a shuffled pass over all samples, so a batch's synthetic share is
    the data's on average. ``decay``: each batch holds round(B * share) synthetic samples,
    the share falling linearly from twice the data's share (capped at 1) to 0 over training
    — the same synthetic exposure when uncapped, spent early, so the network ends on real
    scans. Each pool is drawn epoch by epoch without replacement.
    """
    if schedule == "constant" or real == 0 or synthetic == 0:
        yield from _cycle(torch.arange(real + synthetic), steps, BATCH_SIZE, order)
        return
    start = 2 * synthetic / (real + synthetic)
    shares = [min(1.0, start * (1 - t / steps)) for t in range(steps)]
    counts = [round(BATCH_SIZE * share) for share in shares]
    fake = _flat(torch.arange(real, real + synthetic), sum(counts), order)
    true = _flat(torch.arange(real), BATCH_SIZE * steps - sum(counts), order)
    used_fake = used_true = 0
    for m in counts:
        yield torch.cat([true[used_true:used_true + BATCH_SIZE - m], fake[used_fake:used_fake + m]])
        used_fake, used_true = used_fake + m, used_true + BATCH_SIZE - m


def _cycle(pool: Tensor, steps: int, size: int, order: torch.Generator) -> Iterator[Tensor]:
    """``steps`` batches of ``size``, epoch after epoch of shuffled passes over ``pool`` (a short last batch per epoch)."""
    done = 0
    while done < steps:
        for batch in pool[torch.randperm(len(pool), generator=order)].split(size)[: steps - done]:
            done += 1
            yield batch


def _flat(pool: Tensor, count: int, order: torch.Generator) -> Tensor:
    """``count`` indices from shuffled passes over ``pool``, one after another."""
    passes = -(-count // len(pool)) if count else 0
    return torch.cat([pool[torch.randperm(len(pool), generator=order)] for _ in range(passes)] or [pool[:0]])[:count]


def _batch(task: Task, data: TrainingSet, batch: Tensor, augment: ClassicAugmentation | None) -> tuple[Tensor, Tensor]:
    x, y = data.images[batch], data.targets[batch]
    if augment is not None:
        x, labels = augment(x, y if task.kind == "segment" else None)
        y = y if labels is None else labels
    if task.kind == "segment":
        return pad_to_stride(x), pad_to_stride(y)
    return x, y


def _loss(task: Task) -> Callable[[Tensor, Tensor], Tensor]:
    if task.kind == "segment":
        return DiceCELoss(to_onehot_y=True, softmax=True)
    if task.kind == "regress":
        return lambda pred, y: F.l1_loss(pred[:, 0], y)
    return F.cross_entropy


@torch.no_grad()
def score(task: Task, trained: Trained, images: Tensor, truth: Tensor, subjects: Sequence[str],
          names: Sequence[str], scale: tuple[float, float]) -> dict[str, float]:
    """Scores on the test subjects. ``truth``: label maps (segment) or each sample's target value or level index;
    ``names``: the label classes (segment) or the column's levels (classify); ``scale``: regress's (mean, sd)."""
    net = trained.net.cpu()
    if task.kind == "segment":
        dice = dice_per_class(segment(net, images), truth, len(names))
        found = {f"dice_{name}": value for name, value in zip(names[1:], dice) if value is not None}
        return {"dice": float(np.mean(list(found.values()))), **found}
    outputs = torch.cat([net(images[i:i + CHUNK].float()) for i in range(0, len(images), CHUNK)])
    if task.kind == "regress":
        predicted = _per_subject(outputs[:, 0] * scale[1] + scale[0], subjects)
        return {"mae": float((predicted - _per_subject(truth.double(), subjects)).abs().mean())}
    return _classification(_per_subject(outputs.softmax(1), subjects), _per_subject(truth.double(), subjects).long(),
                           len(names))


def _per_subject(values: Tensor, subjects: Sequence[str]) -> Tensor:
    """The mean over each subject's samples, subjects in sorted order."""
    order = sorted(set(subjects))
    return torch.stack([values[[i for i, s in enumerate(subjects) if s == who]].double().mean(0) for who in order])


def _classification(probabilities: Tensor, levels: Tensor, n_levels: int) -> dict[str, float]:
    """One-vs-rest AUC averaged over the levels, and balanced accuracy (mean recall over the levels present)."""
    auc = compute_roc_auc(probabilities, F.one_hot(levels, n_levels).double(), average="macro")
    guessed = probabilities.argmax(1)
    recalls = [float((guessed[levels == c] == c).double().mean()) for c in range(n_levels) if (levels == c).any()]
    return {"auc": float(auc), "balanced_accuracy": float(np.mean(recalls))}


def target_scale(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sd) that standardise regression targets; sd 1 when the training subjects share one value."""
    sd = float(np.std(values))
    return float(np.mean(values)), sd if sd > 0 else 1.0
