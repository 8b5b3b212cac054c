"""DICOM export: every instance marked synthetic, valid for dciodvfy, placed like the NIfTI, reproducible."""
import hashlib
import json
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from support import bids_errors, cli, dciodvfy, is_3d, synthesize_on_cpu
from neurosql_med.data.readers import read_scan
from neurosql_med.errors import UserError
from neurosql_med.synthesis.reproduce import reproduce
from neurosql_med.version import __version__

UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "SOPInstanceUID")


@pytest.fixture(params=["tiny", "tiny3d"])
def model_dir(request, tiny_models):
    return tiny_models.get(request.param)


@pytest.fixture
def cohort(model_dir, both_formats) -> Path:
    return both_formats(model_dir)


def instances(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.dcm"))


@pytest.mark.slow
@pytest.mark.processes
def test_dciodvfy_reports_no_errors(cohort):
    validator = dciodvfy()
    files = instances(cohort)
    assert files
    for path in files:
        proc = subprocess.run([validator, str(path)], capture_output=True, text=True, timeout=60)
        report = proc.stdout + proc.stderr
        assert "MRImage" in report, report  # the validator recognised the IOD it checked against
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        assert errors == [], f"{path.name}: {errors}"


@pytest.mark.slow
def test_every_instance_is_marked_synthetic_and_names_no_one(cohort, model_dir):
    for sub in sorted(cohort.glob("sub-*")):
        sidecar = json.loads(next((sub / "anat").glob("*.json")).read_text())
        for path in instances(sub):
            ds = pydicom.dcmread(path)
            assert ds.SyntheticData == "YES" and list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
            assert str(ds.PatientName) == f"SYNTHETIC^{sub.name[4:]}" and ds.PatientID == sub.name[4:]
            assert ds.BurnedInAnnotation == "NO" and ds.Manufacturer == "nsql-med"
            assert f"nsql-med {__version__}" in list(ds.SoftwareVersions)
            assert ds.SeriesDescription.startswith("SYNTHETIC nsql-med")
            info = sidecar["NeuroSQL"]
            for fact in (info["model_sha256"], f"seed {info['seed']}", f"index {info['index']}"):
                assert fact in ds.DerivationDescription
            dated = [e.keyword for e in ds.iterall() if e.VR in ("DA", "DT", "TM") and e.value not in ("", None)]
            assert dated == []
            assert ds.PatientBirthDate == "" and ds.ReferringPhysicianName == "" and ds.PatientSex == ""
            provenance = json.loads(ds.private_block(0x0009, "nsql-med provenance")[0x01].value)
            assert provenance == {k: v for k, v in sidecar.items() if k != "ImageSha256"}
            assert ds.pixel_array.dtype == np.uint16 and ds.pixel_array.max() <= 4095
            assert ds.MRAcquisitionType == ("3D" if is_3d(model_dir) else "2D")


@pytest.mark.slow
def test_uids_are_stable_across_runs_and_unique_across_samples(cohort, model_dir, tmp_path):
    again = tmp_path / "again"
    synthesize_on_cpu(model_dir, again, n=3, format="dicom", batch_size=1)
    first = {p.relative_to(cohort): p.read_bytes() for p in instances(cohort)}
    second = {p.relative_to(again): p.read_bytes() for p in instances(again)}
    assert first == second  # same seed, same bytes: no timestamps, no random UIDs
    per_sample = {}
    for sub in sorted(cohort.glob("sub-*")):
        headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in instances(sub)]
        for keyword in UID_KEYWORDS[:3]:
            assert len({h.get(keyword) for h in headers}) == 1, keyword  # one study, series, frame per sample
        per_sample[sub.name] = headers
    uids = [h.get(k) for hs in per_sample.values() for h in hs for k in UID_KEYWORDS]
    shared = len(per_sample) * 3 * (len(uids) // len(per_sample) // 4 - 1)  # study/series/frame repeat per slice
    assert len(set(uids)) == len(uids) - shared
    for uid in uids:
        assert uid.startswith("2.25.") and len(uid) <= 64 and uid[5:].isdigit()


@pytest.mark.slow
def test_read_back_gives_the_nifti_array_and_affine(cohort, model_dir, capsys):
    sub = cohort / "sub-synth0002"
    nifti = nib.load(next((sub / "anat").glob("*.nii.gz")))
    if is_3d(model_dir):
        array, affine = read_scan(sub / "dicom", "dicom")  # what inspect, fit and evaluate read
        assert np.array_equal(array, np.asarray(nifti.dataobj))
        assert np.abs(affine - nifti.affine).max() < 1e-3
        code, out, _ = cli(capsys, "inspect", sub / "dicom", "--json")
        assert code == 0 and json.loads(out)["scans"][0]["format"] == "dicom"
        return
    # a single slice is not a volume for nsql-med: inspect skips it, so read it with pydicom and the plane attributes
    code, _, err = cli(capsys, "inspect", sub / "dicom")
    assert code == 2 and "single 2D DICOM slice" in err
    (path,) = instances(sub)
    ds = pydicom.dcmread(path)
    axis = json.loads((model_dir / "geometry.json").read_text())["slice_axis"]
    across, down = (a for a in range(3) if a != axis)
    lps = np.diag([-1.0, -1.0, 1.0])
    row, column = np.asarray(ds.ImageOrientationPatient[:3], float), np.asarray(ds.ImageOrientationPatient[3:], float)
    affine = np.eye(4)
    affine[:3, across] = lps @ row * float(ds.PixelSpacing[1])
    affine[:3, down] = lps @ column * float(ds.PixelSpacing[0])
    affine[:3, axis] = lps @ np.cross(row, column) * float(ds.SliceThickness)
    affine[:3, 3] = lps @ np.asarray(ds.ImagePositionPatient, float)
    assert np.abs(affine - nifti.affine).max() < 1e-3
    assert np.array_equal(np.expand_dims(ds.pixel_array.T, axis), np.asarray(nifti.dataobj))


@pytest.mark.slow
def test_reproduce_covers_dicom_and_catches_a_changed_instance(model_dir, tmp_path, capsys):
    out = tmp_path / "s"
    synthesize_on_cpu(model_dir, out, n=3, format="dicom")
    folder = out / "sub-synth0003/dicom"
    files = instances(folder)
    for target in (files[0], folder, folder / "sub-synth0003_desc-nsql_T1w.json"):
        assert reproduce(target, model_dir)[0], target
    code, stdout, _ = cli(capsys, "reproduce", files[-1], "--model", model_dir)
    assert code == 0 and "identical" in stdout
    (folder / "sub-synth0003_desc-nsql_T1w.json").unlink()  # the provenance inside each instance still serves
    assert reproduce(folder, model_dir)[0]
    ds = pydicom.dcmread(files[-1])
    pixels = ds.pixel_array.copy()
    pixels.flat[7] = (int(pixels.flat[7]) + 1) % 4096
    ds.PixelData = pixels.tobytes()
    ds.save_as(files[-1])
    code, stdout, _ = cli(capsys, "reproduce", files[0], "--model", model_dir)
    assert code == 1 and "DIFFERENT" in stdout
    if len(files) > 1:
        files[-1].unlink()
        assert not reproduce(folder, model_dir)[0]  # a missing instance is a difference too
    empty = tmp_path / "empty" / "dicom"
    empty.mkdir(parents=True)
    with pytest.raises(UserError, match="no DICOM files"):
        reproduce(empty, model_dir)


@pytest.mark.slow
def test_manifest_resume_and_force_cover_dicom(model_dir, tmp_path):
    out = tmp_path / "s"
    synthesize_on_cpu(model_dir, out, n=3, format="both")
    rows = [line.split("\t") for line in (out / "manifest.tsv").read_text().splitlines()[1:]]
    listed = {name: sha for name, sha, _, _ in rows}
    on_disk = {p.relative_to(out).as_posix() for p in instances(out)} | {
        p.relative_to(out).as_posix() for p in out.rglob("*.nii.gz")}
    assert set(listed) == on_disk
    for name, sha in listed.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == sha
    manifest = (out / "manifest.tsv").read_text()
    instances(out / "sub-synth0002")[0].unlink()
    assert synthesize_on_cpu(model_dir, out, n=3, format="both", resume=True).written == 1
    assert (out / "manifest.tsv").read_text() == manifest
    assert synthesize_on_cpu(model_dir, out, n=3, format="both", resume=True).written == 0
    nifti_only = tmp_path / "n"
    synthesize_on_cpu(model_dir, nifti_only, n=2)
    assert not instances(nifti_only)
    assert synthesize_on_cpu(model_dir, nifti_only, n=2, format="both", resume=True).written == 2  # DICOM was missing
    assert synthesize_on_cpu(model_dir, out, n=2, format="dicom", force=True).written == 2  # --force knows the dicom folders
    assert not list(out.rglob("*.nii.gz")) and "*/dicom" in (out / ".bidsignore").read_text()
    with pytest.raises(UserError, match="--format"):
        synthesize_on_cpu(model_dir, tmp_path / "x", n=2, format="png")


@pytest.mark.slow
def test_dicom_only_cohort_is_audited_and_previewed_from_its_series(model_dir, tiny_models, tmp_path):
    dicom_out, nifti_out = tmp_path / "dicom" / "s", tmp_path / "nifti" / "s"  # one name: the preview's title shows it
    dicom = synthesize_on_cpu(model_dir, dicom_out, n=3, format="dicom", audit=tiny_models.scans)
    nifti = synthesize_on_cpu(model_dir, nifti_out, n=3, audit=tiny_models.scans)
    assert not list(dicom_out.rglob("*.nii.gz"))
    assert dicom.audit["n_checked"] == 3 and dicom.audit["ratios"] == nifti.audit["ratios"]  # the same pixels, from the series
    assert (dicom_out / "preview.png").read_bytes() == (nifti_out / "preview.png").read_bytes()


@pytest.mark.slow
@pytest.mark.processes
def test_bids_validator_ignores_the_dicom_folders(cohort):
    errors = bids_errors(cohort)
    assert errors == [], errors
