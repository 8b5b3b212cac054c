"""Label evaluation: do synthetic label maps fit their images, and are their tissue shares plausible?

Labels here come from thresholding the images (CSF dark, GM medium, WM bright), so a
segmenter can learn them in seconds and a label map that belongs to its image is
recognisable. Cohorts are the tiny 2D config's slices of small concentric-shell phantoms.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from support import cli, write_nifti

import neurosql_med.evaluation.evaluate as evaluate_module
from neurosql_med.config import load_config, override
from neurosql_med.data.cohort import Cohort, load_cohort
from neurosql_med.errors import UserError
from neurosql_med.evaluation.evaluate import evaluate, read_synthetic, read_synthetic_labels, report_table
from neurosql_med.evaluation.options import EvaluateOptions
from neurosql_med.evaluation.labels import (
    HOLDOUT_FRACTION, SEED, dice_per_class, label_section, level_distance, read_label_names, segment, tissue_fractions,
    train_segmenter,
)
from neurosql_med.metrics import pairwise_mae
from neurosql_med.evaluation.splits import split_by_subject
from neurosql_med.io.model import load_model

SPACING = (6.0, 6.0, 6.0)
NAMES = ["background", "CSF", "GM", "WM"]
EPOCHS = 25  # enough for the tiny segmenter to learn thresholds: a few seconds


def tissue_volume(i: int, shape=(20, 24, 20)) -> np.ndarray:
    """A head of grey matter around white matter around a ventricle, each sized by the seed."""
    rng = np.random.default_rng(i)
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r2 = sum(g**2 for g in grid)
    brain = r2 < 0.55 + 0.1 * (i % 4)
    white = r2 < (0.25 + 0.06 * (i % 3))
    ventricle = grid[0] ** 2 + 3 * grid[1] ** 2 + grid[2] ** 2 < 0.03 * (1 + i % 5)
    value = np.where(ventricle, 200, np.where(white, 900, 500)) * brain
    return (value + rng.integers(0, 30, size=shape) * brain).astype(np.int16)


def write_tissue_scans(folder: Path, seeds: range) -> Path:
    for i in seeds:
        write_nifti(folder / f"sub-{i:02d}" / "anat" / f"sub-{i:02d}_T1w.nii.gz", tissue_volume(i), SPACING)
    return folder


def threshold(images: torch.Tensor) -> torch.Tensor:
    """The phantoms' tissue classes from intensity alone (0 background, 1 CSF, 2 GM, 3 WM)."""
    return torch.bucketize(images, torch.tensor([0.1, 0.35, 0.75])).long()


def labelled(cohort: Cohort) -> Cohort:
    return dataclasses.replace(cohort, labels=threshold(cohort.images), label_names=NAMES)


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory) -> tuple[Cohort, Cohort]:
    """(real training cohort, other subjects' real pairs), both labelled."""
    root = tmp_path_factory.mktemp("labels")
    data = load_config("tiny").data
    real = load_cohort(write_tissue_scans(root / "real", range(12)), data)
    other = load_cohort(write_tissue_scans(root / "other", range(20, 26)), data)
    return labelled(real), labelled(other)


def nearest(synth: torch.Tensor, real: Cohort) -> list[int]:
    return pairwise_mae(synth, real.images).argmin(1).tolist()


@pytest.mark.slow
def test_real_pairs_score_near_the_ceiling_and_shuffled_labels_score_lower(cohorts):
    real, other = cohorts
    train, held = split_by_subject(real, HOLDOUT_FRACTION, SEED)  # as label_section splits without --holdout
    net = train_segmenter(train.images, train.labels, len(NAMES), epochs=EPOCHS)
    shuffled = other.labels[torch.randperm(len(other), generator=torch.Generator().manual_seed(1))]

    ceiling = np.mean(dice_per_class(segment(net, held.images), held.labels, len(NAMES)))
    planted = np.mean(dice_per_class(segment(net, other.images), other.labels, len(NAMES)))
    mismatched = np.mean(dice_per_class(segment(net, other.images), shuffled, len(NAMES)))
    assert ceiling > 0.8
    assert planted > ceiling - 0.1
    assert mismatched < planted - 0.15


def test_the_label_section_trains_on_all_but_the_held_out_subjects(cohorts):
    real, other = cohorts
    section = label_section(real, other.images, other.labels, nearest(other.images, real), epochs=1)
    assert section["classes"] == ["CSF", "GM", "WM"]
    assert set(section["dice"]["synthetic"]) == set(section["dice"]["holdout"]) == {"CSF", "GM", "WM", "mean"}
    assert section["segmenter"]["training_subjects"] == 12 - round(HOLDOUT_FRACTION * 12)
    assert section["holdout_samples"] + section["segmenter"]["training_samples"] == len(real)
    assert section == label_section(real, other.images, other.labels, nearest(other.images, real), epochs=1)
    json.dumps(section, allow_nan=False)


def test_tissue_distance_is_zero_for_real_against_itself_and_grows_with_shifted_shares(cohorts):
    real, _ = cohorts
    itself = label_section(real, real.images, real.labels, list(range(len(real))), epochs=1)
    assert all(v == 0 for v in itself["tissue"]["wasserstein"]["synthetic"].values())

    shifted_labels = real.labels.clone()
    grey = shifted_labels == 2
    shifted_labels[grey & (torch.rand(grey.shape, generator=torch.Generator().manual_seed(0)) < 0.4)] = 1  # GM → CSF
    shifted = label_section(real, real.images, shifted_labels, list(range(len(real))), epochs=1)
    w = shifted["tissue"]["wasserstein"]
    assert w["synthetic"]["CSF"] > 0.1 and w["synthetic"]["GM"] > 0.1
    assert w["synthetic"]["CSF"] > 3 * w["holdout"]["CSF"]  # far beyond what new real subjects differ by


def test_volumes_are_segmented_in_3d_and_compared_as_one_level(tmp_path):
    real = labelled(load_cohort(write_tissue_scans(tmp_path / "real", range(6)), load_config("tiny3d").data))
    section = label_section(real, real.images, real.labels, list(range(len(real))), epochs=1)
    assert section["tissue"]["levels"] == 1 and section["holdout_samples"] == 1
    assert all(v == 0 for v in section["tissue"]["wasserstein"]["synthetic"].values())
    assert all(0 <= v <= 1 for v in section["dice"]["synthetic"].values() if v is not None)


def test_level_distance_compares_like_levels_only():
    shares = np.array([0.1, 0.1, 0.5, 0.5])
    levels = np.array([0, 0, 1, 1])
    assert level_distance(shares, levels, shares, levels) == 0
    assert level_distance(shares, levels, shares, levels[::-1]) == pytest.approx(0.4)
    labels = torch.tensor([[0, 1, 1, 2], [0, 0, 0, 0]]).reshape(2, 1, 2, 2)
    fractions = tissue_fractions(labels, 3)
    assert fractions[0].tolist() == pytest.approx([2 / 3, 1 / 3]) and np.isnan(fractions[1]).all()


@pytest.fixture(scope="module")
def model_and_synth(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(real scans, a one-epoch tiny model of them, 6 synthetic T1w images it wrote, without label maps)."""
    from neurosql_med.synthesis.options import SynthesizeOptions
    from neurosql_med.synthesis.synthesize import synthesize
    from neurosql_med.training.train import fit

    root = tmp_path_factory.mktemp("model")
    real = write_tissue_scans(root / "real", range(8))
    cfg = override(load_config("tiny"), train__epochs=1)
    fit(load_cohort(real, cfg.data), cfg, root / "model", show_progress=False)
    synthesize(SynthesizeOptions(model=root / "model", out=root / "synth", n=6), show_progress=False)
    return real, root / "model", root / "synth"


def write_label_maps(synth: Path, model: Path, target: Path) -> Path:
    """A copy of the synthetic cohort with a thresholded `_dseg` beside each T1w and a dseg.tsv."""
    import shutil

    shutil.copytree(synth, target)
    model_ = load_model(model)
    images, ids = read_synthetic(target, model_.geometry, model_.config.data)
    for image, name in zip(images, ids):
        t1w = nib.load(target / name)
        dseg = threshold(image[0]).numpy().astype(np.uint8).reshape(t1w.shape)
        nib.save(nib.Nifti1Image(dseg, t1w.affine), target / name.replace("_T1w.nii.gz", "_dseg.nii.gz"))
    (target / "dseg.tsv").write_text("index\tname\n0\tbackground\n1\tcsf\n2\tgm\n3\twm\n")
    return target


def label_the_real_scans(monkeypatch, folder: Path) -> None:
    """Stand in for the data layer's label reading: the real scans come back with thresholded labels."""
    original = evaluate_module.load_cohort

    def load(root, cfg, *args, **kwargs):
        cohort = original(root, cfg, *args, **kwargs)
        return labelled(cohort) if Path(root) == folder else cohort

    monkeypatch.setattr(evaluate_module, "load_cohort", load)


@pytest.mark.slow
def test_the_report_has_a_label_section_only_with_labels_on_both_sides(tmp_path, monkeypatch, model_and_synth):
    real, model, synth = model_and_synth
    plain = evaluate(EvaluateOptions(real=real, synth=synth, model=model, out=tmp_path / "plain", c2st="off"))
    with_dseg = write_label_maps(synth, model, tmp_path / "synth")
    unlabelled_real = evaluate(EvaluateOptions(real=real, synth=with_dseg, model=model, c2st="off"), label_epochs=2)
    assert "labels" not in plain and "labels" not in unlabelled_real
    assert unlabelled_real.keys() == plain.keys()
    assert unlabelled_real["counts"]["synthetic"] == 6  # the _dseg files are not read as images
    assert not (tmp_path / "plain" / "tissue.png").exists()

    label_the_real_scans(monkeypatch, real)
    no_maps = EvaluateOptions(real=real, synth=synth, model=model, c2st="off")  # no synthetic label maps
    assert "labels" not in evaluate(no_maps, label_epochs=2)
    out = tmp_path / "report"
    report = evaluate(EvaluateOptions(real=real, synth=with_dseg, model=model, out=out, c2st="off"), label_epochs=2)

    assert set(report) == set(plain) | {"labels"}
    assert report["labels"]["classes"] == ["csf", "gm", "wm"]  # named by the cohort's dseg.tsv
    assert json.loads((out / "report.json").read_text()) == report
    assert (out / "tissue.png").stat().st_size > 0
    markdown = (out / "report.md").read_text()
    assert "| labels | Dice mean: synthetic / held-out real |" in markdown and "## Labels" in markdown
    assert report_table(report).row_count == report_table(plain).row_count + 8


@pytest.mark.slow
def test_a_missing_or_misshapen_label_map_is_a_one_line_error(tmp_path, capsys, model_and_synth):
    real, model, synth = model_and_synth
    with_dseg = write_label_maps(synth, model, tmp_path / "synth")
    geometry, data = load_model(model).geometry, load_model(model).config.data
    dseg = sorted(with_dseg.rglob("*_dseg.nii.gz"))
    dseg[0].unlink()
    code, out, err = cli(capsys, "evaluate", "--real", real, "--synth", with_dseg, "--model", model)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: ") and dseg[0].name.replace("_dseg", "_T1w") in err and dseg[0].name in err

    nib.save(nib.Nifti1Image(np.zeros((24, 30, 1), np.uint8), np.eye(4)), dseg[0])
    _, ids = read_synthetic(with_dseg, geometry, data)
    with pytest.raises(UserError, match=rf"{dseg[0].name}: label map shape \(24, 30\) does not match"):
        read_synthetic_labels(with_dseg, ids, geometry)


@pytest.mark.parametrize("table, message", [
    ("idx\tname\n0\tbackground\n1\tcsf\n", "needs tab-separated columns 'index'"),
    ("index\tname\n0\tbackground\n2\tcsf\n", "indices must run 0, 1, 2"),
    ("index\tname\n0\tbackground\n", "at least one tissue class"),
])
def test_a_bad_dseg_table_is_a_user_error_naming_it(tmp_path, table, message):
    (tmp_path / "dseg.tsv").write_text(table)
    with pytest.raises(UserError, match=rf"dseg\.tsv: .*{message}"):
        read_label_names(tmp_path)
    assert read_label_names(tmp_path / "absent") is None
