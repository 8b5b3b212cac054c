"""The modulated residual decoder (model.decoder: residual): shapes, batch independence, modulation, fitting."""
from __future__ import annotations

import pytest
import torch

from neurosql_med.config import ModelConfig
from neurosql_med.engine.decoder import ResidualDecoder, build_decoder, decoder_parameters


@pytest.mark.parametrize("dims, shape, channels", [(2, (24, 32), [16, 8]), (2, (9, 13), [8, 8, 4]), (3, (11, 8, 13), [8, 4])])
def test_output_shape_range_and_labels(dims, shape, channels):
    decoder = ResidualDecoder(dims, latent_dim=3, out_shape=shape, channels=channels, num_labels=2)
    out = decoder(torch.randn(2, 3) * 5)
    assert out.shape == (2, 3, *shape)
    assert out[:, 0].min() >= 0 and out[:, 0].max() <= 1


def test_every_resolution_has_two_convolutions_and_full_resolution_is_modulated():
    decoder = ResidualDecoder(2, latent_dim=4, out_shape=(16, 20), channels=[16, 8, 4])
    assert len(decoder.blocks) == 3 and all(len(block.convs) == 2 for block in decoder.blocks)
    z = torch.randn(3, 4)
    with torch.no_grad():  # FiLM starts at identity; give the full-resolution block a style of its own
        decoder.blocks[-1].film.weight.normal_()
        plain = decoder(z)
        decoder.blocks[-1].film.weight.zero_()
        assert not torch.allclose(plain, decoder(z))


def test_config_selects_it_and_the_plain_decoder_stays_the_default():
    plain, residual = ModelConfig(channels=[16, 8]), ModelConfig(channels=[16, 8], decoder="residual")
    assert not isinstance(build_decoder(plain, (16, 20)), ResidualDecoder)
    built = build_decoder(residual, (16, 20), num_labels=3, condition_dim=2)
    assert isinstance(built, ResidualDecoder) and built(torch.randn(2, 18)).shape == (2, 4, 16, 20)
    assert decoder_parameters(residual, (16, 20), 3, 2) == built.parameter_count()

