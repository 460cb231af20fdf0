"""Normalisation transforms and their statistics, against plain numpy in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shrinkssm.data import transforms
from shrinkssm.data.transforms import Normalize, channel_stats, make_normalize


def test_uint8_channel_stats_match_numpy():
    x = np.random.default_rng(0).integers(0, 256, (37, 11, 3), dtype=np.uint8)
    x[..., 2] //= 7  # a different distribution per channel
    mean, std = channel_stats(torch.from_numpy(x))
    flat = x.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(mean, flat.mean(0), rtol=1e-12)
    np.testing.assert_allclose(std, flat.std(0), rtol=1e-12)


def test_float_channel_stats_match_numpy_over_several_chunks(monkeypatch):
    monkeypatch.setattr(transforms, "_CHUNK", 4)
    x = np.random.default_rng(1).normal(5.0, 3.0, (13, 7, 2)).astype(np.float32)
    mean, std = channel_stats(torch.from_numpy(x))
    flat = x.reshape(-1, 2).astype(np.float64)
    np.testing.assert_allclose(mean, flat.mean(0), rtol=1e-12)
    np.testing.assert_allclose(std, flat.std(0), rtol=1e-12)


def test_channel_stats_needs_data():
    with pytest.raises(ValueError, match="non-empty"):
        channel_stats(torch.zeros(0, 5, 1))


def test_normalize_matches_numpy_and_broadcasts_a_single_value():
    x = np.random.default_rng(2).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    out = Normalize(mean=(1.0, 2.0, 3.0), std=(4.0, 5.0, 6.0))(torch.from_numpy(x))
    assert out.dtype == torch.float32
    np.testing.assert_allclose(
        out.numpy(), (x - np.array([1.0, 2.0, 3.0])) / np.array([4.0, 5.0, 6.0]), rtol=1e-6
    )
    np.testing.assert_allclose(
        Normalize(mean=0.0, std=255.0)(torch.from_numpy(x)).numpy(), x / 255.0, rtol=1e-6
    )


@pytest.mark.parametrize(
    "mean, std, message",
    [
        ((0.0, 1.0), (1.0,), "mean has 2 values, std has 1"),
        ((0.0,), (0.0,), "std finite and > 0"),
        ((np.nan,), (1.0,), "finite"),
    ],
)
def test_normalize_rejects_bad_statistics(mean, std, message):
    with pytest.raises(ValueError, match=message):
        Normalize(mean=mean, std=std)


def test_normalize_checks_channels():
    with pytest.raises(ValueError, match="Normalize has 2 channels, input has 3"):
        Normalize(mean=(0.0, 0.0), std=(1.0, 1.0))(torch.zeros(1, 2, 3))


def test_make_normalize_modes():
    x = torch.from_numpy(np.random.default_rng(3).integers(0, 17, (20, 8, 2), dtype=np.uint8))
    x[..., 1] = 9  # a constant channel is centred, not divided by zero
    unit, record = make_normalize("unit", x, max_value=16)
    assert float(unit(x).max()) <= 1.0 and record == {"mode": "unit", "mean": [0.0], "std": [16.0]}
    standard, record = make_normalize("standard", x, max_value=16)
    out = standard(x).numpy().astype(np.float64)
    np.testing.assert_allclose(out[..., 0].mean(), 0.0, atol=1e-6)
    np.testing.assert_allclose(out[..., 0].std(), 1.0, atol=1e-6)
    np.testing.assert_array_equal(out[..., 1], 0.0)
    assert record["std"][1] == 1.0
    none, _ = make_normalize("none", x, max_value=16)
    assert torch.equal(none(x), x.float())
    with pytest.raises(ValueError, match=r"normalize must be one of unit, standard, none; got"):
        make_normalize("minmax", x, max_value=16)
