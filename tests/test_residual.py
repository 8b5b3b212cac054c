"""The residual texture (engine/residual.py): what it measures, what it adds, and how a model folder keeps it."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from support import cli, synthesize_on_cpu

from neurosql_med.config import load_config, override
from neurosql_med.data.cohort import load_cohort
from neurosql_med.engine.residual import ResidualTexture, fit_texture, frequency_radius, texture_seeds
from neurosql_med.errors import UserError
from neurosql_med.evaluation.texture import texture
from neurosql_med.io.model import HASHES, TEXTURE, load_model
from neurosql_med.io.nifti import read_sample
from neurosql_med.synthesis.reproduce import reproduce
from neurosql_med.training.train import fit

pytestmark = pytest.mark.usefixtures("one_thread")
SHAPE = (32, 40)
SIGMA = 0.05


def smooth_and_noisy(n: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, their noise-free means): bright soft discs of varied size on black, white noise of SIGMA inside."""
    gen = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(-1, 1, SHAPE[0]), torch.linspace(-1, 1, SHAPE[1]), indexing="ij")
    radius = 0.5 + 0.3 * torch.rand(n, 1, 1, generator=gen)
    inside = torch.sigmoid((radius - (x.square() + y.square()).sqrt()) / 0.1)[:, None]  # soft edges: little high frequency
    mean = 0.65 * inside
    return (mean + SIGMA * torch.randn(mean.shape, generator=gen) * inside).clamp(0, 1), mean


def test_fit_measures_the_noise_above_the_cutoff_where_the_tissue_is():
    images, mean = smooth_and_noisy()
    fitted = fit_texture(images, mean, strength=1.0, cutoff=0.15)
    band = float((frequency_radius(SHAPE) > 0.15).float().mean())  # the share of white noise's power kept
    tissue = fitted.amplitude[6, 0]  # intensity 0.6-0.7, flat: the discs' insides
    assert tissue == pytest.approx(SIGMA * band**0.5, rel=0.15)
    assert fitted.amplitude[0, 0] < 0.1 * tissue  # the black background carries none
    assert float(fitted.filter[frequency_radius(SHAPE) <= 0.15].abs().max()) == 0.0


def test_a_zeroed_background_stays_zero_and_a_noisy_one_gets_texture_everywhere():
    images, mean = smooth_and_noisy()
    stripped = torch.where(mean < 0.01, torch.zeros_like(images), images)  # skull-stripped: exactly 0 outside
    fitted = fit_texture(stripped, mean, strength=1.0, cutoff=0.15)
    assert 0.005 <= fitted.background <= 0.1
    textured = fitted.apply(mean, texture_seeds(0, range(len(mean))))
    dark = mean < fitted.background
    assert torch.equal(textured[dark], mean[dark]) and not torch.equal(textured[~dark], mean[~dark])
    noisy = (images + 0.02 * torch.rand(images.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert fit_texture(noisy, mean, strength=1.0, cutoff=0.15).background == 0.0


def test_the_field_has_unit_variance_and_only_the_kept_frequencies():
    images, mean = smooth_and_noisy()
    fitted = fit_texture(images, mean, strength=1.0, cutoff=0.15)
    fields = torch.cat([fitted.field(s) for s in range(40)])
    assert float(fields.std()) == pytest.approx(1.0, rel=0.05)
    power = torch.fft.fft2(fields[:, 0]).abs().square().mean(0)
    assert float(power[frequency_radius(SHAPE) <= 0.15].max()) < 1e-6 * float(power.max())


def test_texture_brings_the_high_frequency_power_of_the_means_up_to_the_images():
    images, mean = smooth_and_noisy()
    fitted = fit_texture(images, mean, strength=1.0, cutoff=0.15)
    fresh, fresh_mean = smooth_and_noisy(seed=1)
    textured = fitted.apply(fresh_mean, texture_seeds(0, range(len(fresh_mean))))
    assert texture(fresh, fresh_mean)["high_frequency_ratio"] < 0.05
    assert texture(fresh, textured)["high_frequency_ratio"] == pytest.approx(1.0, abs=0.25)
    assert 0 <= float(textured.min()) and float(textured.max()) <= 1


def high_power(images: torch.Tensor) -> float:
    """The mean power per image above 0.15 cycles per voxel."""
    keep = frequency_radius(SHAPE) > 0.15
    return float((torch.fft.fft2(images[:, 0].double()).abs().square() * keep).sum((1, 2)).mean())


def test_the_lacking_spectrum_adds_the_power_the_decoder_lacks_where_the_residual_spectrum_misses_it():
    # G keeps part of each image's detail (a low-pass of it), as a decoder keeps part of the fine anatomy: the
    # residual then holds only the rest, and G plus a field of the residual's power falls short of the images.
    gen = torch.Generator().manual_seed(0)
    images = 0.5 + 0.05 * torch.randn((48, 1, *SHAPE), generator=gen)
    low_pass = torch.exp(-(frequency_radius(SHAPE) / 0.4).square())
    decoded = torch.fft.ifft2(torch.fft.fft2(images[:, 0]) * low_pass).real[:, None]
    seeds = texture_seeds(0, range(len(images)))
    lacking = fit_texture(images, decoded, strength=1.0, cutoff=0.15, spectrum="lacking").apply(decoded, seeds)
    residual = fit_texture(images, decoded, strength=1.0, cutoff=0.15).apply(decoded, seeds)
    real = high_power(images)
    assert high_power(lacking) == pytest.approx(real, rel=0.08)
    assert high_power(residual) < 0.85 * real


def test_an_image_texture_depends_on_its_seed_only_never_on_its_batch():
    images, mean = smooth_and_noisy()
    fitted = fit_texture(images, mean, strength=0.85, cutoff=0.15)
    seeds = texture_seeds(3, range(1, 9))
    together = fitted.apply(mean[:8], seeds)
    alone = torch.cat([fitted.apply(mean[k:k + 1], seeds[k:k + 1]) for k in range(8)])
    assert torch.equal(together, alone)
    assert not torch.equal(together[0], fitted.apply(mean[:1], texture_seeds(4, [1]))[0])
    assert texture_seeds(3, [5]) == texture_seeds(3, [5]) != texture_seeds(3, [6])


def test_state_round_trips_through_a_weights_only_load_and_bad_states_are_refused():
    images, mean = smooth_and_noisy()
    fitted = fit_texture(images, mean, strength=0.85, cutoff=0.15)
    buffer = io.BytesIO()
    torch.save(fitted.state(), buffer)
    buffer.seek(0)
    loaded = ResidualTexture.from_state(torch.load(buffer, weights_only=True), SHAPE, "texture.pt")
    assert torch.equal(loaded.filter, fitted.filter) and torch.equal(loaded.amplitude, fitted.amplitude)
    with pytest.raises(UserError, match="filter"):
        ResidualTexture.from_state(fitted.state(), (SHAPE[0], SHAPE[1] + 1), "texture.pt")
    with pytest.raises(UserError, match="residual texture"):
        ResidualTexture.from_state({"filter": fitted.filter}, SHAPE, "texture.pt")
    with pytest.raises(UserError, match="strength"):
        ResidualTexture.from_state({**fitted.state(), "strength": float("nan")}, SHAPE, "texture.pt")
    with pytest.raises(UserError, match="background"):
        ResidualTexture.from_state({**fitted.state(), "background": 0.5}, SHAPE, "texture.pt")


@pytest.mark.slow
def test_a_fit_keeps_its_texture_hashed_and_samples_carry_it(tiny_models, tmp_path_factory):
    folder = tiny_models.copy("tiny", "plain", tmp_path_factory.mktemp("model") / "m")  # its texture is damaged at the end
    assert TEXTURE in (folder / HASHES).read_text()
    model = load_model(folder)
    assert model.texture is not None and model.texture.strength == 0.85
    z = np.random.default_rng(0).standard_normal((4, model.latent_dim))
    seeds = texture_seeds(0, range(4))
    sampled, decoded = model.sample(z, seeds)[0], model.decode(z)
    assert not torch.equal(sampled, decoded)
    assert texture(decoded, sampled)["high_frequency_ratio"] > 1.0
    assert not torch.equal(model.sampled_reconstructions(), model.reconstructions())
    first, second = tmp_path_factory.mktemp("a") / "s", tmp_path_factory.mktemp("b") / "s"
    synthesize_on_cpu(folder, first, n=2)
    synthesize_on_cpu(folder, second, n=2)
    written = sorted(p.relative_to(first) for p in first.rglob("*_T1w.nii.gz"))
    assert len(written) == 2 and all((first / p).read_bytes() == (second / p).read_bytes() for p in written)
    smooth = tmp_path_factory.mktemp("c") / "s"
    synthesize_on_cpu(folder, smooth, n=2, texture=False)
    assert all((first / p).read_bytes() != (smooth / p).read_bytes() for p in written)
    for cohort, textured in ((first, True), (smooth, False)):
        sidecar = json.loads((cohort / written[0]).with_suffix("").with_suffix(".json").read_text())
        assert sidecar["NeuroSQL"]["texture"] is textured and reproduce(cohort / written[0], folder)[0]
    (folder / TEXTURE).write_bytes((folder / TEXTURE).read_bytes()[:-3] + b"xyz")
    with pytest.raises(UserError, match="texture.pt: does not match its recorded sha256"):
        load_model(folder)


@pytest.mark.slow
def test_texture_zero_writes_no_texture_and_samples_are_the_decoder_output(tiny_models, tmp_path):
    folder = tiny_models.copy("tiny", "plain", tmp_path / "m")  # with texture, then refit the same folder without it
    assert (folder / TEXTURE).is_file()
    cfg = override(load_config("tiny"), train__epochs=1, model__texture=0.0)
    fit(load_cohort(tiny_models.scans, cfg.data), cfg, folder, force=True, show_progress=False)
    assert not (folder / TEXTURE).exists() and TEXTURE not in (folder / HASHES).read_text()
    model = load_model(folder)
    z = np.random.default_rng(0).standard_normal((3, model.latent_dim))
    assert model.texture is None and torch.equal(model.sample(z, [1, 2, 3])[0], model.decode(z))


@pytest.mark.slow
def test_the_cli_writes_smooth_means_with_no_texture(tiny_models, tmp_path, capsys):
    folder = tiny_models.get("tiny")
    out = tmp_path / "s"
    code, _, err = cli(capsys, "synthesize", "--model", folder, "--n", 1, "--out", out, "--no-texture", "--device", "cpu")
    assert code == 0, err
    sidecar = json.loads(next(out.rglob("*_T1w.json")).read_text())
    assert sidecar["NeuroSQL"]["texture"] is False
    model = load_model(folder)
    decoded = model.decode(np.asarray([sidecar["NeuroSQL"]["latent"]]))[0, 0].numpy()
    written = read_sample(next(out.rglob("*_T1w.nii.gz")))[:, :, 0]
    assert np.abs(written - decoded).max() <= 1 / 4095  # the decoder's mean, stored at 12 bits, without texture


@pytest.mark.parametrize(("key", "value"), [("model__texture", -0.1), ("model__texture", 5.0),
                                            ("model__texture_cutoff", 0.5), ("model__texture_spectrum", "power")])
def test_config_refuses_texture_values_that_cannot_work(key, value):
    with pytest.raises(UserError, match=key.replace("__", ".")):
        override(load_config("tiny"), **{key: value})
