"""The classifier two-sample test and the texture ratios, on planted real-vs-real, blurred and noised sets."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from neurosql_med.config import load_config, override
from neurosql_med.data.cohort import load_cohort
from neurosql_med.evaluation.c2st import (
    BLUR_MIN, NULL_MAX, blurred, c2st_section, classifier, fold_of, laplacian, quantised, real_halves, two_sample_test,
)
from neurosql_med.evaluation.options import STRONG, Classifier
from neurosql_med.evaluation.texture import radial_power, spectrum_picture, texture
from neurosql_med.io.geometry import Geometry
from neurosql_med.io.nifti import to_nifti

SAMPLE_DATA = Path(__file__).resolve().parents[1] / "sample_data"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cohort():
    """Every ninth slice of the sample cohort's 30 subjects at the default resolution: about 120 real slices.

    At the tiny config's 6 mm the anatomy's edges swamp fine noise: the test must see texture at a real scale.
    Without the label maps, which no test here reads: the images are the same, and preprocessing the maps as well
    would triple the load's time.
    """
    return load_cohort(SAMPLE_DATA, override(load_config("default"), data__slice_stride=9, data__labels="none").data)


def centre(images: torch.Tensor) -> torch.Tensor:
    """The central 32x40 pixels of 64x80 slices: inside the brain, at the same scale, a quarter of the pixels to learn."""
    return images[..., 16:48, 20:60]


@pytest.fixture(scope="module")
def section(cohort) -> dict:
    """The report's C2ST section (its four tests, FAST classifier) on 64 centred real slices, 40 of them blurred as the
    synthetic set, the real ones again as their reconstructions, and those blurred by 1 px as the decoder's own
    (the reconstructions without texture); several tests read it."""
    real = centre(cohort.images[:64])
    return c2st_section(real, cohort.subjects[:64], blurred(real[:40]), reconstructions=real, decoded=blurred(real, 1.0))


@pytest.mark.slow
def test_two_halves_of_real_subjects_score_near_chance(cohort, section):
    one, two = real_halves(cohort.subjects, seed=1)
    assert not {cohort.subjects[i] for i in one} & {cohort.subjects[i] for i in two}
    assert len(one) + len(two) == len(cohort.subjects) and len({cohort.subjects[i] for i in one}) == 15
    result = section["controls"]["real_vs_real"]  # the section's 64 slices split by real_halves
    assert sum(result["n"]) == 64 and min(result["n"]) >= 24, result["n"]
    assert abs(result["auc"] - 0.5) < NULL_MAX - 0.5, result
    assert result["folds"] == 4 and result["repeats"] == 2 and len(result["aucs"]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("degrade", ["blur", "noise"])
def test_blurred_or_noised_real_images_are_told_apart(cohort, section, degrade):
    """Blur: the section's control (each real slice against itself blurred). Noise: 64 whole slices, where the
    background shows it most (their centres leave too little of it to learn); at σ = 0.05 the AUC is 0.99, at
    σ = 0.02 the classifier needs all 121 slices (0.92) and twice the time."""
    if degrade == "blur":
        result = section["controls"]["blur"]
        assert result["n"] == [64, 64]
    else:
        real, subjects = cohort.images[:64], cohort.subjects[:64]
        noised = (real + 0.05 * torch.randn(real.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
        result = two_sample_test(real, subjects, noised, subjects)
    assert result["auc"] > BLUR_MIN and result["accuracy"] > 0.7, result


@pytest.mark.slow
def test_section_reports_its_controls_and_the_reconstruction_test(section):
    controls = section["controls"]
    assert controls["passed"] is True and controls["blur"]["auc"] > BLUR_MIN and controls["real_vs_real"]["auc"] < NULL_MAX
    assert section["synthetic"]["auc"] > BLUR_MIN and section["synthetic"]["n"] == [64, 40]
    assert section["reconstruction"]["auc"] < NULL_MAX  # identical "reconstructions" cannot be told apart
    assert section["reconstruction_decoder"]["auc"] > BLUR_MIN  # a blurred decoder is seen when no texture hides it


def test_same_seed_same_numbers():
    images = torch.rand(16, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    groups = [f"s{i // 2}" for i in range(16)]
    first = two_sample_test(images[:8], groups[:8], images[8:], groups[8:], seed=3)
    assert first == two_sample_test(images[:8], groups[:8], images[8:], groups[8:], seed=3)


def test_a_side_with_one_subject_is_not_tested():
    images = torch.rand(6, 1, 8, 8)
    assert two_sample_test(images, ["a"] * 6, images, [f"s{i}" for i in range(6)]) is None


def test_folds_keep_a_subject_together_and_hold_both_sides():
    groups_a = [f"subj{i // 3}" for i in range(24)]
    fold_a, fold_b = fold_of(groups_a, groups_a, 4, np.random.default_rng(0))
    assert np.array_equal(fold_a, fold_b)  # an image and its blurred copy share a fold
    assert all(len({f for f, g in zip(fold_a, groups_a) if g == s}) == 1 for s in set(groups_a))
    synthetic = [f"synthetic-{i}" for i in range(10)]
    fold_a, fold_b = fold_of(groups_a, synthetic, 4, np.random.default_rng(0))
    assert set(fold_a) == set(fold_b) == {0, 1, 2, 3}


def test_quantised_matches_the_written_file():
    sample = torch.rand(1, 8, 6)
    geometry = Geometry("2d", [8, 6, 4], [2.0, 2.0, 2.0], np.eye(4).tolist(), slice_axis=2, slice_index=1)
    written = np.asarray(to_nifti(sample[0].numpy(), geometry, "", {}).dataobj)[:, :, 0]
    assert torch.equal(quantised(sample)[0], torch.from_numpy(written / 4095).float())


def test_laplacian_is_zero_on_a_ramp_and_sees_a_spike():
    ramp = torch.arange(10.0)[None, None, :, None].expand(1, 1, 10, 7)
    assert torch.allclose(laplacian(ramp)[..., 1:-1, 1:-1], torch.zeros(1)), "a linear ramp has no curvature"
    spike = torch.zeros(1, 1, 5, 5, 5)
    spike[0, 0, 2, 2, 2] = 1
    assert laplacian(spike)[0, 0, 2, 2, 2] == -6 and laplacian(spike).sum() == 0


def test_texture_ratios_see_blur_and_noise(cohort, tmp_path):
    real = cohort.images
    assert texture(real, real)["high_frequency_ratio"] == pytest.approx(1.0)
    soft = texture(real, blurred(real))
    assert soft["high_frequency_ratio"] < 0.6 and soft["gradient_ratio"] < 0.9
    noisy = texture(real, (real + 0.05 * torch.randn(real.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1))
    assert noisy["high_frequency_ratio"] > 1.2 and noisy["gradient_ratio"] > 1.1
    spectrum_picture(tmp_path / "spectrum.png", soft)
    assert (tmp_path / "spectrum.png").read_bytes().startswith(b"\x89PNG")


def test_radial_power_of_white_noise_is_flat():
    freqs, power = radial_power(torch.randn(64, 1, 32, 32, generator=torch.Generator().manual_seed(0)))
    assert freqs[0] > 0 and freqs[-1] < 0.5 and len(power) == len(freqs)
    assert power[1:].max() / power[1:].min() < 1.3


@pytest.mark.slow
def test_volumes_get_a_3d_classifier_that_sees_blur():
    smooth = blurred(torch.rand(24, 1, 16, 20, 16, generator=torch.Generator().manual_seed(0)), 1.0)
    volumes = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    groups = [f"s{i}" for i in range(24)]
    assert two_sample_test(volumes, groups, blurred(volumes), groups)["auc"] > 0.8


@pytest.mark.slow
def test_the_strong_classifier_is_wider_and_its_three_seeds_see_blur(cohort):
    assert STRONG.repeats >= 3
    widths = [m.out_channels for m in classifier(2, STRONG.width).modules() if isinstance(m, torch.nn.Conv2d)]
    assert widths == [16, 32, 32]
    short = Classifier("strong, shortened", STRONG.width, epochs=6, repeats=STRONG.repeats)  # the strong net, fewer epochs
    real = centre(cohort.images[:64])
    result = two_sample_test(real, cohort.subjects[:64], blurred(real), cohort.subjects[:64], spec=short)
    assert len(result["aucs"]) == 3 and result["classifier"] == "strong, shortened"
    assert result["auc"] > BLUR_MIN and result["auc_range"][0] > 0.75, result


def test_every_test_of_a_section_uses_its_classifier():
    images = torch.rand(16, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    subjects = [f"s{i // 2}" for i in range(16)]
    one_epoch = Classifier("one epoch", width=4, epochs=1, repeats=3)
    section = c2st_section(images, subjects, images[:6], reconstructions=images, spec=one_epoch)
    tests = [section["synthetic"], section["reconstruction"], *(section["controls"][k] for k in ("real_vs_real", "blur"))]
    assert all(t["classifier"] == "one epoch" and len(t["aucs"]) == 3 for t in tests)
    assert section["settings"]["width"] == 4 and section["settings"]["classifier"].startswith("one epoch: MONAI CNN, widths 4/8/8")
