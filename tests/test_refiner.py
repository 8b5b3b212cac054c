"""The stochastic refiner (model.texture_mode: refiner): residual detail drawn by a network trained by conditional IMLE."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from support import TISSUE_NOISE as NOISE, two_tissues, write_subjects

from neurosql_med.config import load_config, override
from neurosql_med.data.cohort import load_cohort
from neurosql_med.engine.refiner import FORMAT, GRAIN_STREAM, RefinerNet, RefinerTexture, fit_refiner
from neurosql_med.engine.residual import ResidualTexture, fit_texture, texture_seeds
from neurosql_med.errors import UserError
from neurosql_med.io.model import load_model
from neurosql_med.synthesis.options import SynthesizeOptions
from neurosql_med.synthesis.reproduce import reproduce
from neurosql_med.synthesis.synthesize import synthesize
from neurosql_med.training.train import fit

pytestmark = pytest.mark.usefixtures("one_thread")


def small_tissues(n: int = 16) -> tuple[torch.Tensor, ...]:
    """two_tissues cut to 16 x 32 voxels (both tissues and some background), so the refiner trains in seconds."""
    return tuple(t[..., 8:24, 4:36] for t in two_tissues(n))


def grain_of(images: torch.Tensor, reconstructions: torch.Tensor) -> ResidualTexture:
    """The global texture a fit would add after the refiner."""
    return fit_texture(images, reconstructions, 0.85, 0.15)


@pytest.fixture(scope="module")
def grain() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, RefinerTexture]:
    """Two tissues, one quiet and one grainy, G their noise-free means; and a refiner trained on them."""
    images, mean, labels = small_tissues()
    return images, mean, labels, fit_refiner(images, mean, labels, 3, grain_of(images, mean), 80, seed=0)


def test_the_refiner_starts_as_no_refinement():
    _, mean, labels = two_tissues(4)
    untrained = RefinerTexture(RefinerNet(2, 3).eval(), grain_of(mean, mean))
    seeds = texture_seeds(0, range(4))
    assert torch.equal(untrained.refine(mean, seeds, labels), mean)
    assert torch.equal(untrained.apply(mean, seeds, labels), untrained.grain.apply(mean, [s ^ GRAIN_STREAM for s in seeds]))


def test_it_draws_grain_where_the_anatomy_has_it(grain):
    _, mean, labels, refiner = grain
    drawn = refiner.refine(mean, texture_seeds(0, range(len(mean))), labels) - mean
    spread = [float(drawn[labels == k].std()) for k in (1, 2)]
    assert spread[1] > 2.5 * spread[0]  # the grainy tissue gets the grain, the quiet one little
    assert spread[1] > 0.25 * NOISE[2]  # a real amplitude, not a mean that averages it away
    assert torch.equal(drawn[labels == 0], torch.zeros_like(drawn[labels == 0]))  # black stays black


def test_each_seed_draws_its_own_detail_and_the_same_seed_the_same(grain):
    _, mean, labels, refiner = grain
    one, again, other = (refiner.refine(mean[:2], texture_seeds(s, range(2)), labels[:2]) for s in (1, 1, 2))
    assert torch.equal(one, again)
    assert (one - other)[labels[:2] == 2].abs().mean() > 0.1 * NOISE[2]


def test_it_sharpens_what_the_generator_blurred():
    _, sharp, labels = small_tissues(8)
    blurred = F.avg_pool2d(sharp, 5, stride=1, padding=2, count_include_pad=False)
    refiner = fit_refiner(sharp, blurred, labels, 3, grain_of(sharp, blurred), 50, seed=0)
    refined = refiner.refine(blurred, texture_seeds(0, range(8)), labels)
    assert (refined - sharp).abs().mean() < 0.5 * (blurred - sharp).abs().mean()


def test_volumes_are_refined_too():
    volumes = torch.rand(3, 1, 10, 12, 9)
    labels = (volumes > 0.5).long()
    refiner = fit_refiner(volumes, 0.9 * volumes, labels, 2, grain_of(volumes, 0.9 * volumes), 2, seed=0)
    out = refiner.refine(0.9 * volumes, texture_seeds(0, range(3)), labels)
    assert out.shape == volumes.shape and 0 <= out.min() and out.max() <= 1
    assert not torch.equal(out, 0.9 * volumes)  # two steps already move the zero start
    assert refiner.apply(0.9 * volumes, texture_seeds(0, range(3)), labels).shape == volumes.shape


def test_state_round_trips_and_a_damaged_one_is_refused():
    images, mean, labels = two_tissues(4)
    fitted = fit_refiner(images, mean, labels, 3, grain_of(images, mean), 3, seed=5)
    again = fit_refiner(images, mean, labels, 3, grain_of(images, mean), 3, seed=5)
    state = fitted.state()
    assert state["format"] == FORMAT and all(torch.equal(w, again.state()["weights"][k]) for k, w in state["weights"].items())
    seeds = texture_seeds(3, range(4))
    assert torch.equal(RefinerTexture.from_state(state, (32, 40), 3, "t").apply(mean, seeds, labels),
                       fitted.apply(mean, seeds, labels))
    with pytest.raises(UserError, match="label classes"):
        RefinerTexture.from_state(state, (32, 40), 2, "t")
    with pytest.raises(UserError, match="not those of an nsql-med refiner"):
        RefinerTexture.from_state(state | {"weights": {}}, (32, 40), 3, "t")
    broken = {k: w.clone() for k, w in state["weights"].items()}
    broken["out.conv.bias"].fill_(float("nan"))
    with pytest.raises(UserError, match="finite"):
        RefinerTexture.from_state(state | {"weights": broken}, (32, 40), 3, "t")
    with pytest.raises(UserError, match="grain"):
        RefinerTexture.from_state({k: v for k, v in state.items() if k != "grain"}, (32, 40), 3, "t")
    with pytest.raises(UserError, match="grain"):
        RefinerTexture.from_state(state | {"grain": state["grain"] | {"strength": -1.0}}, (32, 40), 3, "t")


def test_refiner_steps_are_bounded():
    with pytest.raises(UserError, match="model.refiner_steps"):
        override(load_config("tiny"), model__texture_mode="refiner", model__refiner_steps=0)


@pytest.mark.slow
def test_a_labelled_fit_writes_it_and_synthesize_reproduces_refined_pairs(tmp_path):
    cfg = override(load_config("tiny"), train__epochs=2, model__texture_mode="refiner", model__refiner_steps=3)
    cohort = load_cohort(write_subjects(tmp_path / "scans", 5), cfg.data)
    cohort = dataclasses.replace(cohort, labels=(cohort.images > 0.5).long() + (cohort.images > 0.05).long(),
                                 label_names=["background", "dark", "bright"])
    fit(cohort, cfg, tmp_path / "m", show_progress=False)
    model = load_model(tmp_path / "m")
    assert isinstance(model.texture, RefinerTexture) and model.texture.net.num_labels == 3
    assert model.texture.grain.strength == cfg.model.texture
    assert "conditional IMLE" in (tmp_path / "m" / "MODEL_CARD.md").read_text()
    synthesize(SynthesizeOptions(model=tmp_path / "m", out=tmp_path / "s", n=2, device="cpu"), show_progress=False)
    assert all(reproduce(side, tmp_path / "m")[0] for side in (tmp_path / "s").glob("sub-*/anat/*_T1w.json"))
