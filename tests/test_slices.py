"""Slice mixing and inter-slice coherence: ≈1 for real against real, clearly off for mixed levels and shuffled stacks."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from neurosql_med.config import load_config, override
from neurosql_med.data.cohort import load_cohort
from neurosql_med.evaluation.slices import (
    coherence_section, group_stacks, identity_margin, slice_mixing, stack_coherence, thumbnails,
)

SAMPLE_DATA = Path(__file__).resolve().parents[1] / "sample_data"


@pytest.fixture(scope="module")
def cohort():
    """The sample cohort at the tiny config's 6 mm, every slice from 10 % to 90 % of each brain: about 600 slices.

    Without anti-aliasing: low-passed to 6 mm, the phantoms' slices keep too little of what tells levels apart for
    a 50/50 blend to stand out in the tail (p90 ratio 1.0 instead of > 2), so this grid would test the phantoms'
    resolution, not the metric.
    """
    cfg = override(load_config("tiny"), data__slice_range=[0.1, 0.9], data__slice_stride=1, data__anti_alias=False)
    return load_cohort(SAMPLE_DATA, cfg.data)


def test_the_sample_cohort_loads_with_four_named_classes(cohort):
    """Its label maps come along (dseg.tsv names the classes), as integer classes voxel for voxel with the images."""
    assert cohort.label_names == ["background", "CSF", "GM", "WM"]
    assert cohort.labels.dtype.is_floating_point is False and cohort.labels.shape == cohort.images.shape
    assert set(np.unique(cohort.labels.numpy())) == {0, 1, 2, 3}
    fingerprint = cohort.fingerprint()
    assert len(fingerprint["labels"]) == fingerprint["n_scans"] == 30 and "sub-" not in json.dumps(fingerprint)
    subset = cohort.subset(np.arange(3))
    assert subset.labels.shape[0] == 3 and subset.label_names == cohort.label_names


def split(cohort, held: int = 6) -> tuple[list[int], list[int]]:
    names = sorted(set(cohort.subjects))[:held]
    out = [i for i, s in enumerate(cohort.subjects) if s in names]
    return [i for i in range(len(cohort)) if i not in set(out)], out


def mixing(cohort, train: list[int], synth: torch.Tensor) -> dict:
    return slice_mixing(cohort.images[train], [cohort.slice_levels[i] for i in train],
                        [cohort.subjects[i] for i in train], synth)


def test_held_out_real_slices_mix_levels_as_real_slices_do(cohort):
    train, held = split(cohort)
    result = mixing(cohort, train, cohort.images[held])
    assert result["synthetic"]["n"] == len(held) and result["real"]["n"] == len(train)
    for key in ("median", "p90"):
        assert 0.7 < result["ratio"][key] < 1.4, result
        assert 0.7 < result["control"]["ratio"][key] < 1.4, result["control"]


def test_blends_of_distant_levels_are_caught_in_the_worst_tenth(cohort):
    train, held = split(cohort)
    low = [i for i in held if cohort.slice_levels[i] < 0.35]
    high = [i for i in held if cohort.slice_levels[i] > 0.65]
    n = min(len(low), len(high))
    blends = 0.5 * cohort.images[low[:n]] + 0.5 * cohort.images[high[:n]]
    assert mixing(cohort, train, blends)["ratio"]["median"] > 3
    one_in_five = torch.cat([cohort.images[held], blends[: len(held) // 5]])  # most samples fine, a tail mixed
    result = mixing(cohort, train, one_in_five)
    assert result["ratio"]["median"] < 1.4 and result["ratio"]["p90"] > 2, result["ratio"]
    shown = result["most_mixed"]
    assert len(shown) == 8 and all(s["sample"] >= len(held) for s in shown)  # the blends, most mixed first
    assert all(len(s["nearest_real"]) == len(s["levels"]) == 5 for s in shown)
    assert shown[0]["spread"] == pytest.approx(float(np.std(shown[0]["levels"])))


def test_too_few_subjects_give_no_mixing_figure():
    images = torch.rand(6, 1, 8, 8)
    assert slice_mixing(images, [0.1] * 6, ["a", "a", "b", "b", "c", "c"], images) is None


def test_thumbnails_keep_the_aspect_ratio():
    assert thumbnails(torch.rand(3, 1, 48, 96)).shape == (3, 12 * 24)


def test_a_constant_stack_is_fully_coherent_and_empty_slices_are_left_out():
    volume = torch.zeros(10, 12, 6)
    volume[2:8, 3:9, 1:5] = torch.rand(6, 6, 1, generator=torch.Generator().manual_seed(0))
    labels = (volume > 0.5).long()
    result = stack_coherence(volume, labels)
    assert result == {"correlation": pytest.approx(1.0), "slices": 4, "label_dice": pytest.approx(1.0)}
    assert stack_coherence(torch.zeros(4, 4, 3)) is None


def real_stacks(cohort):
    return group_stacks(cohort.images, list(zip(cohort.scan_ids, cohort.slice_index)),
                        None if cohort.labels is None else list(cohort.labels))


def test_stacks_are_assembled_in_slice_order():
    images = torch.arange(4.0)[:, None, None, None].expand(4, 1, 2, 3)
    stacks, sources, labels = group_stacks(images, [("b", 7), ("a", 1), ("b", 2), None], [None, None, None, None])
    assert sources == ["b"] and labels is None  # "a" has one slice, the last sample none: no stack
    assert stacks[0].shape == (2, 3, 2) and stacks[0][0, 0].tolist() == [2.0, 0.0]


def test_real_stacks_match_real_stacks_and_shuffled_ones_do_not(cohort):
    stacks, scans, labels = real_stacks(cohort)
    subject_of = dict(zip(cohort.scan_ids, cohort.subjects))
    subjects = [subject_of[s] for s in scans]
    assert labels is not None and len(stacks) == len(set(cohort.scan_ids))
    same = coherence_section(stacks[:15], subjects[:15], stacks[15:], real_labels=labels[:15], synth_labels=labels[15:])
    for key in ("correlation", "label_dice"):
        assert 0.95 < same["ratio"][key] < 1.05 and 0.9 < same["control"]["ratio"][key] < 1.1, same
    rng = np.random.default_rng(0)
    order = [torch.from_numpy(rng.permutation(s.shape[-1])) for s in stacks[15:]]
    shuffled = coherence_section(stacks[:15], subjects[:15], [s[..., o] for s, o in zip(stacks[15:], order)],
                                 real_labels=labels[:15], synth_labels=[m[..., o] for m, o in zip(labels[15:], order)])
    assert shuffled["ratio"]["correlation"] < 0.95 and shuffled["ratio"]["label_dice"] < 0.9, shuffled


def test_volumes_with_a_channel_are_stacks_along_any_axis():
    y, z = torch.meshgrid(torch.arange(16.0), torch.arange(10.0), indexing="ij")
    moving = torch.stack([torch.exp(-((y - 2 - k) ** 2 + (z - 5) ** 2) / 8) for k in range(12)])  # a blob drifting in y
    volume = (moving + 0.02 * torch.rand(12, 16, 10, generator=torch.Generator().manual_seed(1)))[None]  # (1, X, Y, Z)
    along_x = stack_coherence(volume, axis=0)
    assert along_x["slices"] == 12 and along_x["correlation"] > 0.7
    shuffled = stack_coherence(volume[:, torch.randperm(12, generator=torch.Generator().manual_seed(2))], axis=0)
    assert shuffled["correlation"] < along_x["correlation"] - 0.3, (shuffled, along_x)


def test_the_identity_margin_tells_one_brain_from_a_bag_of_brains(cohort):
    stacks, _, _ = group_stacks(cohort.images, list(zip(cohort.scan_ids, cohort.slice_index)))
    length = min(s.shape[-1] for s in stacks)
    rng = np.random.default_rng(0)
    bags = [torch.stack([stacks[w][..., k] for k, w in enumerate(rng.permutation(len(stacks))[:length])], -1)
            for _ in stacks]  # each slice position from another brain, the levels kept
    one_brain, bag = identity_margin(stacks), identity_margin(bags)
    assert one_brain > 0.01 and abs(bag) < one_brain / 3, (one_brain, bag)
    assert identity_margin(stacks[:1]) is None
