"""`evaluate` end to end on tiny NIfTI folders: the report, its files, and the user errors."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from support import brain_volume, synthesize_on_cpu, write_nifti

from neurosql_med.config import load_config
from neurosql_med.data.cohort import load_cohort
from neurosql_med.errors import UserError
from neurosql_med.evaluation.evaluate import evaluate, read_synthetic, report_table
from neurosql_med.evaluation.options import EvaluateOptions
from neurosql_med.io.geometry import Geometry
from neurosql_med.io.nifti import to_nifti
from neurosql_med.io.nifti import write_nifti as write_synthetic

SPACING = (6.0, 6.0, 6.0)  # the tiny configs' voxel size: the volumes are used as they are
VOLUME = (20, 24, 20)


def write_scans(folder: Path, seeds: list[int], shape: tuple[int, int, int] = VOLUME) -> Path:
    for seed in seeds:
        write_nifti(folder / f"scan{seed:02d}.nii.gz", brain_volume(seed, shape), SPACING)
    return folder


@pytest.fixture
def real(tmp_path: Path) -> Path:
    return write_scans(tmp_path / "real", [0, 1, 2, 3])


@pytest.mark.slow
def test_report_flags_copied_scans_and_writes_its_files(tmp_path: Path, real: Path):
    synth = write_scans(tmp_path / "synth", [10, 11])
    shutil.copy(real / "scan00.nii.gz", synth / "copy.nii.gz")
    write_nifti(synth / "other_size.nii.gz", brain_volume(12, (18, 22, 16)), SPACING)  # resampled, not a crash
    holdout = write_scans(tmp_path / "holdout", [20, 21])
    out = tmp_path / "report"

    report = evaluate(EvaluateOptions(real=real, synth=synth, holdout=holdout, config="tiny", out=out))

    assert {p.name for p in out.iterdir()} == {"report.json", "report.md", "nearest.png", "distances.png", "spectrum.png",
                                               "mixing.png"}
    assert json.loads((out / "report.json").read_text()) == report
    assert "| fidelity | MAE to nearest real |" in (out / "report.md").read_text()
    counts = report["counts"]
    assert counts["real"] > 8 and counts["synthetic"] > 8 and counts["holdout"] > 4
    copied = {f["id"] for f in report["flagged"]}
    assert copied and all(i.startswith("copy.nii.gz [slice ") for i in copied)
    assert all(f["nearest_real"].startswith("scan00.nii.gz [slice ") for f in report["flagged"])
    assert report["fidelity"]["mae"] > 0
    assert report["holdout"]["coverage"]["covered"] == pytest.approx(covered_by_hand(holdout, synth))
    assert report["settings"]["feature_extractor"] == "random-conv-v1"
    assert report_table(report).row_count == len(report_table(report).rows) > 15
    assert "| c2st | AUC synthetic vs real |" in (out / "report.md").read_text()
    assert report["c2st"]["synthetic"]["folds"] >= 2 and report["c2st"]["reconstruction"] is None  # no model given
    assert report["c2st"]["controls"]["blur"]["auc"] > report["c2st"]["controls"]["real_vs_real"]["auc"]
    assert report["texture"]["high_frequency_ratio"] > 0 and report["texture"]["gradient_ratio"] > 0
    # the synthetic files are volumes: their slices are stacks, and 2d samples are placed among real levels
    assert report["coherence"]["synthetic"]["stacks"] == 4 and report["coherence"]["control"] is not None
    assert report["mixing"]["synthetic"]["n"] == counts["synthetic"] and report["mixing"]["control"]["ratio"]["median"] > 0
    for row in ("| mixing | level spread of 5 nearest real, worst tenth", "| coherence | adjacent-slice correlation |",
                "| c2st | AUC reconstructions vs real | n/a"):
        assert row in (out / "report.md").read_text()


def covered_by_hand(real_folder: Path, synth_folder: Path) -> float:
    """Share of real samples with a synthetic one nearer than their nearest other real one, pair by pair."""
    data = load_config("tiny").data
    real = load_cohort(real_folder, data).images.flatten(1)
    synth = load_cohort(synth_folder, data, min_samples=1).images.flatten(1)
    hits = 0
    for i, sample in enumerate(real):
        to_synth = min(float((sample - s).abs().mean()) for s in synth)
        to_real = min(float((sample - other).abs().mean()) for j, other in enumerate(real) if j != i)
        hits += to_synth < to_real
    return hits / len(real)


@pytest.mark.slow
def test_evaluate_with_a_model_reads_its_files_and_resamples_off_grid_ones(tmp_path: Path, tiny_models):
    real, model = tiny_models.scans, tiny_models.get("tiny")  # the shared tiny model and its training scans
    synth = tmp_path / "synth"
    synthesize_on_cpu(model, synth, n=5)

    report = evaluate(EvaluateOptions(real=real, synth=synth, model=model))
    assert report["counts"]["synthetic"] == 5
    assert 0 <= report["c2st"]["reconstruction"]["auc"] <= 1  # the real scans are the model's training set
    assert 0 <= report["c2st"]["reconstruction_decoder"]["auc"] <= 1  # the tiny model has a texture: G alone, too
    assert report["inputs"]["config"] is None

    # a raw training scan dropped among the synthetic files is resampled onto the model's grid and caught as a copy
    raw = next(real.rglob("*_T1w.nii.gz"))
    shutil.copy(raw, synth / "raw-copy.nii.gz")
    report = evaluate(EvaluateOptions(real=real, synth=synth, model=model, c2st="off"))
    assert "c2st" not in report and "texture" in report
    copies = [f["id"] for f in report["flagged"] if f["id"].startswith("raw-copy.nii.gz [resampled, slice")]
    assert report["counts"]["synthetic"] > 5 and copies, report["flagged"]
    assert all(f["ratio"] < 1e-3 for f in report["flagged"] if f["id"] in copies)

    write_nifti(synth / "sub-other" / "blank.nii.gz", np.zeros((20, 32, 6), np.int16), SPACING)
    with pytest.raises(UserError, match=r"blank\.nii\.gz: blank image"):
        evaluate(EvaluateOptions(real=real, synth=synth, model=model))


def geometry_2d() -> Geometry:
    return Geometry("2d", [24, 32, 24], list(SPACING), np.diag([*SPACING, 1.0]).tolist(), slice_axis=2, slice_index=12)


def test_synthetic_files_are_read_at_the_model_scale_and_hidden_files_are_left_out(tmp_path: Path):
    geometry = geometry_2d()
    samples = np.random.default_rng(0).random((3, 24, 32)).astype(np.float32)
    for i, sample in enumerate(samples):
        write_synthetic(tmp_path / f"sub-{i}" / "anat" / f"s{i}.nii.gz", to_nifti(sample, geometry, "test", {}))
    write_nifti(tmp_path / ".trash" / "old.nii.gz", np.zeros((20, 32, 1), np.int16))
    write_nifti(tmp_path / ".s9.nii.gz.tmp.nii.gz", np.zeros((20, 32, 1), np.int16))

    images, ids = read_synthetic(tmp_path, geometry, load_config("tiny").data)

    assert ids == ["sub-0/anat/s0.nii.gz", "sub-1/anat/s1.nii.gz", "sub-2/anat/s2.nii.gz"]
    assert images.shape == (3, 1, 24, 32)
    assert np.allclose(images[:, 0].numpy(), samples, atol=1 / 4095)


def test_a_stack_of_the_model_slices_is_read_slice_by_slice_with_its_label_map(tmp_path: Path):
    from neurosql_med.evaluation.evaluate import read_synthetic_labels

    stack = (np.random.default_rng(0).random((24, 32, 6)) * 4095).astype(np.int16)
    stack[..., 0] = 0  # outside the brain: not a sample
    labels = np.broadcast_to(np.arange(6, dtype=np.int16), (24, 32, 6))
    write_nifti(tmp_path / "sub-1" / "sub-1_T1w.nii.gz", stack, SPACING)
    write_nifti(tmp_path / "sub-1" / "sub-1_dseg.nii.gz", labels, SPACING)

    images, ids = read_synthetic(tmp_path, geometry_2d(), load_config("tiny").data)
    assert ids == [f"sub-1/sub-1_T1w.nii.gz [slice {k}]" for k in range(1, 6)]
    assert np.allclose(images[:, 0].numpy(), np.moveaxis(stack[..., 1:], -1, 0) / 4095)
    maps, labelled = read_synthetic_labels(tmp_path, ids, geometry_2d())
    assert labelled == list(range(5)) and maps[:, 0, 0, 0].tolist() == [1, 2, 3, 4, 5]


def test_volumes_are_stacks_and_have_no_slice_mixing(tmp_path: Path, real: Path):
    synth = write_scans(tmp_path / "synth", [10, 11, 12])
    report = evaluate(EvaluateOptions(real=real, synth=synth, config="tiny3d", c2st="off"))
    assert "mixing" not in report and report["coherence"]["synthetic"]["stacks"] == 3
    assert 0.9 < report["coherence"]["ratio"]["correlation"] < 1.1  # the same kind of volume on both sides


def test_an_unknown_classifier_is_a_user_error(tmp_path: Path):
    with pytest.raises(UserError, match="--c2st must be one of fast, strong, off, got 'medium'"):
        EvaluateOptions(real=tmp_path / "real", synth=tmp_path / "synth", c2st="medium")


@pytest.mark.parametrize(
    "files, message",
    [
        ({}, "no synthetic images"),
        ({"a.nii.gz": (24, 32, 1)}, "1 synthetic image; evaluation needs at least 2"),
        ({"a.nii.gz": (24, 32, 1), "b.nii.gz": (24, 30, 1)}, r"b\.nii\.gz: not a 3D volume \(shape 24x30x1\)"),
        ({"a.nii.gz": (24, 32, 1), "b.nii.gz": (24, 32, 2)}, r"b\.nii\.gz: blank image"),
        ({"a.nii.gz": (24, 32, 1), "b.nii.gz": None}, r"b\.nii\.gz: unreadable NIfTI"),
        ({"a.nii.gz": (24, 32, 1), "b.nii.gz": (24, 32, 1, 2)}, r"b\.nii\.gz: 4D data of shape .* is not a 3D image"),
    ],
)
def test_synthetic_folder_problems_are_user_errors(tmp_path: Path, files: dict, message: str):
    for name, shape in files.items():  # a.nii.gz lies on the model's grid; b.nii.gz does not and is resampled
        if shape is None:
            (tmp_path / name).write_bytes(b"\x1f\x8b not really gzip")
        elif name == "a.nii.gz":
            write_synthetic(tmp_path / name, to_nifti(np.zeros(shape[:2], np.float32), geometry_2d(), "test", {}))
        else:
            write_nifti(tmp_path / name, np.zeros(shape, np.int16), SPACING)
    with pytest.raises(UserError, match=message):
        read_synthetic(tmp_path, geometry_2d(), load_config("tiny").data)


def test_missing_or_too_small_folders_are_user_errors(tmp_path: Path, real: Path):
    one = write_scans(tmp_path / "one", [5])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no brain MRI scans found"):
        evaluate(EvaluateOptions(real=real, synth=empty, config="tiny"))
    with pytest.raises(UserError, match="synthetic folder not found"):
        read_synthetic(tmp_path / "absent", geometry_2d(), load_config("tiny").data)
    with pytest.raises(UserError, match=r"1 synthetic image; evaluation needs at least 2"):
        evaluate(EvaluateOptions(real=real, synth=one, config="tiny3d"))
    with pytest.raises(UserError, match="at least 2 are needed"):
        evaluate(EvaluateOptions(real=one, synth=real, config="tiny3d"))
    for tau in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(UserError, match="--tau must be positive"):
            EvaluateOptions(real=real, synth=real, config="tiny", tau=tau)
