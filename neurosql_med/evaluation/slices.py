"""Anatomy across slices: does a 2D sample show one level of one brain, and does a stack hold together?

Slice mixing. A sample that blends slices of distant levels (cerebellum beside cortex)
is near real slices of *several* levels at once. For each sample, its k nearest real
slices are found on coarse thumbnails (shape, not texture) and the spread (sd) of their
relative levels p is taken; held-out real slices give the same figure with their
nearest slices among the other subjects. The ratio synthetic / real is read at the
median and at the worst tenth (90th percentile), where the wrong brains are.

Inter-slice coherence. Adjacent slices of one brain are alike and their label maps
continue: the correlation of adjacent slices and the Dice of adjacent label slices,
per stack, against real stacks.

Each figure comes with its real-vs-real control: two halves of the real subjects
scored as if one were synthetic. It reads ≈1 and shows how far from 1 noise alone
takes the ratio.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from neurosql_med.data.transforms import is_foreground
from neurosql_med.evaluation.c2st import real_halves

MIXING_K = 5
SHOWN = 8  # most-mixed samples kept in the report, with their nearest real slices, for the picture
THUMBNAIL = 24  # px on the longer side: slices are compared as area-averaged thumbnails
WORST = 90  # percentile: the worst tenth of samples


def thumbnails(images: Tensor, side: int = THUMBNAIL) -> Tensor:
    """(N, features) area-averaged thumbnails of (N, 1, H, W) slices: the coarse shape that says the level."""
    h, w = images.shape[-2:]
    scale = side / max(h, w)
    return F.adaptive_avg_pool2d(images.float(), (max(1, round(h * scale)), max(1, round(w * scale)))).flatten(1)


def neighbour_spread(
    query: Tensor, pool: Tensor, pool_levels: Sequence[float], k: int = MIXING_K, excluded: Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per query thumbnail, the sd of the levels of its ``k`` nearest pool thumbnails, and which those are.

    ``excluded`` (queries x pool, bool) marks pairs that may not be neighbours: a real
    slice's own subject.
    """
    distance = torch.cdist(query.double(), pool.double())
    if excluded is not None:
        distance[excluded] = float("inf")
    k = min(k, int((~excluded).sum(1).min()) if excluded is not None else pool.shape[0])
    nearest = distance.topk(k, dim=1, largest=False).indices
    spread = torch.as_tensor(np.asarray(pool_levels, dtype=np.float64))[nearest].std(dim=1, unbiased=False)
    return spread.numpy(), nearest.numpy()


def held_out_spread(features: Tensor, levels: Sequence[float], subjects: Sequence[str], k: int = MIXING_K) -> np.ndarray:
    """Per real slice, the level spread of its nearest slices among the *other* subjects (held out, one at a time)."""
    names = np.asarray(subjects)
    same = torch.from_numpy(names[:, None] == names[None, :])
    return neighbour_spread(features, features, levels, k, excluded=same)[0]


def _summary(spread: np.ndarray) -> dict:
    return {"median": float(np.median(spread)), "p90": float(np.percentile(spread, WORST)), "n": int(len(spread))}


def _ratios(synthetic: dict, real: dict) -> dict:
    """synthetic / real at the median and the worst tenth; None where the real spread is 0 (nothing to compare to)."""
    return {key: synthetic[key] / real[key] if real[key] > 0 else None for key in ("median", "p90")}


def slice_mixing(
    real: Tensor, levels: Sequence[float], subjects: Sequence[str], synth: Tensor, *, k: int = MIXING_K, seed: int = 0,
) -> dict | None:
    """The slice-mixing figure of 2D ``synth`` against ``real`` slices with their ``levels`` and ``subjects``.

    None with fewer than 4 real subjects: the control needs two halves of at least two.
    """
    if len(set(subjects)) < 4:
        return None
    features = thumbnails(real)
    spread, nearest = neighbour_spread(thumbnails(synth), features, levels, k)
    synthetic = _summary(spread)
    reference = _summary(held_out_spread(features, levels, subjects, k))
    worst = np.argsort(-spread, kind="stable")[:SHOWN]
    return {
        "k": k, "spread": "sd of the relative levels p of the k nearest real slices",
        "features": f"area-averaged thumbnails, {THUMBNAIL} px on the longer side, Euclidean",
        "synthetic": synthetic, "real": reference, "ratio": _ratios(synthetic, reference),
        "control": _mixing_control(features, levels, subjects, k, seed),
        "most_mixed": [{"sample": int(i), "spread": float(spread[i]), "nearest_real": nearest[i].tolist(),
                        "levels": [float(levels[j]) for j in nearest[i]]} for i in worst],
    }


def _mixing_control(features: Tensor, levels: Sequence[float], subjects: Sequence[str], k: int, seed: int) -> dict:
    """One half of the real subjects scored as the samples are, against the other half: the ratio noise gives."""
    one, two = real_halves(subjects, seed)
    pool_levels = [levels[i] for i in two]
    as_samples = _summary(neighbour_spread(features[one], features[two], pool_levels, k)[0])
    reference = _summary(held_out_spread(features[two], pool_levels, [subjects[i] for i in two], k))
    return {"ratio": _ratios(as_samples, reference), "subjects": [len({subjects[i] for i in one}), len({subjects[i] for i in two})]}


def group_stacks(
    images: Tensor, where: Sequence[tuple[str, int] | None], labels: Sequence[Tensor | None] | None = None,
) -> tuple[list[Tensor], list[str], list[Tensor] | None]:
    """2D samples (N, 1, H, W) reassembled into (H, W, S) stacks by their (source, slice index).

    Only sources with at least two slices make a stack; samples with no ``where`` are
    left out. Returns the stacks, their sources and their label stacks (None unless
    every slice of every stack has a label map).
    """
    members: dict[str, list[tuple[int, int]]] = {}
    for i, place in enumerate(where):
        if place is not None:
            members.setdefault(place[0], []).append((place[1], i))
    sources = sorted(name for name, found in members.items() if len(found) > 1)
    order = [[i for _, i in sorted(members[name])] for name in sources]
    stacks = [images[idx, 0].movedim(0, -1) for idx in order]
    has_labels = labels is not None and all(labels[i] is not None for idx in order for i in idx)
    label_stacks = [torch.stack([labels[i][0] for i in idx], dim=-1) for idx in order] if has_labels else None
    return stacks, sources, label_stacks


def _pearson(a: Tensor, b: Tensor) -> Tensor:
    """Correlation of each pair of rows of ``a`` and ``b`` (flattened slices); 0 where either is constant."""
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    norm = (a.norm(dim=1) * b.norm(dim=1))
    return torch.where(norm > 0, (a * b).sum(1) / norm.clamp_min(1e-12), torch.zeros(()))


def _adjacent_dice(labels: Tensor) -> Tensor:
    """Dice of each pair of adjacent (S, ...) label slices over all foreground classes (a voxel agrees if its class does)."""
    a, b = labels[:-1].flatten(1), labels[1:].flatten(1)
    agree = ((a == b) & (a > 0)).sum(1).double()
    total = ((a > 0).sum(1) + (b > 0).sum(1)).double()
    return torch.where(total > 0, 2 * agree / total.clamp_min(1), torch.ones(()))


def _brain_span(volume: Tensor, axis: int) -> tuple[Tensor, slice] | None:
    """The (S, voxels) slices of a stack from its first to its last slice with brain, and that span; None under two."""
    volume = torch.as_tensor(volume).float()
    slices = (volume.squeeze(0) if volume.ndim == 4 else volume).movedim(axis, 0).flatten(1)
    inside = torch.nonzero(is_foreground(slices).any(1)).flatten()
    if len(inside) < 2:
        return None
    span = slice(int(inside[0]), int(inside[-1]) + 1)
    return slices[span], span


def identity_margin(volumes: Sequence[Tensor], axis: int = -1) -> float | None:
    """How much more a slice resembles the next slice of its own stack than the next slice of another stack.

    Adjacent-slice correlation alone rewards a smooth decoder: on the sample phantoms the
    slices of independent draws at successive levels correlate as well as a synthetic
    subject's. Here each stack is paired with the next one (in a cycle), position by
    position over the positions both have, and the margin is the mean correlation of slice
    k with slice k + 1 of the same stack minus that with slice k + 1 of the paired stack:
    about 0 for a bag of slices of different brains, above 0 where a stack is one brain.
    None with fewer than two stacks of two brain slices.
    """
    stacks = [found[0] for found in (_brain_span(v, axis) for v in volumes) if found is not None]
    if len(stacks) < 2:
        return None
    within, across = [], []
    for own, other in zip(stacks, stacks[1:] + stacks[:1]):
        k = min(len(own), len(other)) - 1
        within.append(_pearson(own[:k], own[1:k + 1]))
        across.append(_pearson(own[:k], other[1:k + 1]))
    return float(torch.cat(within).mean() - torch.cat(across).mean())


def stack_coherence(volume: Tensor, labels: Tensor | None = None, axis: int = -1) -> dict | None:
    """Adjacent-slice correlation (and label Dice) of one stack, over the slices that hold brain.

    ``volume`` and ``labels`` are (X, Y, Z) arrays (a leading channel of 1 is dropped);
    ``axis`` is the slice axis. None when fewer than two slices hold brain.
    """
    found = _brain_span(volume, axis)
    if found is None:
        return None
    slices, span = found
    result = {"correlation": float(_pearson(slices[:-1], slices[1:]).mean()), "slices": len(slices)}
    if labels is not None:
        maps = torch.as_tensor(labels).long().squeeze(0) if labels.ndim == 4 else torch.as_tensor(labels).long()
        result["label_dice"] = float(_adjacent_dice(maps.movedim(axis, 0)[span]).mean())
    return result


def coherence(volumes: Sequence[Tensor], labels: Sequence[Tensor] | None = None, axis: int = -1) -> dict | None:
    """Median adjacent-slice correlation (and label Dice) over stacks, and their `identity_margin`; None when no
    stack holds two brain slices."""
    per_stack = [stack_coherence(v, None if labels is None else labels[i], axis) for i, v in enumerate(volumes)]
    scored = [s for s in per_stack if s is not None]
    if not scored:
        return None
    keys = ["correlation"] + (["label_dice"] if labels is not None else [])
    margin = identity_margin(volumes, axis)
    return ({key: float(np.median([s[key] for s in scored])) for key in keys} | {"stacks": len(scored)}
            | ({} if margin is None else {"margin": margin}))


def coherence_section(
    real: Sequence[Tensor], real_subjects: Sequence[str], synth: Sequence[Tensor], *,
    real_labels: Sequence[Tensor] | None = None, synth_labels: Sequence[Tensor] | None = None, axis: int = -1, seed: int = 0,
) -> dict | None:
    """Coherence of synthetic stacks against real ones, with two halves of the real stacks as the control.

    Label continuity is compared only when both sides have label maps. None when the
    synthetic or the real side has no stack of two brain slices.
    """
    both = real_labels is not None and synth_labels is not None
    mine = coherence(synth, synth_labels if both else None, axis)
    theirs = coherence(real, real_labels if both else None, axis)
    if mine is None or theirs is None:
        return None
    section = {"synthetic": mine, "real": theirs, "ratio": _divide(mine, theirs)}
    one, two = real_halves(real_subjects, seed)
    halves = [coherence([real[i] for i in part], [real_labels[i] for i in part] if both else None, axis) for part in (one, two)]
    section["control"] = None if None in halves else {"ratio": _divide(halves[0], halves[1])}
    return section


def _divide(a: dict, b: dict) -> dict:
    return {key: a[key] / b[key] if b[key] else None for key in ("correlation", "label_dice", "margin") if key in a and key in b}
