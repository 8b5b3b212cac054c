"""Label maps as DICOM SEG: valid for dciodvfy, read back exactly, coded, marked synthetic, reproducible.

The models are real labelled NeuroSQL fits: their training labels are the scans cut
into classes by intensity, with a "vessel" class that has no tissue code of its own.
"""
import hashlib
import json
import subprocess
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from pydicom.sr.codedict import codes

from support import LABEL_NAMES, cli, dciodvfy, is_3d, synthesize_on_cpu
from neurosql_med.io.dicom import series_instances
from neurosql_med.io.dicom_seg import CATEGORY, read_segmentation, segment_type, write_segmentation
from neurosql_med.io.model import load_model
from neurosql_med.synthesis import sampling
from neurosql_med.synthesis.reproduce import reproduce
from neurosql_med.version import __version__

CLASSES = LABEL_NAMES  # "vessel" has no tissue code of its own
SEG_NAME = "sub-{}_desc-nsql_dseg.dcm"


@pytest.fixture(params=["tiny", "tiny3d"])
def model_dir(request, tiny_models):
    return tiny_models.get(request.param, "labelled")


@pytest.fixture
def cohort(model_dir, both_formats) -> Path:
    return both_formats(model_dir)


def seg_path(cohort: Path, subject: str) -> Path:
    return cohort / f"sub-{subject}" / "dicom" / SEG_NAME.format(subject)


def mr_instances(folder: Path) -> list[pydicom.Dataset]:
    files = sorted(p for p in folder.glob("*_T1w_*.dcm"))
    return sorted((pydicom.dcmread(p) for p in files), key=lambda ds: int(ds.InstanceNumber))


def drawn_label(record: dict, model_dir: Path) -> np.ndarray:
    """The label map the sample's draw had, decoded afresh from its record, in the NIfTI's array layout."""
    info = record["NeuroSQL"]
    model = load_model(model_dir, torch.device("cpu"))
    job = sampling.Synthesis(model, info["index"], info["seed"], info["max_typicality"])
    return model.geometry.as_volume(sampling.decode_one(job, info["latent_index"]).labels[0].numpy()).astype(np.uint8)  # as the dseg stores it


def slice_axis(model_dir: Path) -> int:
    return 2 if is_3d(model_dir) else json.loads((model_dir / "geometry.json").read_text())["slice_axis"]


@pytest.mark.slow
@pytest.mark.processes
def test_dciodvfy_reports_no_errors_on_the_seg(cohort):
    validator = dciodvfy()
    segs = sorted(cohort.rglob("*_dseg.dcm"))
    assert len(segs) == 3
    for path in segs:
        proc = subprocess.run([validator, str(path)], capture_output=True, text=True, timeout=60)
        report = proc.stdout + proc.stderr
        assert "Segmentation" in report, report  # checked against the Segmentation IOD
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        assert errors == [], f"{path.name}: {errors}"


@pytest.mark.slow
def test_seg_reads_back_as_the_label_map_over_its_mr_series(cohort, model_dir):
    axis = slice_axis(model_dir)
    for subject in ("synth0001", "synth0003"):
        path = seg_path(cohort, subject)
        sources = mr_instances(path.parent)
        back = read_segmentation(path, sources, axis)
        record = json.loads((path.parent / f"sub-{subject}_desc-nsql_T1w.json").read_text())
        label = drawn_label(record, model_dir)
        assert back.dtype == label.dtype and np.array_equal(back, label)
        assert len(np.unique(label)) >= 3  # more than background and one class: the comparison says something
        seg = hd.seg.segread(path)
        referenced = {uid for _, _, uid in seg.get_source_image_uids()}
        assert referenced == {ds.SOPInstanceUID for ds in sources}
        for keyword in ("StudyInstanceUID", "FrameOfReferenceUID", "PatientName", "PatientID"):
            assert seg.get(keyword) == sources[0].get(keyword), keyword
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == sources[0].SeriesInstanceUID
        assert seg.SeriesInstanceUID != sources[0].SeriesInstanceUID


@pytest.mark.slow
def test_segments_are_named_and_coded(cohort):
    seg = hd.seg.segread(seg_path(cohort, "synth0002"))
    assert seg.SegmentationType == "BINARY"
    segments = seg.SegmentSequence
    assert [int(s.SegmentNumber) for s in segments] == [1, 2, 3, 4]
    assert [s.SegmentLabel for s in segments] == list(CLASSES[1:])
    types = [s.SegmentedPropertyTypeCodeSequence[0] for s in segments]
    assert [(t.CodeValue, t.CodingSchemeDesignator) for t in types] == [
        ("65216001", "SCT"), ("389081007", "SCT"), ("389080008", "SCT"), ("85756007", "SCT")]
    for s in segments:
        category = s.SegmentedPropertyCategoryCodeSequence[0]
        assert (category.CodeValue, category.CodingSchemeDesignator) == ("85756007", "SCT")
        assert s.SegmentAlgorithmType == "AUTOMATIC"


@pytest.mark.slow
def test_seg_is_marked_synthetic_and_dated_only_by_the_fixed_epoch(cohort):
    for sub in sorted(cohort.glob("sub-*")):
        ds = pydicom.dcmread(seg_path(cohort, sub.name[4:]))
        record = json.loads((sub / "dicom" / f"{sub.name}_desc-nsql_T1w.json").read_text())
        assert ds.SyntheticData == "YES" and ds.Manufacturer == "nsql-med" and ds.Modality == "SEG"
        assert ds.SeriesDescription.startswith("SYNTHETIC nsql-med") and ds.SeriesDescription.endswith("dseg")
        assert str(ds.PatientName) == f"SYNTHETIC^{sub.name[4:]}" and f"nsql-med {__version__}" in ds.SoftwareVersions
        assert record["NeuroSQL"]["model_sha256"] in ds.DerivationDescription
        provenance = json.loads(ds.private_block(0x0009, "nsql-med provenance")[0x01].value)
        assert provenance == {k: v for k, v in record.items() if k != "DicomSha256"}
        dated = {e.keyword: e.value for e in ds.iterall() if e.VR in ("DA", "DT", "TM") and e.value not in ("", None)}
        assert dated == {"ContentDate": "19700101", "ContentTime": "000000"}  # Type 1 in a multi-frame instance


@pytest.mark.slow
def test_seg_bytes_and_uids_are_stable_across_runs_and_unique_across_samples(cohort, model_dir, tmp_path):
    again = tmp_path / "again"
    synthesize_on_cpu(model_dir, again, n=3, format="dicom", batch_size=1)
    first = {p.relative_to(cohort): p.read_bytes() for p in cohort.rglob("*_dseg.dcm")}
    second = {p.relative_to(again): p.read_bytes() for p in again.rglob("*_dseg.dcm")}
    assert len(first) == 3 and first == second
    uids = []
    for path in sorted(cohort.rglob("*_dseg.dcm")):
        ds = pydicom.dcmread(path)
        uids += [ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.DimensionOrganizationSequence[0].DimensionOrganizationUID]
    mr = {pydicom.dcmread(p).SOPInstanceUID for p in cohort.rglob("*_T1w_*.dcm")}
    assert len(set(uids)) == len(uids) and not set(uids) & mr
    assert all(uid.startswith("2.25.") and len(uid) <= 64 for uid in uids)


@pytest.mark.slow
def test_manifest_resume_force_and_reproduce_cover_the_seg(model_dir, tmp_path, capsys):
    out = tmp_path / "s"
    synthesize_on_cpu(model_dir, out, n=3, format="dicom")
    listed = {row.split("\t")[0]: row.split("\t")[1] for row in (out / "manifest.tsv").read_text().splitlines()[1:]}
    seg = seg_path(out, "synth0002")
    assert listed[seg.relative_to(out).as_posix()] == hashlib.sha256(seg.read_bytes()).hexdigest()
    for target in (seg, seg.parent):
        assert reproduce(target, model_dir)[0], target
    seg.unlink()
    assert synthesize_on_cpu(model_dir, out, n=3, format="dicom", resume=True).written == 1  # the SEG is part of a complete sample
    assert seg.is_file() and synthesize_on_cpu(model_dir, out, n=3, format="dicom", resume=True).written == 0
    ds = pydicom.dcmread(seg)
    ds.SegmentSequence[0].SegmentLabel = "bone"
    ds.save_as(seg)
    code, stdout, _ = cli(capsys, "reproduce", seg.parent, "--model", model_dir)
    assert code == 1 and "DIFFERENT" in stdout
    assert synthesize_on_cpu(model_dir, out, n=2, format="dicom", force=True).written == 2  # --force knows the SEG's name


def test_write_segmentation_round_trips_a_hand_made_map_along_any_slice_axis(tmp_path):
    """No model needed: a random label map over a hand-made image, cut along each axis."""
    record = {"NeuroSQL": {
        "model_sha256": "a" * 64, "config_sha256": "b" * 64, "seed": 1, "max_typicality": 0.9, "device": "cpu",
        "compute_block": 8, "index": 1, "latent_index": 1, "typicality": 0.5, "versions": {"nsql-med": __version__}}}
    rng = np.random.default_rng(0)
    for axis, shape in ((0, (1, 7, 5)), (1, (6, 1, 5)), (2, (6, 7, 5))):
        label = rng.integers(0, 3, size=shape).astype(np.uint8)
        label.flat[0] = 0
        image = nib.Nifti1Image(label.astype(np.int16) * 1000, np.diag([2.0, 3.0, 4.0, 1.0]))
        sources = series_instances("synth0001", image, axis, record)
        folder = tmp_path / str(axis)
        hashes = write_segmentation(folder, "sub-synth0001_desc-nsql", label, ["background", "WM", "lesion"],
                                    sources, axis, "synth0001", record)
        (name,) = hashes
        assert np.array_equal(read_segmentation(folder / name, sources, axis), label)
        assert write_segmentation(tmp_path / "again", "sub-synth0001_desc-nsql", label, ["background", "WM", "lesion"],
                                  sources, axis, "synth0001", record) == hashes
    with pytest.raises(ValueError, match="0..1"):
        write_segmentation(tmp_path / "bad", "x", label, ["background", "WM"], sources, 2, "synth0001", record)


def test_class_names_map_to_tissue_codes():
    assert segment_type("CSF") == codes.SCT.CerebrospinalFluid
    assert segment_type("Grey_Matter") == segment_type("GM") == codes.SCT.GrayMatter
    assert segment_type("white matter") == codes.SCT.WhiteMatter
    assert segment_type("tumour") == CATEGORY == codes.SCT.Tissue


@pytest.mark.slow
def test_discovery_lists_the_seg_as_skipped_never_as_a_scan(cohort, model_dir):
    from neurosql_med.data.discovery import discover
    from neurosql_med.errors import UserError

    folder = cohort / "sub-synth0001" / "dicom"
    if not is_3d(model_dir):  # a 2D sample is a single-slice series: nothing there to train on, and it says why
        with pytest.raises(UserError, match="SEG\\) describes a scan; it is not one"):
            discover(folder)
        return
    found = discover(folder)
    reasons = {item.path.name: item.reason for item in found.skipped}
    assert "segmentation" in reasons[seg_path(cohort, "synth0001").name]
    assert [scan.format for scan in found.scans] == ["dicom"] and found.scans[0].shape[2] > 1
