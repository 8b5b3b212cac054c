"""Scan discovery and readers: what is found, what is chosen, and why the rest is skipped."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from support import SHAPE, brain_volume, ras_affine, write_analyze, write_dicom_series, write_nifti
from monai.data import MetaTensor

from neurosql_med.data.discovery import discover
from neurosql_med.data.readers import LoadScand, ScanError, read_scan
from neurosql_med.errors import UserError

SPACING = (1.0, 1.5, 2.0)


def test_all_formats_read_the_same_voxels(tmp_path: Path) -> None:
    volume = brain_volume(3)
    sources = {
        "nifti": (write_nifti(tmp_path / "a.nii.gz", volume, SPACING), "nifti"),
        "analyze": (write_analyze(tmp_path / "b.hdr", volume, SPACING), "analyze"),
        "dicom": (tmp_path / "c", "dicom"),
        "dicom-no-suffix": (write_dicom_series(tmp_path / "d", volume, SPACING, suffix=""), "dicom"),
    }
    write_dicom_series(tmp_path / "c", volume, SPACING)
    assert nib.load(tmp_path / "b.hdr").shape == (*SHAPE, 1)
    read = {name: read_scan(*args) for name, args in sources.items()}
    for name, (data, affine) in read.items():
        assert data.dtype == np.float32 and data.shape == SHAPE, name
        np.testing.assert_array_equal(data, volume, err_msg=name)
        np.testing.assert_allclose(nib.affines.voxel_sizes(affine), SPACING, err_msg=name)
    # DICOM (LPS on disk) comes out in RAS exactly like the NIfTI; Analyze has no orientation
    # field and nibabel gives it the radiological (x-flipped) convention.
    np.testing.assert_allclose(read["dicom"][1], ras_affine(SPACING))
    np.testing.assert_allclose(read["dicom-no-suffix"][1], read["nifti"][1])
    assert nib.aff2axcodes(read["analyze"][1]) == ("L", "A", "S")


def test_load_scand_gives_channel_first_meta_tensor(tmp_path: Path) -> None:
    hdr = write_analyze(tmp_path / "x.hdr", brain_volume(), SPACING)
    out = LoadScand(keys="image")({"image": hdr, "format": "analyze", "id": "x"})
    assert isinstance(out["image"], MetaTensor)
    assert tuple(out["image"].shape) == (1, *SHAPE)
    assert out["image"].affine.shape == (4, 4) and out["id"] == "x"
    assert "spatial_shape" in out["image"].meta


def test_dicom_folder_with_two_series_loads_only_the_chosen_one(tmp_path: Path) -> None:
    folder = tmp_path / "study"
    write_dicom_series(folder, brain_volume(1), description="T1 MPRAGE", prefix="a")
    write_dicom_series(folder, brain_volume(2, (12, 14, 6)), description="T2", prefix="b")
    found = discover(tmp_path)
    assert [s.id for s in found.scans] == ["study_T1_MPRAGE", "study_T2"]
    assert [s.shape for s in found.scans] == [SHAPE, (12, 14, 6)]
    assert [len(s.files) for s in found.scans] == [10, 6]
    for scan, seed in zip(found.scans, (1, 2)):
        loaded = LoadScand(keys="image")({"image": scan.source, "format": scan.format})["image"]
        np.testing.assert_array_equal(loaded[0].numpy(), brain_volume(seed, scan.shape))
    with pytest.raises(ScanError, match="2 DICOM series in one folder"):
        read_scan(folder, "dicom")


def test_oasis1_uses_the_masked_atlas_image_of_each_session(tiny_oasis1: Path) -> None:
    found = discover(tiny_oasis1, strict=True)  # the siblings are a choice, not an error
    assert found.layout == "oasis1"
    assert [(s.id, s.subject, s.session) for s in found.scans] == [
        ("OAS1_0001_MR1", "OAS1_0001", "MR1"), ("OAS1_0002_MR1", "OAS1_0002", "MR1"),
    ]
    for scan in found.scans:
        assert scan.path.name.endswith("_t88_masked_gfc.hdr") and scan.format == "analyze"
        assert [f.suffix for f in scan.files] == [".hdr", ".img"]
        assert scan.shape == SHAPE
        assert scan.labels == scan.path.parents[3] / "FSL_SEG" / scan.path.name.replace("_gfc.hdr", "_gfc_fseg.hdr")
    assert found.labels_used and found.label_names == ["background", "CSF", "GM", "WM"]
    reasons = {s.path.name: s.reason for s in found.skipped}
    assert len(reasons) == 2 * 4  # RAW x2, SUBJ_111, t88_gfc per session; the FSL_SEG label map is paired
    assert "raw acquisition (RAW/)" in reasons["OAS1_0001_MR1_mpr-1_anon.hdr"]
    assert "without brain mask" in reasons["OAS1_0002_MR1_mpr_n4_anon_111_t88_gfc.hdr"]
    assert all("*_t88_masked_gfc" in r for r in reasons.values())


def test_bids_uses_t1w_images(tiny_bids: Path) -> None:
    found = discover(tiny_bids)
    assert found.layout == "bids"
    assert [(s.id, s.subject, s.session) for s in found.scans] == [
        ("sub-OAS30001_ses-d0129", "sub-OAS30001", "ses-d0129"),
        ("sub-OAS30001_ses-d0757", "sub-OAS30001", "ses-d0757"),
        ("sub-OAS30002_ses-d0100", "sub-OAS30002", "ses-d0100"),
        ("sub-OAS30003", "sub-OAS30003", None),
    ]
    reasons = {s.path.name: s.reason for s in found.skipped}
    assert set(reasons) == {"sub-OAS30002_ses-d0100_FLAIR.nii.gz", "sub-OAS30001_T1w.hdr"}
    assert "not a T1-weighted image" in reasons["sub-OAS30002_ses-d0100_FLAIR.nii.gz"]
    assert "outside the subject folders" in reasons["sub-OAS30001_T1w.hdr"]


def test_bids_runs_of_one_session_get_distinct_ids(tmp_path: Path) -> None:
    anat = tmp_path / "sub-01/ses-1/anat"
    for run in (1, 2):
        write_nifti(anat / f"sub-01_ses-1_run-0{run}_T1w.nii.gz", brain_volume(run))
    assert [s.id for s in discover(tmp_path).scans] == ["sub-01_ses-1_run-01", "sub-01_ses-1_run-02"]


def test_generic_folder_uses_every_volume(tmp_path: Path) -> None:
    write_nifti(tmp_path / "alice.nii.gz", brain_volume(1))
    write_nifti(tmp_path / "site-a/T1.nii", brain_volume(2))
    write_nifti(tmp_path / "site-b/T1.nii.gz", brain_volume(3))
    write_analyze(tmp_path / "bob.hdr", brain_volume(4))
    write_dicom_series(tmp_path / "carol", brain_volume(5), suffix="")
    (tmp_path / "notes.md").write_text("# scans\n")
    (tmp_path / ".hidden.nii.gz").write_bytes(b"")
    found = discover(tmp_path)
    assert found.layout == "generic" and found.skipped == []
    assert [(s.id, s.subject, s.session, s.format) for s in found.scans] == [
        ("alice", "alice", None, "nifti"), ("bob", "bob", None, "analyze"), ("carol", "carol", None, "dicom"),
        ("site-a_T1", "site-a_T1", None, "nifti"), ("site-b_T1", "site-b_T1", None, "nifti"),
    ]
    carol = found.scans[2]
    assert carol.path == tmp_path / "carol" and len(carol.files) == SHAPE[2] and carol.orientation == "RAS"


def test_pattern_overrides_the_layout(tiny_oasis1: Path, tiny_bids: Path) -> None:
    found = discover(tiny_oasis1, pattern="*/PROCESSED/MPRAGE/T88_111/*_t88_gfc.hdr")
    assert found.layout == "pattern"
    assert [s.id for s in found.scans] == ["OAS1_0001_MR1", "OAS1_0002_MR1"]
    assert all(s.path.name.endswith("_t88_gfc.hdr") for s in found.scans)
    assert len(found.skipped) == 2 * 5 and not found.labels_used
    reasons = {s.path.name: s.reason for s in found.skipped}
    assert reasons.pop("OAS1_0001_MR1_mpr_n4_anon_111_t88_masked_gfc_fseg.hdr") == "a label map, not a scan; no scan pairs with it"
    assert all("does not match --pattern" in r for n, r in reasons.items() if not n.endswith("_fseg.hdr"))
    flair = discover(tiny_bids, pattern="**/*_FLAIR.nii.gz")
    assert [s.id for s in flair.scans] == ["sub-OAS30002_ses-d0100"]
    assert len(discover(tiny_bids, pattern="**/*.nii.gz").scans) == 5
    with pytest.raises(UserError, match="--pattern '\\*\\*/\\*.mgz' matches no image in"):
        discover(tiny_bids, pattern="**/*.mgz")


def _truncated_gzip(path: Path) -> None:
    write_nifti(path, brain_volume(7))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _bad_folder(root: Path) -> dict[str, str]:
    """A good scan beside one of each unusable kind; returns the expected reason per name."""
    write_nifti(root / "good.nii.gz", brain_volume(0))
    (root / "empty.nii.gz").write_bytes(b"")
    _truncated_gzip(root / "truncated.nii.gz")
    (root / "garbage.nii").write_bytes(b"not an image at all" * 30)
    write_analyze(root / "no_img.hdr", brain_volume(1))
    (root / "no_img.img").unlink()
    write_analyze(root / "no_hdr.hdr", brain_volume(2))
    (root / "no_hdr.hdr").unlink()
    with_nan = brain_volume(3).astype(np.float32)
    with_nan[3, 4, 5] = np.nan
    write_nifti(root / "nan.nii.gz", with_nan)
    with_inf = brain_volume(3).astype(np.float32)
    with_inf[0, 0, 0] = np.inf
    write_nifti(root / "inf.nii", with_inf)
    write_nifti(root / "fmri.nii.gz", np.stack([brain_volume(s) for s in range(3)], axis=-1))
    write_nifti(root / "flat.nii.gz", brain_volume(4)[:, :, 0])
    files = write_dicom_series(root / "gap", brain_volume(5))
    files[4].unlink()
    write_dicom_series(root / "irregular", brain_volume(6), positions=[0, 1, 2, 3, 4, 5.6, 6, 7, 8, 9])
    twice = np.concatenate([brain_volume(7), brain_volume(8)], axis=2)
    write_dicom_series(root / "dwi", twice, positions=[float(k % SHAPE[2]) for k in range(2 * SHAPE[2])])
    torn = write_dicom_series(root / "torn", brain_volume(9))[3]
    torn.write_bytes(torn.read_bytes()[:-50])
    return {
        "empty.nii.gz": "empty file (0 bytes)",
        "truncated.nii.gz": "truncated or corrupt gzip data",
        "garbage.nii": "not a readable NIfTI/Analyze image",
        "no_img.hdr": "Analyze header without its .img data file",
        "no_hdr.img": "Analyze .img data file without its .hdr header",
        "nan.nii.gz": "NaN or infinite",
        "inf.nii": "NaN or infinite",
        "fmri.nii.gz": "4D image with 3 volumes; nsql-med needs one 3D volume per scan",
        "flat.nii.gz": "not a 3D volume (shape 12x14)",
        "gap": "missing DICOM slice (InstanceNumber jumps from 4 to 6)",
        "irregular": "irregular DICOM slice positions",
        "dwi": "4D image with 2 volumes",
        "torn": "unreadable image (The number of bytes of pixel data is less than expected",
    }


def test_each_unusable_file_is_skipped_with_its_reason(tmp_path: Path) -> None:
    expected = _bad_folder(tmp_path)
    found = discover(tmp_path)
    assert [s.id for s in found.scans] == ["good"] and found.layout == "generic"
    assert found.scans[0].intensity[1] > 0
    reasons = {s.path.name: s.reason for s in found.skipped}
    assert set(reasons) == set(expected)
    for name, reason in expected.items():
        assert reason in reasons[name], name


def test_strict_turns_the_first_skip_into_an_error(tmp_path: Path) -> None:
    write_nifti(tmp_path / "good.nii.gz", brain_volume(0))
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    with pytest.raises(UserError, match=r"empty\.nii\.gz: empty file \(0 bytes\)"):
        discover(tmp_path, strict=True)


def test_scan_error_is_a_user_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.nii.gz"
    path.write_bytes(gzip.compress(b"x" * 400))
    with pytest.raises(UserError, match=f"^{path}: "):
        LoadScand(keys="image")({"image": path, "format": "nifti"})


def test_folders_without_scans_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="scan folder not found: .*nowhere"):
        discover(tmp_path / "nowhere")
    with pytest.raises(UserError, match=r"no brain MRI scans found in .* \(no NIfTI, Analyze or DICOM files\)"):
        discover(tmp_path)
    (tmp_path / "readme.txt").write_text("hi")
    (tmp_path / "empty.nii").write_bytes(b"")
    (tmp_path / "brain.mgz").write_bytes(b"\x01" * 10)
    with pytest.raises(UserError, match=r"no brain MRI scans found in .* \(2 skipped: brain\.mgz: unsupported"):
        discover(tmp_path)


def test_to_json_lists_scans_and_skips_relative_to_root(tiny_bids: Path) -> None:
    doc = discover(tiny_bids).to_json()
    json.dumps(doc)
    assert set(doc) == {"layout", "labels_used", "label_names", "scans", "skipped"}
    assert doc["scans"][0] == {
        "id": "sub-OAS30001_ses-d0129", "subject": "sub-OAS30001", "session": "ses-d0129",
        "path": "sub-OAS30001/ses-d0129/anat/sub-OAS30001_ses-d0129_T1w.nii.gz",
        "format": "nifti", "shape": list(SHAPE), "spacing": [1.0, 1.0, 1.0], "labels": None, "labels_problem": "missing",
    }
    assert doc["labels_used"] is False and doc["label_names"] is None
    assert {"path": "formats/sub-OAS30001_T1w.hdr", "reason": doc["skipped"][0]["reason"]} in doc["skipped"]


def test_symlinked_subject_folders_are_followed_once(tmp_path, tiny_bids):
    from neurosql_med.data.discovery import discover

    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "sub-OAS30001").symlink_to(tiny_bids / "sub-OAS30001", target_is_directory=True)
    (linked / "sub-OAS30001" / "ses-d0129" / "loop").symlink_to(linked, target_is_directory=True)
    found = discover(linked)
    assert sorted(s.id for s in found.scans) == ["sub-OAS30001_ses-d0129", "sub-OAS30001_ses-d0757"]
