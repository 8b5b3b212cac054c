"""The MONAI preprocessing pipeline: what training sees of each scan."""
import numpy as np
import pytest
import torch

from support import brain_volume, write_analyze, write_dicom_series, write_nifti
from neurosql_med.config import load_config, override
from neurosql_med.data.cohort import load_cohort
from neurosql_med.data.transforms import SliceSamplesd
from neurosql_med.errors import UserError


@pytest.fixture
def cohort_dir(tmp_path):
    for i in range(4):
        write_nifti(tmp_path / f"sub-{i:02d}/anat/sub-{i:02d}_T1w.nii.gz", brain_volume(i, (40, 48, 40)), (4, 4, 4))
    return tmp_path


def test_3d_volumes_are_scaled_and_gridded(cohort_dir):
    cohort = load_cohort(cohort_dir, load_config("tiny3d").data)
    assert cohort.images.shape == (4, 1, 16, 24, 16)
    assert float(cohort.images.min()) == 0.0 and float(cohort.images.max()) == pytest.approx(1.0)
    assert cohort.scan_ids == ["sub-00", "sub-01", "sub-02", "sub-03"]
    g = cohort.geometry
    assert g.orientation == "RAS" and g.spacing == [8.0, 8.0, 8.0]
    assert np.allclose(np.abs(np.diag(np.asarray(g.affine))[:3]), 8.0)


def test_2d_slices_keep_scan_id_and_index(cohort_dir):
    cfg = load_config("tiny").data
    cohort = load_cohort(cohort_dir, cfg)
    assert cohort.images.shape[1:] == (1, 24, 32)
    per_scan = {s: cohort.scan_ids.count(s) for s in set(cohort.scan_ids)}
    assert set(per_scan) == {"sub-00", "sub-01", "sub-02", "sub-03"}
    # the same brain extent in every scan gives the same slices
    assert len(set(per_scan.values())) == 1
    first = [cohort.slice_index[i] for i, s in enumerate(cohort.scan_ids) if s == "sub-00"]
    assert first == sorted(first) and all(b - a == cfg.slice_stride for a, b in zip(first, first[1:]))
    assert cohort.geometry.sample_shape == [24, 32]


def test_slice_range_and_stride_counts():
    volume = torch.zeros(1, 8, 8, 50)
    volume[:, 2:6, 2:6, 10:40] = 1.0  # brain spans slices 10..39 (30 slices)
    from monai.data import MetaTensor

    samples = SliceSamplesd("image", axis=2, fraction=(0.2, 0.8), stride=2)({"image": MetaTensor(volume), "id": "x"})
    assert [s["slice_index"] for s in samples] == list(range(16, 34, 2))
    assert all(s["image"].shape == (1, 8, 8) and s["id"] == "x" for s in samples)


def test_every_format_gives_the_same_samples(tmp_path):
    volume = brain_volume(3, (14, 20, 14))
    volume[2:5, 5:9, 5:9] = 2000  # a bright mark on the low-x side: shows any mirroring
    spacing = (8, 8, 8)  # the tiny3d grid, so no interpolation blurs the comparison
    write_nifti(tmp_path / "nifti/a.nii.gz", volume, spacing)
    write_analyze(tmp_path / "analyze/a.hdr", volume, spacing)
    write_dicom_series(tmp_path / "dicom/a", volume, spacing, suffix="")
    cfg = load_config("tiny3d").data
    nifti, analyze, dicom = (load_cohort(tmp_path / f, cfg, min_samples=1).images for f in ("nifti", "analyze", "dicom"))
    assert nifti.shape == analyze.shape == dicom.shape == (1, 1, 16, 24, 16)
    assert torch.allclose(nifti, dicom, atol=1e-3)
    # Analyze has no orientation field: nibabel reads it in the radiological convention
    # (x runs right-to-left, as OASIS-1 stores it), so after RAS reorientation the same
    # stored array comes out mirrored left-right
    assert torch.allclose(nifti.flip(2), analyze, atol=1e-3)


def test_too_few_samples_is_a_user_error(tmp_path):
    write_nifti(tmp_path / "only.nii.gz", brain_volume(0, (40, 48, 40)), (4, 4, 4))
    with pytest.raises(UserError, match="at least 2"):
        load_cohort(tmp_path, load_config("tiny3d").data)


def test_resize_mode_fills_the_grid(cohort_dir):
    cfg = override(load_config("tiny3d"), data__fit="resize").data
    cohort = load_cohort(cohort_dir, cfg)
    assert cohort.images.shape == (4, 1, 16, 24, 16)
