"""Tests of shrinkssm.train.generate: decoding-speed measurement and its report."""

import pytest
import torch

from shrinkssm.nn import ModelConfig, SSMModel
from shrinkssm.train import generate as gen
from shrinkssm.train.generate import Spread, decoding_speed, format_decoding


def _lm(d_state):
    torch.manual_seed(0)
    return SSMModel(ModelConfig(n_layers=1, d_model=8, d_state=d_state, norm="layer"),
                    d_input=12, d_output=12, task="lm").eval()


def test_spread_is_the_median_and_range():
    s = Spread.of([3.0, 1.0, 10.0, 2.0, 4.0])
    assert (s.median, s.low, s.high, s.runs) == (3.0, 1.0, 10.0, 5)


def test_decoding_speed_warms_up_interleaves_and_takes_medians(monkeypatch):
    a, b = _lm(8), _lm(16)
    calls = []
    fake = {id(a): iter([9.0, 1.0, 1.0, 3.0]), id(b): iter([9.0, 2.0, 4.0, 4.0])}

    def timed(model, n_tokens, batch_size):
        calls.append(id(model))
        return next(fake[id(model)])

    monkeypatch.setattr(gen, "_decode_seconds", timed)
    speeds, ratios = decoding_speed([a, b], n_tokens=10, batch_size=2, repeats=3, warmup=1)
    # one untimed warm-up each (the 9 s runs never count), then the models take turns
    assert calls == [id(a), id(b), id(a), id(b), id(a), id(b), id(a), id(b)]
    assert speeds[0] == Spread(20 / 1.0, 20 / 3.0, 20 / 1.0, 3)
    assert speeds[1] == Spread(20 / 4.0, 20 / 4.0, 20 / 2.0, 3)
    # per round: time of b over time of a = how much faster a decodes
    assert ratios[1] == Spread(2.0, 4 / 3, 4.0, 3)
    assert ratios[0] == Spread(1.0, 1.0, 1.0, 3)


def test_decoding_speed_of_real_models_and_its_report():
    speeds, ratios = decoding_speed([_lm(4), _lm(32)], n_tokens=20, repeats=3)
    assert all(s.low <= s.median <= s.high and s.low > 0 for s in speeds)
    text = format_decoding(speeds, ratios, [[4], [32]], 20, 1)
    assert "median (range) of 3 timed runs after a warm-up" in text
    assert "final state sizes [4]:" in text and "initial state sizes [32]:" in text
    assert "final / initial:" in text
    with pytest.raises(ValueError, match="repeats"):
        decoding_speed([_lm(4)], repeats=0)
