import pytest

from neurosql_med.config import BUILTIN, from_dict, load_config, override
from neurosql_med.errors import UserError


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_configs_load(name):
    cfg = load_config(name)
    assert cfg.data.mode in ("2d", "3d")
    assert len(cfg.digest()) == 64


def test_default_is_2d_and_volume3d_is_3d():
    assert load_config("default").data.mode == "2d"
    assert load_config("volume3d").data.mode == "3d"


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"data": {"shapes": [1, 2, 3]}}, "data.shapes"),
        ({"bogus": {}}, "bogus"),
        ({"model": {"latent_dim": "eight"}}, "model.latent_dim"),
        ({"model": {"latent_dim": 0}}, "model.latent_dim"),
        ({"data": {"shape": [4, 64, 64]}}, "data.shape"),
        ({"data": {"mode": "4d"}}, "data.mode"),
        ({"train": {"amp": "yes"}}, "train.amp"),
        ({"data": {"slice_range": [0.8, 0.2]}}, "data.slice_range"),
    ],
)
def test_bad_configs_name_the_key(raw, key):
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        from_dict(raw)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)


def test_override_applies_given_values_only():
    cfg = override(load_config("tiny"), train__epochs=3, model__latent_dim=None)
    assert cfg.train.epochs == 3
    assert cfg.model.latent_dim == load_config("tiny").model.latent_dim
    with pytest.raises(UserError, match="model.lattice"):
        override(cfg, model__lattice="cauchy")


def test_decoder_size_is_counted_on_the_meta_device():
    from neurosql_med.engine.decoder import Decoder, decoder_parameters

    cfg = load_config("tiny")
    shape = cfg.data.sample_shape()
    assert shape == [24, 32]  # tiny is 2d with slice_axis 2
    real = Decoder(len(shape), cfg.model.latent_dim, shape, cfg.model.channels).parameter_count()
    assert decoder_parameters(cfg.model, shape) == real


def test_quick_is_the_default_with_fewer_epochs():
    default, quick = load_config("default").to_dict(), load_config("quick").to_dict()
    assert quick["train"]["epochs"] < default["train"]["epochs"]
    quick["train"]["epochs"] = default["train"]["epochs"]
    assert quick == default
