"""benchmarks/realistic_cohort.py: real source brains in, a deterministic cohort nsql-med can read out."""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from support import torch_threads_kept
from neurosql_med.data.discovery import discover

ROOT = Path(__file__).resolve().parents[1]
BUILDER = ROOT / "benchmarks" / "realistic_cohort.py"
sys.path.insert(0, str(BUILDER.parent))
import realistic_cohort  # noqa: E402  (a script, not a package module)


def _build(out: Path) -> None:
    done = subprocess.run([sys.executable, str(BUILDER), "--tiny", "--out", str(out), "--workers", "1"],
                          capture_output=True, text=True, timeout=900)
    if "could not fetch" in done.stderr:
        pytest.skip(f"the source packages cannot be reached here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("realistic") / "cohort"
    _build(out)
    return out


@pytest.mark.slow
@pytest.mark.processes  # the cohort fixture builds in a fresh interpreter
def test_same_seed_same_bytes(cohort, tmp_path):
    """The fixture's build ran in a fresh interpreter; this one runs here: the same bytes."""
    with torch_threads_kept():  # each subject is rendered on one thread
        realistic_cohort.main(["--tiny", "--out", str(tmp_path / "again"), "--workers", "1"])
    assert _digests(cohort) == _digests(tmp_path / "again")


@pytest.mark.slow
@pytest.mark.processes  # the cohort fixture builds in a fresh interpreter
def test_both_layouts_are_discovered_with_their_label_maps(cohort):
    for folder, count in (("bids", 4), ("heldout", 2), ("oasis1", 4)):
        found = discover(cohort / folder)
        assert len(found.scans) == count, folder
        assert all(s.labels is not None and s.labels_problem is None for s in found.scans), folder
    assert (cohort / "oasis1" / "oasis_cross-sectional.csv").read_text().startswith("ID,M/F")


@pytest.mark.slow
@pytest.mark.processes  # the cohort fixture builds in a fresh interpreter
def test_sources_are_recorded_with_package_version_and_hashes(cohort):
    described = json.loads((cohort / "bids" / "dataset_description.json").read_text())
    sources = {s["Package"]: s for s in described["SourceDatasets"]}
    assert set(sources) == {"nilearn", "mricron-data"}
    for source in sources.values():
        assert source["Version"] and source["License"] and len(source["ArchiveSHA256"]) == 64
        assert all(len(f["SHA256"]) == 64 for f in source["Files"].values())
    text = (cohort / "SOURCES.md").read_text()
    assert "sha256" in text
    maps = re.findall(r"^\| [^|]+ \| `([0-9a-f]{64})` \|$", text.split("tissue maps sha256")[1], re.M)
    assert len(maps) == 2 and len(set(maps)) == 2  # each source brain's tissue maps, as used, told apart


@pytest.mark.slow
@pytest.mark.processes  # the cohort fixture builds in a fresh interpreter
def test_labels_are_carried_through_the_warp_not_thresholds_of_the_image(cohort):
    """No single intensity cut separates grey from white matter, as in a real scan's segmentation."""
    image = next((cohort / "bids").glob("sub-*/*/anat/*_T1w.nii.gz"))
    labels = next((cohort / "bids" / "derivatives").rglob(f"{image.name.split('_T1w')[0]}_dseg.nii.gz"))
    x, y = np.asarray(nib.load(image).dataobj), np.asarray(nib.load(labels).dataobj)
    grey, white = x[y == 2], x[y == 3]
    cuts = np.quantile(np.concatenate([grey, white]), np.linspace(0.05, 0.95, 91))
    best = max(((grey < c).sum() + (white >= c).sum()) / (len(grey) + len(white)) for c in cuts)
    assert 0.6 < best < 0.98
    assert np.array_equal(x > 0, y > 0) or ((x > 0) & (y == 0)).sum() == 0  # the brain mask is the label map's


def test_subjects_carry_an_age_and_cdr_signal_and_every_site():
    subjects = realistic_cohort.draw_subjects(48, 0, 0, ["mni152", "colin27"])
    cdr = np.array([s.cdr for s in subjects])
    age = np.array([s.age for s in subjects])
    atrophy = np.array([s.atrophy for s in subjects])
    assert [int((cdr == c).sum()) for c in (0, 0.5, 1)] == [24, 14, 10]
    assert age[cdr > 0].mean() > age[cdr == 0].mean() + 5
    assert np.corrcoef(age, atrophy)[0, 1] > 0.5 and atrophy[cdr == 1].mean() > atrophy[cdr == 0].mean() + 0.3
    assert {s.site for s in subjects} == {"A", "B", "C"} and len({s.participant for s in subjects}) == 48
    assert realistic_cohort.draw_subjects(48, 0, 0, ["mni152", "colin27"]) == subjects


def test_the_warp_is_a_diffeomorphism():
    """exp(v) by scaling and squaring has a positive Jacobian everywhere, even for a strong field."""
    import torch

    rng = np.random.default_rng(0)
    shape = (24, 24, 24)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    v = torch.as_tensor(np.stack([realistic_cohort._smooth_noise(rng, shape, 3.0) for _ in range(3)]) * 8,
                        dtype=torch.float32)
    u = realistic_cohort.integrate(v, affine).numpy()
    jac = np.stack([np.stack(np.gradient(u[i], 2.0)) for i in range(3)]) + np.eye(3)[:, :, None, None, None]
    det = np.linalg.det(np.moveaxis(jac, (0, 1), (-2, -1)))[2:-2, 2:-2, 2:-2]
    assert det.min() > 0 and np.abs(u).max() > 2  # it moved things, and folded nothing
