"""The weights samples come from: the trained ones (train.ema = 0) or their moving average."""
from __future__ import annotations

import torch

from neurosql_med.training.averaging import LiveWeights, MovingAverage, weight_average


def _generator(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Linear(3, 2)


def test_the_config_picks_the_average():
    generator = _generator(0)
    assert isinstance(weight_average(generator, 0.0), LiveWeights)
    assert isinstance(weight_average(generator, 0.9), MovingAverage)


def test_live_weights_sample_from_the_generator_and_save_nothing():
    generator, live = _generator(0), LiveWeights()
    live.update(generator)
    assert live.sampled(generator) is generator and live.checkpoint() == {}


def test_the_moving_average_follows_each_update_and_survives_a_resume():
    generator = _generator(0)
    average = MovingAverage(generator, 0.75)
    start = {k: v.clone() for k, v in generator.state_dict().items()}
    generator.load_state_dict(_generator(1).state_dict())
    average.update(generator)
    for name, value in generator.state_dict().items():
        torch.testing.assert_close(average.weights[name], 0.75 * start[name] + 0.25 * value)
    sampled = average.sampled(generator)
    assert sampled is not generator and torch.equal(sampled.weight, average.weights["weight"])
    assert not torch.equal(generator.weight, average.weights["weight"])  # the trained weights stay as they are
    resumed = MovingAverage(_generator(2), 0.75)
    resumed.resume(average.checkpoint())
    assert all(torch.equal(resumed.weights[k], v) for k, v in average.weights.items())
