"""Label maps on the data side: which file labels which scan, what is refused, and that labels stay aligned."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from support import brain_volume, cli, tissue_labels, write_nifti
from neurosql_med.config import load_config, override
from neurosql_med.data.cohort import load_cohort
from neurosql_med.data.discovery import discover
from neurosql_med.data.transforms import preprocess
from neurosql_med.errors import UserError

CUTS = (150, 450, 750)  # between the layers of `layered`: 0, 300, 600, 900


def layered(seed: int, shape=(44, 52, 44)) -> np.ndarray:
    """Three nested tissue layers and an off-centre blob (so a flip or shift shows), with noise."""
    rng = np.random.default_rng(seed)
    g = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r2 = g[0] ** 2 + g[1] ** 2 + g[2] ** 2
    blob = (g[0] - 0.3) ** 2 + (g[1] + 0.2) ** 2 + g[2] ** 2 < 0.05
    vol = 300.0 * (r2 < 0.75 - 0.05 * seed) + 300 * (r2 < 0.45) + 300 * ((r2 < 0.2) | blob)
    return (vol + rng.integers(0, 30, size=shape) * (r2 < 0.75)).astype(np.int16)


def labelled_bids(root: Path, count: int = 3, shift: int = 0) -> Path:
    for i in range(count):
        anat = root / f"sub-{i:02d}/anat"
        volume = layered(i)
        write_nifti(anat / f"sub-{i:02d}_T1w.nii.gz", volume, (2, 2, 2))
        write_nifti(anat / f"sub-{i:02d}_dseg.nii.gz", np.roll(tissue_labels(volume, CUTS), shift, axis=0), (2, 2, 2))
    (root / "dseg.tsv").write_text("index\tname\n0\tbackground\n1\tCSF\n2\tGM\n3\tWM\n")
    return root


def test_oasis1_pairs_fsl_seg_with_the_masked_atlas_image(tiny_oasis1: Path) -> None:
    found = discover(tiny_oasis1, strict=True)
    assert found.labels_used and found.label_names == ["background", "CSF", "GM", "WM"]
    for scan in found.scans:
        assert scan.labels.parent.name == "FSL_SEG" and scan.labels.name.endswith("_t88_masked_gfc_fseg.hdr")
        assert [f.suffix for f in scan.label_files] == [".hdr", ".img"]
    assert not any("fseg" in s.path.name for s in found.skipped)
    assert discover(tiny_oasis1, labels="none").labels_used is False


def test_bids_dseg_beside_the_t1w_with_names_from_dseg_tsv(tmp_path: Path) -> None:
    root = labelled_bids(tmp_path)
    (root / "dseg.tsv").write_text("index\tname\n1\tcsf\n2\tcortex\n3\twhite\n")  # 0 left out: background
    found = discover(root)
    assert found.labels_used and found.label_names == ["background", "csf", "cortex", "white"]
    assert [s.id for s in found.scans] == ["sub-00", "sub-01", "sub-02"] and found.skipped == []
    assert found.to_json()["scans"][0]["labels"] == "sub-00/anat/sub-00_dseg.nii.gz"


def test_bids_dseg_under_derivatives(tmp_path: Path) -> None:
    for i in range(2):
        volume = brain_volume(i)
        write_nifti(tmp_path / f"sub-{i}/ses-1/anat/sub-{i}_ses-1_T1w.nii.gz", volume)
        fast = tmp_path / f"derivatives/fast/sub-{i}/ses-1/anat"
        write_nifti(fast / f"sub-{i}_ses-1_desc-tissue_dseg.nii.gz", tissue_labels(volume) * 2)
        write_nifti(fast / f"sub-{i}_ses-1_space-MNI_dseg.nii.gz", tissue_labels(volume))  # another space: not paired
    (tmp_path / "derivatives/fast/dseg.tsv").write_text("index\tname\n0\tbg\n1\tCSF\n2\tbrain\n")
    found = discover(tmp_path)
    assert found.labels_used and found.label_names == ["bg", "CSF", "brain"]
    assert [s.labels.name for s in found.scans] == ["sub-0_ses-1_desc-tissue_dseg.nii.gz", "sub-1_ses-1_desc-tissue_dseg.nii.gz"]
    assert {s.path.name for s in found.skipped} == {"sub-0_ses-1_space-MNI_dseg.nii.gz", "sub-1_ses-1_space-MNI_dseg.nii.gz"}


def test_glob_pairs_by_name_and_label_maps_are_never_scans(tmp_path: Path) -> None:
    for name in ("alice", "bob"):
        volume = brain_volume(len(name))
        write_nifti(tmp_path / f"{name}.nii.gz", volume)
        write_nifti(tmp_path / f"{name}_tissue.nii", tissue_labels(volume))
    write_nifti(tmp_path / "carol.nii.gz", brain_volume(3))
    write_nifti(tmp_path / "carol_dseg.nii.gz", tissue_labels(brain_volume(3)))  # a label map by its name
    found = discover(tmp_path, labels="*_tissue.nii")
    assert [s.id for s in found.scans] == ["alice", "bob"]  # carol has no match: skipped
    assert [s.labels.name for s in found.scans] == ["alice_tissue.nii", "bob_tissue.nii"]
    assert found.label_names == ["background", "label-1"]  # no dseg.tsv: classes are numbered
    assert {s.path.name: s.reason for s in found.skipped}["carol.nii.gz"].startswith("label map missing: no file matches")
    unlabelled = discover(tmp_path, labels="none")
    assert [s.id for s in unlabelled.scans] == ["alice", "alice_tissue", "bob", "bob_tissue", "carol"]
    assert not unlabelled.labels_used
    auto = discover(tmp_path)  # auto: carol_dseg pairs by its name; alice and bob have none, so none are used
    assert not auto.labels_used and [s.labels_problem for s in auto.scans if s.id == "carol"] == [None]


def _mismatched(root: Path, kind: str) -> None:
    volume = brain_volume(5)
    labels = tissue_labels(volume)
    spacing = (1.0, 1.0, 1.0)
    if kind == "shape":
        labels = labels[:, :, :-1]
    elif kind == "affine":
        spacing = (1.0, 1.0, 1.1)
    elif kind == "negative":
        labels = labels.astype(np.int16) - 1
    elif kind == "fraction":
        labels = labels.astype(np.float32) * 0.5
    elif kind == "range":
        labels = labels * 7
    write_nifti(root / "sub-09/anat/sub-09_T1w.nii.gz", volume)
    write_nifti(root / "sub-09/anat/sub-09_dseg.nii.gz", labels, spacing)


@pytest.mark.parametrize("kind, reason", [
    ("shape", "shape 12x14x9, its image is 12x14x10"),
    ("affine", "not on its image's grid (affines differ by up to 0.1 mm)"),
    ("negative", "negative or non-integer values"),
    ("fraction", "negative or non-integer values"),
    ("range", "holds class 7, but "),
])
def test_a_label_map_that_does_not_fit_skips_its_scan(tmp_path: Path, kind: str, reason: str) -> None:
    root = labelled_bids(tmp_path, count=2)
    _mismatched(root, kind)
    found = discover(root)
    assert found.labels_used and [s.id for s in found.scans] == ["sub-00", "sub-01"]
    (skip,) = found.skipped
    assert skip.path.name == "sub-09_T1w.nii.gz" and skip.reason.startswith("label map rejected: ") and reason in skip.reason
    with pytest.raises(UserError, match="sub-09_dseg.nii.gz: label map rejected: "):
        discover(root, strict=True)


def test_labels_asked_by_glob_but_none_found_is_an_error(tmp_path: Path, capsys) -> None:
    root = labelled_bids(tmp_path, count=2)
    with pytest.raises(UserError, match=f"--labels '\\*_seg.nii.gz' matches no label map beside any scan in {root}"):
        discover(root, labels="*_seg.nii.gz")
    code, _, err = cli(capsys, "inspect", root, "--labels", "*_seg.nii.gz")
    assert code == 2 and err.startswith("error: --labels") and str(root) in err and len(err.splitlines()) == 1
    code, _, err = cli(capsys, "fit", root, "--config", "tiny", "--labels", "/abs/*.nii", "--out", tmp_path / "m")
    assert code == 2 and "data.labels" in err


def test_auto_uses_no_labels_when_one_scan_has_none(tmp_path: Path, capsys) -> None:
    root = labelled_bids(tmp_path, count=3)
    (root / "sub-01/anat/sub-01_dseg.nii.gz").unlink()
    found = discover(root)
    assert not found.labels_used and len(found.scans) == 3
    assert [s.labels_problem for s in found.scans] == [None, "missing", None]
    code, out, _ = cli(capsys, "inspect", root, "--json")
    doc = json.loads(out)
    assert code == 0 and doc["labels_used"] is False and [s["labels"] for s in doc["scans"]][1] is None
    code, out, _ = cli(capsys, "inspect", root)
    assert "labels" in out and "missing" in out and "label maps: not used (1 of 3" in out
    assert load_cohort(found, load_config("tiny").data).labels is None


def _mismatch_share(cohort) -> tuple[float, int]:
    """Share of brain voxels whose class differs from the threshold of the preprocessed image, and how
    many of those lie off a class boundary. The cuts sit midway between the classes' median intensities."""
    x, y = cohort.images.numpy(), cohort.labels.numpy()
    medians = [np.median(x[y == k]) for k in range(4)]
    wrong = np.digitize(x, [(a + b) / 2 for a, b in zip(medians, medians[1:])]) != y
    size = (1, 1, *[3] * (y.ndim - 2))
    edge = ndimage.maximum_filter(y, size) != ndimage.minimum_filter(y, size)
    return wrong.sum() / (y > 0).sum(), int((wrong & ~edge).sum())


@pytest.mark.parametrize("config", ["tiny", "tiny3d"])
def test_labels_stay_aligned_through_the_pipeline(tmp_path: Path, config: str) -> None:
    """2 mm scans resampled to 3 mm (bilinear image, nearest labels), cropped, padded, sliced.

    Tolerance: every disagreement lies on a class boundary, and they are under 10 % of the brain
    voxels (measured 5.5 % in 2D, 7.5 % in 3D: partial volumes of the bilinear image). Labels
    shifted by a single 2 mm voxel give about 20 %, which the test must catch.
    """
    cfg = override(load_config(config), data__spacing=[3.0, 3.0, 3.0], data__shape=[32, 40, 32]).data
    aligned = load_cohort(labelled_bids(tmp_path / "aligned"), cfg)
    assert aligned.labels.dtype.is_floating_point is False and aligned.labels.shape == aligned.images.shape
    share, off_edge = _mismatch_share(aligned)
    assert share < 0.10 and off_edge == 0
    shifted, _ = _mismatch_share(load_cohort(labelled_bids(tmp_path / "shifted", shift=1), cfg))
    assert shifted > 0.15


def test_resize_never_blends_classes(tmp_path: Path) -> None:
    root = labelled_bids(tmp_path, count=1)
    cfg = override(load_config("tiny3d"), data__fit="resize").data
    scan = discover(root).scans[0]
    out = preprocess(cfg, labels=True)({"image": scan.path, "format": "nifti", "label": scan.labels, "format_label": "nifti"})
    values = np.unique(out["label"].numpy())
    assert set(values) <= {0, 1, 2, 3} and len(values) == 4 and out["label"].shape == out["image"].shape


def test_labels_option_is_validated() -> None:
    for bad in ("", "/abs/*.nii.gz", "None", "seg.mgz"):
        with pytest.raises(UserError, match="config key 'data.labels' must be auto, none, or a glob"):
            override(load_config("tiny"), data__labels=bad)
    assert override(load_config("tiny"), data__labels="seg/*").data.labels == "seg/*"
