"""Slice-aware 2D models (model.slice_levels): each slice's level, level strata in the assignment, G(u, p), --levels."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from support import write_subjects
from neurosql_med.config import load_config, override
from neurosql_med.data.cohort import load_cohort
from neurosql_med.data.transforms import SliceSamplesd
from neurosql_med.engine.levels import SliceLevels, parse_levels
from neurosql_med.errors import UserError
from neurosql_med.io.model import load_model
from neurosql_med.synthesis.reproduce import reproduce
from neurosql_med.synthesis.options import SynthesizeOptions
from neurosql_med.synthesis.synthesize import synthesize
from neurosql_med.training.conditions import training_conditions
from neurosql_med.training.train import fit

CONFIG = dict(model__slice_levels=2, model__decoder="residual", model__channels=[16, 8], train__epochs=3,
              loss__laplacian_weight=1.0, loss__laplacian_levels=3)


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    return write_subjects(tmp_path_factory.mktemp("scans"), 5)


@pytest.fixture(scope="module")
def slice_model(scans, tmp_path_factory, one_thread):
    cfg = override(load_config("tiny"), **CONFIG)
    out = tmp_path_factory.mktemp("model") / "m"
    fit(load_cohort(scans, cfg.data), cfg, out, show_progress=False)
    return out


def test_a_slice_knows_its_level_within_the_brain():
    volume = torch.zeros(1, 4, 4, 20)
    volume[..., 5:15] = 1  # brain in slices 5..14 along axis 2
    slices = SliceSamplesd(["image"], 2, (0.0, 1.0), 3).slices(volume)
    assert [i for i, _ in slices] == [5, 8, 11, 14]
    assert [p for _, p in slices] == pytest.approx([0.05, 0.35, 0.65, 0.95])


def test_levels_strata_draws_and_encoding():
    levels = SliceLevels.of([0.2, 0.25, 0.3, 0.7, 0.75, 0.8], bins=2)
    assert levels.counts == (3, 3)
    assert levels.strata(np.array([0.0, 0.3, 0.6, 1.0])).tolist() == [0, 0, 1, 1]
    drawn = [levels.drawn(seed=4, k=k) for k in range(1, 200)]
    assert drawn == [levels.drawn(seed=4, k=k) for k in range(1, 200)] and 0.2 <= min(drawn) and max(drawn) <= 0.8
    z = np.random.default_rng(0).normal(size=(5, 3))
    assert levels.of_latents(z)[2] == levels.of_latents(z[2:3])[0]  # a latent's own level, whatever its batch
    assert SliceLevels.from_json(levels.to_json(), "x") == levels
    with pytest.raises(UserError):
        parse_levels("0.3,1.5")


def test_codes_are_assigned_within_level_strata(scans):
    cfg = override(load_config("tiny"), model__slice_levels=2)
    cohort = load_cohort(scans, cfg.data)
    conditioned = training_conditions(cohort, cfg)
    p = np.asarray(cohort.slice_levels)
    assert conditioned.values.shape == (len(cohort), 1) and len(conditioned.strata.rows) == 2
    for rows in conditioned.strata.rows:
        assert len(set(conditioned.levels.strata(p[rows]))) == 1  # a stratum never mixes levels
    assert len(torch.unique(conditioned.cost[:, 0])) == 2  # costs decode each level stratum once


@pytest.mark.slow
def test_fit_synthesize_levels_and_reproduce(slice_model, tmp_path):
    model = load_model(slice_model)
    assert model.levels is not None and model.levels.bins == 2 and len(model.training_levels) == len(model.lattice)
    out = tmp_path / "synth"
    synthesize(SynthesizeOptions(model=slice_model, out=out, n=4, device="cpu", seed=1, levels="0.35,0.65"), show_progress=False)
    sidecars = sorted(out.glob("sub-*/anat/*_T1w.json"))
    recorded = [json.loads(s.read_text())["NeuroSQL"]["slice_level"] for s in sidecars]
    assert recorded == [0.35, 0.65, 0.35, 0.65]
    assert all(reproduce(s, slice_model)[0] for s in sidecars[:2])
    z = np.zeros((1, model.latent_dim))
    low, high = model.decode(z, levels=np.array([0.3])), model.decode(z, levels=np.array([0.7]))
    assert not torch.equal(low, high)  # the level is an input of G


def test_a_draw_near_codes_picks_a_code_of_its_own_level_stratum(slice_model, tmp_path):
    model = load_model(slice_model)
    out = tmp_path / "near"
    synthesize(SynthesizeOptions(model=slice_model, out=out, n=4, device="cpu", levels="0.1,0.9", near_codes=0.6),
               show_progress=False)
    sidecars = sorted(out.glob("sub-*/anat/*_T1w.json"))
    for side in sidecars:
        info = json.loads(side.read_text())["NeuroSQL"]
        stratum = model.levels.strata(np.array([info["slice_level"], model.training_levels[info["code_index"]]]))
        assert stratum[0] == stratum[1]
    assert reproduce(sidecars[1], slice_model)[0]


@pytest.mark.slow
def test_levels_need_a_slice_aware_model(tiny_models, tmp_path):
    with pytest.raises(UserError, match="--levels"):  # the shared tiny model knows no slice levels
        synthesize(SynthesizeOptions(model=tiny_models.get("tiny"), out=tmp_path / "s", n=2, device="cpu", levels="0.5"),
                   show_progress=False)
    assert not (tmp_path / "s").exists()


def test_slice_levels_are_for_2d_and_bounded():
    with pytest.raises(UserError, match="model.slice_levels"):
        override(load_config("tiny3d"), model__slice_levels=4)
    with pytest.raises(UserError, match="model.slice_levels"):
        override(load_config("tiny"), model__slice_levels=-1)
