"""The decoder: shapes, range, batch independence, and that it can be fitted."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from neurosql_med.config import load_config
from neurosql_med.engine.decoder import Decoder, ResidualDecoder, build_decoder
from neurosql_med.engine.losses import ReconstructionLoss
from neurosql_med.io.geometry import Geometry


@pytest.mark.parametrize(
    "dims, shape, channels",
    [(2, (24, 32), [16, 8]), (2, (9, 13), [8, 8, 4]), (3, (16, 24, 16), [8, 4]), (3, (11, 8, 13), [8, 4, 4])],
)
def test_decoder_output_shape_and_range(dims, shape, channels):
    decoder = Decoder(dims, latent_dim=3, out_shape=shape, channels=channels)
    out = decoder(torch.randn(2, 3) * 5)
    assert out.shape == (2, 1, *shape)
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("kind", [Decoder, ResidualDecoder])
def test_decoder_output_does_not_depend_on_the_batch(kind):
    decoder = kind(2, latent_dim=4, out_shape=(16, 20), channels=[16, 8]).eval()
    z = torch.randn(5, 4)
    torch.testing.assert_close(decoder(z)[2:3], decoder(z[2:3]), atol=1e-6, rtol=0)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in decoder.modules())


def test_default_2d_decoder_is_the_size_the_docs_state():
    cfg = load_config("default")
    d = cfg.data
    geometry = Geometry(d.mode, d.shape, d.spacing, np.eye(4).tolist(), slice_axis=d.slice_axis, slice_index=0)
    decoder = build_decoder(cfg.model, geometry.sample_shape)
    assert decoder.parameter_count() == pytest.approx(830_000, abs=5_000)  # docs: 0.83 M parameters (how-to/fit, results)
    assert decoder(torch.randn(2, cfg.model.latent_dim)).shape == (2, 1, 64, 80)  # 64x80 axial slices
    labelled = build_decoder(cfg.model, geometry.sample_shape, num_labels=4)  # + 4 tissue classes: 0.85 M
    assert labelled.parameter_count() == pytest.approx(850_000, abs=5_000)
    assert labelled(torch.randn(2, cfg.model.latent_dim)).shape == (2, 5, 64, 80)


@pytest.mark.parametrize("kind", [Decoder, ResidualDecoder])
def test_a_few_steps_lower_the_loss_on_fixed_codes(kind):
    torch.manual_seed(0)
    decoder = kind(2, latent_dim=4, out_shape=(12, 14), channels=[8, 4])
    loss = ReconstructionLoss(2, window=5)
    codes = torch.randn(8, 4)
    images = torch.rand(8, 1, 1, 1) * torch.linspace(0, 1, 14).expand(8, 1, 12, 14)
    optimizer = torch.optim.Adam(decoder.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        value = loss(decoder(codes), images).mean()
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        losses.append(value.item())
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize("dims, shape", [(2, (12, 14)), (3, (8, 10, 6))])
def test_template_starts_every_output_at_the_mean_image(dims, shape):
    torch.manual_seed(0)
    images = torch.rand(6, 1, *shape) * (torch.rand(1, 1, *shape) > 0.6)
    decoder = Decoder(dims, latent_dim=3, out_shape=shape, channels=[8, 4])
    mean = images.mean(0, keepdim=True)
    assert (decoder(torch.randn(4, 3)) - mean).abs().mean() > 0.2
    decoder.init_template(images)
    assert (decoder(torch.randn(4, 3)) - mean).abs().max() < 0.05


def test_v2_config_turns_every_generator_v2_switch_on():
    cfg = load_config("v2")
    assert (cfg.model.decoder, cfg.model.slice_levels, cfg.model.texture_mode) == ("residual", 6, "tissue")
    assert cfg.loss.laplacian_weight == 1.0 and cfg.data == load_config("default").data
    decoder = build_decoder(cfg.model, [64, 80], num_labels=4)
    assert decoder.parameter_count() == pytest.approx(746_000, abs=5_000)  # residual 128-64-32-16, 4 classes: 0.75 M
