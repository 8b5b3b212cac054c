"""Synthetic cohorts: layout, provenance, geometry, determinism, reproduction, resume."""
import json
from pathlib import Path
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from support import bids_errors, relative_files, write_subjects
from neurosql_med.config import load_config
from neurosql_med.data.cohort import load_cohort
from neurosql_med.synthesis.dataset import SyntheticDataset
from neurosql_med.errors import UserError
from neurosql_med.synthesis.reproduce import reproduce
from neurosql_med.synthesis.options import SynthesizeOptions
from neurosql_med.synthesis.synthesize import synthesize
from neurosql_med.io.nifti import read_provenance


@pytest.fixture
def model_dir(tiny_models):
    return tiny_models.get("tiny")


def run(model_dir, out, n=10, **kw):
    return synthesize(SynthesizeOptions(model=model_dir, out=out, n=n, device="cpu", **kw), show_progress=False)


@pytest.mark.slow
def test_layout_sidecars_and_geometry(model_dir, tmp_path):
    out = tmp_path / "synth"
    run(model_dir, out, n=10, seed=3)
    names = relative_files(out)
    for top in ("dataset_description.json", "participants.tsv", "README", "manifest.tsv"):
        assert top in names
    image = out / "sub-synth0007/anat/sub-synth0007_desc-nsql_T1w.nii.gz"
    side = json.loads(image.with_name("sub-synth0007_desc-nsql_T1w.json").read_text())
    assert side["Synthetic"] is True and side["SkullStripped"] is True and "Description" in side
    info = side["NeuroSQL"]
    assert info["seed"] == 3 and info["index"] == 7 and len(info["latent"]) == 4
    assert 0 <= info["typicality"] <= 1 and len(info["model_sha256"]) == 64 and len(info["config_sha256"]) == 64
    assert {"nsql-med", "torch", "monai"} <= set(info["versions"]) and info["device"] == "cpu"
    assert side["ImageSha256"] == __import__("hashlib").sha256(image.read_bytes()).hexdigest()

    geometry = json.loads((model_dir / "geometry.json").read_text())
    img = nib.load(image)
    assert img.shape == (24, 32, 1)  # a 2d sample is a one-slice volume
    assert np.allclose(img.header.get_zooms(), geometry["spacing"])
    assert int(img.header["qform_code"]) > 0 and int(img.header["sform_code"]) > 0
    assert "".join(nib.aff2axcodes(img.affine)) == "RAS"
    assert np.allclose(img.affine[:3, :3], np.asarray(geometry["affine"])[:3, :3])
    assert img.header["descrip"].tobytes().startswith(b"SYNTHETIC nsql-med")
    assert read_provenance(image)["NeuroSQL"]["index"] == 7

    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Name"] == "nsql-med"
    assert description["NeuroSQL"]["model_sha256"] == info["model_sha256"]
    assert "path" not in json.dumps(description).lower()
    manifest = (out / "manifest.tsv").read_text().splitlines()
    assert manifest[0] == "file\tsha256\tseed\tindex" and len(manifest) == 11


@pytest.mark.slow
def test_same_bytes_across_runs_and_batch_sizes(model_dir, tmp_path):
    run(model_dir, tmp_path / "a", n=11, batch_size=1)
    run(model_dir, tmp_path / "b", n=11, batch_size=64)
    run(model_dir, tmp_path / "c", n=3, batch_size=8)
    a, b, c = ((tmp_path / x / "manifest.tsv").read_text().splitlines() for x in "abc")
    assert a == b
    assert c[1:] == a[1:4]


@pytest.mark.slow
def test_reproduce_passes_untouched_and_fails_changed(model_dir, tmp_path):
    out = tmp_path / "s"
    run(model_dir, out, n=9)
    image = out / "sub-synth0009/anat/sub-synth0009_desc-nsql_T1w.nii.gz"
    ok, _, _ = reproduce(image.with_suffix("").with_suffix(".json"), model_dir)
    assert ok
    img = nib.load(image)
    data = np.asarray(img.dataobj).copy()
    data[5, 5, 0] += 1
    nib.save(nib.Nifti1Image(data, img.affine, img.header), image)
    ok, recorded, fresh = reproduce(image, model_dir)
    assert not ok and recorded != fresh


@pytest.mark.slow
def test_typicality_shrinks_latent_radius(model_dir, tmp_path):
    radii = {}
    for q in (0.1, 0.5, 1.0):
        out = tmp_path / f"q{q}"
        run(model_dir, out, n=24, typicality=q)
        sides = [json.loads(p.read_text()) for p in out.rglob("sub-*_T1w.json")]
        radii[q] = np.mean([np.linalg.norm(s["NeuroSQL"]["latent"]) for s in sides])
        assert max(s["NeuroSQL"]["typicality"] for s in sides) <= q
    assert radii[0.1] < radii[0.5] < radii[1.0]


@pytest.mark.slow
def test_resume_after_a_crash_finishes_the_job(model_dir, tmp_path):
    whole = tmp_path / "whole"
    run(model_dir, whole, n=12)
    out = tmp_path / "crashed"
    run(model_dir, out, n=12)
    # a run killed part-way: some files missing, one truncated, a temporary left behind
    shutil.rmtree(out / "sub-synth0011")
    (out / "sub-synth0012/anat/sub-synth0012_desc-nsql_T1w.json").unlink()
    broken = out / "sub-synth0005/anat/sub-synth0005_desc-nsql_T1w.nii.gz"
    broken.write_bytes(broken.read_bytes()[:100])
    (out / "manifest.tsv").unlink()
    (out / "sub-synth0003/anat/.sub-synth0003_desc-nsql_T1w.nii.gz.x.tmp.nii.gz").write_bytes(b"half")
    summary = run(model_dir, out, n=12, resume=True)
    assert summary.written == 3 and summary.kept == 9
    assert (out / "manifest.tsv").read_text() == (whole / "manifest.tsv").read_text()
    assert not list(out.rglob(".*tmp*"))


@pytest.mark.slow
def test_refusals_write_nothing(model_dir, tmp_path):
    out = tmp_path / "o"
    refusals = [({"n": 0}, "--n"), ({"typicality": 0.0}, "--typicality"), ({"typicality": 1.5}, "--typicality"),
                ({"typicality": float("nan")}, "--typicality"), ({"audit": tmp_path, "tau": float("nan")}, "--tau")]
    for kwargs, match in refusals:
        n = kwargs.pop("n", 4)
        with pytest.raises(UserError, match=match):
            run(model_dir, out, n=n, **kwargs)
        assert not out.exists()
    with pytest.raises(UserError, match="model folder not found"):
        run(tmp_path / "nope", out)
    run(model_dir, out, n=2)
    with pytest.raises(UserError, match="holds an nsql-med cohort"):
        run(model_dir, out, n=2)
    with pytest.raises(UserError, match="different settings"):
        run(model_dir, out, n=2, seed=5, resume=True)
    assert len(relative_files(out)) > 0 and run(model_dir, out, n=2, seed=5, force=True).written == 2


@pytest.mark.slow
def test_synthetic_dataset_matches_written_files(model_dir, tmp_path):
    from neurosql_med.io.nifti import read_sample

    out = tmp_path / "s"
    run(model_dir, out, n=3, seed=1)
    ds = SyntheticDataset(model_dir, n=3, seed=1)
    item = ds[2]
    assert item["image"].shape == (1, 24, 32) and item["id"] == "synth0003"
    on_disk = read_sample(out / "sub-synth0003/anat/sub-synth0003_desc-nsql_T1w.nii.gz")[:, :, 0]
    assert np.abs(item["image"][0].numpy() - on_disk).max() <= 1 / 4095
    combined = torch.utils.data.ConcatDataset([ds, [{"image": torch.zeros(1, 24, 32), "id": "real"}]])
    assert len(combined) == 4


@pytest.mark.slow
@pytest.mark.processes
def test_bids_validator_finds_no_errors(model_dir, tmp_path):
    out = tmp_path / "bids"
    run(model_dir, out, n=3)
    assert (out / "preview.png").is_file() and (out / ".nsql-med.json").is_file()
    errors = bids_errors(out)
    assert errors == [], errors


@pytest.mark.slow
def test_inline_audit_flags_and_replaces_copies(model_dir, tmp_path):
    from neurosql_med.synthesis.audit import audit_cohort
    from neurosql_med.io.model import load_model
    from neurosql_med.synthesis.sampling import Draw, Synthesis, write_with_sidecar
    from neurosql_med.synthesis.synthesize import write_tables

    scans = write_subjects(tmp_path / "scans", 5)
    out = tmp_path / "s"
    run(model_dir, out, n=6)
    model = load_model(model_dir)
    job = Synthesis(model, 6, 0, 1.0)
    train = load_cohort(scans, model.config.data).images
    # plant a copy of a training image as sample 2 (a model that memorised would do this)
    write_with_sidecar(out, job, 2, Draw(train[3], np.zeros(4), 0.0, latent_index=2))
    report = audit_cohort(out, job, train, tau=0.5, drop=False)
    assert "sub-synth0002" in report["flagged"]
    assert json.loads((out / "dataset_description.json").read_text())["NeuroSQL"]["audit"]["n_flagged"] >= 1
    report = audit_cohort(out, job, train, tau=0.5, drop=True)
    assert report["n_remaining_copies"] == 0 and report["replaced"][0]["sample"] == "sub-synth0002"
    write_tables(out, job)
    replaced = out / "sub-synth0002/anat/sub-synth0002_desc-nsql_T1w.nii.gz"
    assert json.loads(replaced.with_name("sub-synth0002_desc-nsql_T1w.json").read_text())["NeuroSQL"]["latent_index"] > 6
    assert reproduce(replaced, model_dir)[0]


@pytest.mark.slow
def test_synthesize_with_audit_writes_audit_json(model_dir, tiny_models, tmp_path):
    scans = tiny_models.scans  # the model's own training scans
    checked = run(model_dir, tmp_path / "s", n=4, audit=scans).audit
    assert json.loads((tmp_path / "s/audit.json").read_text()) == checked
    assert checked["n_checked"] == 4 and len(checked["ratios"]) == 4 and checked["n_replaced"] == 0
    ratios = sorted(checked["ratios"].values())
    nearest = min(checked["ratios"], key=checked["ratios"].get)
    tau = (ratios[0] + ratios[1]) / 2  # flags the sample nearest a training image, and only it
    dropped = run(model_dir, tmp_path / "t", n=4, audit=scans, drop_copies=True, tau=tau).audit
    assert dropped["flagged"] == [nearest] and [r["sample"] for r in dropped["replaced"]] == [nearest]
    assert dropped["n_remaining_copies"] == 0 and min(dropped["ratios"].values()) >= tau
    assert json.loads((tmp_path / "t/audit.json").read_text()) == dropped
    with pytest.raises(UserError, match="--audit"):
        run(model_dir, tmp_path / "u", n=4, drop_copies=True)


@pytest.mark.slow
def test_readme_augmentation_example_runs(model_dir, tmp_path, monkeypatch, capsys):
    """The README's code as written, on the model and on two subjects of the sample cohort (all 30 load for seconds)."""
    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    code = readme.split("## Using synthetic samples in a MONAI training loop")[1].split("```python")[1].split("```")[0]
    assert code.count('"sample_data"') == 1 and code.count('"nsql-model"') == 1
    for subject in ("sub-OAS30001", "sub-OAS30002"):
        shutil.copytree(root / "sample_data" / subject, tmp_path / "sample_data" / subject)
    monkeypatch.chdir(tmp_path)
    exec(compile(code.replace('"nsql-model"', repr(str(model_dir))), "README.md", "exec"), {})
    printed = capsys.readouterr().out.split()
    real = len(load_cohort(tmp_path / "sample_data", load_config("default").data))
    assert real > 0 and int(printed[0]) == 500 + real and "torch.Size([1," in " ".join(printed[1:])


def test_ids_widen_with_the_cohort():
    from neurosql_med.synthesis.sampling import synthetic_id

    assert synthetic_id(3, 500) == "synth0003"
    assert synthetic_id(3, 12000) == "synth00003" and synthetic_id(12000, 12000) == "synth12000"


def test_a_nan_typicality_is_refused_before_the_model_is_read():
    with pytest.raises(UserError, match="--typicality must be in \\(0, 1\\], got nan"):
        SyntheticDataset("/no/model", n=3, typicality=float("nan"))


def test_reproduce_names_a_damaged_image_without_a_sidecar(tmp_path):
    image = tmp_path / "sub-synth0001_desc-nsql_T1w.nii.gz"
    image.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(UserError, match=r"sub-synth0001_desc-nsql_T1w\.nii\.gz: unreadable NIfTI \(.+\)$"):
        reproduce(image, tmp_path / "model")
