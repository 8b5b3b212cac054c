"""The per-tissue residual texture (model.texture_mode: tissue): statistics per class, detail inside each class only."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from support import TISSUE_NOISE as NOISE, TISSUE_SHAPE as SHAPE, two_tissues, write_subjects

from neurosql_med.config import load_config, override
from neurosql_med.data.cohort import load_cohort
from neurosql_med.engine.residual import frequency_radius, texture_seeds
from neurosql_med.engine.tissue_texture import FORMAT, TissueTexture, fit_tissue_texture
from neurosql_med.io.model import load_model
from neurosql_med.synthesis.reproduce import reproduce
from neurosql_med.synthesis.options import SynthesizeOptions
from neurosql_med.synthesis.synthesize import synthesize
from neurosql_med.training.train import fit

pytestmark = pytest.mark.usefixtures("one_thread")


def test_each_tissue_gets_its_own_amplitude():
    images, mean, labels = two_tissues()
    fitted = fit_tissue_texture(images, mean, 1.0, 0.15, labels, labels, num_labels=3)
    band = float((frequency_radius(SHAPE) > 0.15).float().mean()) ** 0.5
    flat = fitted.amplitude[:, 0]  # the flat insides of each class
    assert flat[1] == pytest.approx(NOISE[1] * band, rel=0.25) and flat[2] == pytest.approx(NOISE[2] * band, rel=0.25)
    assert flat[0] < 0.3 * flat[1]  # only the high-pass ringing of the discs reaches the black background
    textured = fitted.apply(mean, texture_seeds(0, range(len(mean))), labels)
    spread = [float((textured - mean)[labels == k].std()) for k in (1, 2)]
    assert spread[1] > 2.5 * spread[0]
    assert torch.equal(textured[labels == 0], mean[labels == 0])


def test_misplaced_borders_are_not_counted_as_detail():
    """Where G's label disagrees with the training label the residual is a border a voxel off: left out."""
    images, mean, labels = two_tissues()
    shifted = torch.roll(mean, 2, dims=3)  # G put every border 2 voxels off
    decoded = torch.roll(labels, 2, dims=3)
    agreeing = fit_tissue_texture(images, shifted, 1.0, 0.15, labels, decoded, num_labels=3)
    blind = fit_tissue_texture(images, shifted, 1.0, 0.15, labels, labels, num_labels=3)
    assert agreeing.amplitude[1].max() < 0.5 * blind.amplitude[1].max()


def test_texture_follows_the_label_map_it_is_given():
    images, mean, labels = two_tissues()
    fitted = fit_tissue_texture(images, mean, 1.0, 0.15, labels, labels, num_labels=3)
    image = torch.full((1, 1, *SHAPE), 0.5)
    left, right = (torch.where(labels[:1] > 0, k, 0) for k in (1, 2))
    quiet, grainy = (fitted.apply(image, [7], maps) - image for maps in (left, right))
    assert grainy.std() > 2.5 * quiet.std()


def test_unlabelled_models_use_intensity_bins_and_state_round_trips():
    images, mean, _ = two_tissues()
    fitted = fit_tissue_texture(images, mean, 0.8, 0.15)
    assert not fitted.labelled and fitted.amplitude[7, 0] > 2.5 * fitted.amplitude[4, 0]  # 0.75 grainy, 0.45 quiet
    state = fitted.state()
    assert state["format"] == FORMAT
    again = TissueTexture.from_state(state, SHAPE, 0, "t")
    seeds = texture_seeds(3, range(4))
    assert torch.equal(again.apply(mean[:4], seeds), fitted.apply(mean[:4], seeds))


@pytest.mark.slow
def test_a_labelled_fit_writes_it_and_synthesize_reproduces_textured_pairs(tmp_path):
    cfg = override(load_config("tiny"), train__epochs=2, model__texture_mode="tissue")
    cohort = load_cohort(write_subjects(tmp_path / "scans", 5), cfg.data)
    cohort = dataclasses.replace(cohort, labels=(cohort.images > 0.5).long() + (cohort.images > 0.05).long(),
                                 label_names=["background", "dark", "bright"])
    fit(cohort, cfg, tmp_path / "m", show_progress=False)
    model = load_model(tmp_path / "m")
    assert isinstance(model.texture, TissueTexture) and model.texture.labelled
    synthesize(SynthesizeOptions(model=tmp_path / "m", out=tmp_path / "s", n=2, device="cpu"), show_progress=False)
    assert all(reproduce(side, tmp_path / "m")[0] for side in (tmp_path / "s").glob("sub-*/anat/*_T1w.json"))
