"""Forecasting windows: chronological splits without target overlap, training-only statistics,
the step-major target layout, the seasonal-naive baseline against a plain loop, and the real
series where pmdarima / statsmodels are installed."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from shrinkssm.data import load_dataset
from shrinkssm.data.forecasting import (
    forecast_splits,
    seasonal_naive_forecast,
    seasonal_naive_predictions,
)


def first_target_steps(split, scaled, context):
    """Recover each window's first target step ``s`` from its inputs (values are distinct)."""
    steps = []
    for window in split.inputs.numpy()[:, :, 0]:
        matches = [s for s in range(context, len(scaled) + 1) if np.allclose(scaled[s - context : s], window)]
        assert len(matches) == 1
        steps.append(matches[0])
    return np.array(steps)


def test_windows_periods_and_statistics():
    series = np.cumsum(np.random.default_rng(0).normal(size=200)) + np.arange(200)  # distinct values
    data = forecast_splits(series, context=12, horizon=5, val_fraction=0.2, test_fraction=0.25)
    assert data.meta["periods"] == {"train": [0, 120], "val": [120, 150], "test": [150, 200]}
    assert json.loads(json.dumps(data.meta))
    mean, std = series[:120].mean(), series[:120].std()
    assert data.meta["mean"] == pytest.approx([mean]) and data.meta["std"] == pytest.approx([std])
    scaled = (series - mean) / std
    spec = data.spec
    assert (spec.kind, spec.seq_len, spec.d_input, spec.d_output, spec.metric, spec.per_step) == (
        "regression", 12, 1, 5, "mse", False,
    )  # fmt: skip
    for name, (start, stop) in data.meta["periods"].items():
        split = getattr(data, name)
        steps = first_target_steps(split, scaled, 12)
        # Every window whose targets lie in the period, once, in order.
        assert steps.tolist() == list(range(max(start, 12), stop - 5 + 1))
        for i, s in enumerate(steps):
            np.testing.assert_allclose(split.targets[i].numpy(), scaled[s : s + 5], rtol=1e-6, atol=1e-6)
        if name == "train":
            assert steps.min() - 12 >= 0 and steps.max() + 5 <= 120  # context and targets in train
    # Statistics come from the training period only: changing later values changes no train window.
    changed = series.copy()
    changed[130:] *= 3
    other = forecast_splits(changed, context=12, horizon=5, val_fraction=0.2, test_fraction=0.25)
    assert other.train.inputs.equal(data.train.inputs) and other.meta["mean"] == data.meta["mean"]


def test_multivariate_targets_are_step_major_and_stride_applies():
    t = np.arange(60, dtype=np.float64)
    series = np.stack([t, 100 + t], axis=1)  # (T, 2)
    data = forecast_splits(series, context=4, horizon=3, val_fraction=0.0, test_fraction=0.2, stride=5)
    assert data.spec.d_input == 2 and data.spec.d_output == 6 and len(data.val) == 0
    mean, std = np.array(data.meta["mean"]), np.array(data.meta["std"])
    x0 = data.train.inputs[0].numpy() * std + mean
    y0 = data.train.targets[0].numpy().reshape(3, 2) * std + mean
    np.testing.assert_allclose(x0, series[0:4], atol=1e-4)
    np.testing.assert_allclose(y0, series[4:7], atol=1e-4)  # y.view(num, horizon, D)[:, h]
    starts = data.train.inputs[:, 0, 0].numpy() * std[0] + mean[0] + 4
    np.testing.assert_allclose(starts, np.arange(4, 48 - 3 + 1, 5), atol=1e-4)


def test_errors():
    series = np.arange(50.0)
    with pytest.raises(ValueError, match=r"the val period \[36, 40\) of the 50-step series holds no window"):
        forecast_splits(series, context=5, horizon=20, test_fraction=0.2)
    with pytest.raises(ValueError, match="season=8 must be <= context=4"):
        forecast_splits(series, context=4, horizon=2, season=8)
    with pytest.raises(ValueError, match="test_fraction"):
        forecast_splits(series, context=4, horizon=2, test_fraction=0.0)
    with pytest.raises(ValueError, match="finite"):
        forecast_splits(np.array([1.0, np.nan] * 30), context=4, horizon=2)
    with pytest.raises(ValueError, match="context"):
        forecast_splits(series, context=0, horizon=2)


def test_seasonal_naive_against_a_plain_loop():
    rng = np.random.default_rng(1)
    x = torch.tensor(rng.normal(size=(7, 10, 2)))
    for season, horizon in ((1, 4), (3, 7), (10, 10), (4, 13)):
        pred = seasonal_naive_predictions(x, season, horizon).reshape(7, horizon, 2)
        for b in range(7):
            for h in range(horizon):
                # y_hat[T + h + 1] = y[T + h + 1 - season * (floor(h / season) + 1)], 0-based inputs
                source = 10 + h - season * (h // season + 1)
                assert torch.equal(pred[b, h], x[b, source])
    with pytest.raises(ValueError, match="longer than the context"):
        seasonal_naive_predictions(x, 11, 3)


def test_seasonal_naive_errors_and_a_periodic_series():
    rng = np.random.default_rng(2)
    period = np.sin(np.arange(7) * 1.3) + rng.normal(size=7)
    periodic = np.tile(period, 40)
    data = forecast_splits(periodic, context=21, horizon=9, season=7)
    exact = seasonal_naive_forecast(data.test, 7)
    assert exact["mse"] == pytest.approx(0, abs=1e-12) and exact["mae"] == pytest.approx(0, abs=1e-6)
    noisy = forecast_splits(periodic + rng.normal(size=periodic.size), context=21, horizon=9, season=7)
    got = seasonal_naive_forecast(noisy.val, 7)
    x, y = noisy.val.inputs.numpy().astype(np.float64), noisy.val.targets.numpy().astype(np.float64)
    pred = np.stack([[x[b, 21 - 7 + h % 7, 0] for h in range(9)] for b in range(len(x))])
    assert got["mse"] == pytest.approx(np.mean((pred - y) ** 2))
    assert got["mae"] == pytest.approx(np.mean(np.abs(pred - y))) and got["n"] == len(x)


# ---------------------------------------------------------------------------- real series
needs_pmdarima = pytest.mark.skipif(
    importlib.util.find_spec("pmdarima") is None, reason="pmdarima is not installed (pip install pmdarima)"
)


@needs_pmdarima
def test_taylor_electricity_demand():
    from pmdarima.datasets import load_taylor

    data = load_dataset("forecast")
    raw = load_taylor(as_series=False)
    assert raw.shape == (4032,)
    assert data.meta["periods"] == {"train": [0, 2903], "val": [2903, 3226], "test": [3226, 4032]}
    assert (len(data.train), len(data.val), len(data.test)) == (2903 - 384 + 1, 323 - 48 + 1, 806 - 48 + 1)
    assert data.spec.seq_len == 336 and data.spec.d_output == 48 and data.meta["season"] == 336
    mean, std = raw[:2903].mean(), raw[:2903].std()
    np.testing.assert_allclose(data.test.targets[-1].numpy(), (raw[-48:] - mean) / std, rtol=1e-5)
    baseline = data.meta["baseline"]
    assert baseline["test"] == pytest.approx({"season": 336, **seasonal_naive_forecast(data.test, 336)})
    # Weekly repetition forecasts electricity demand far better than predicting the mean (MSE 1).
    assert baseline["test"]["mse"] < 0.1 and baseline["val"]["mse"] < 0.1
    daily = load_dataset("forecast", context=96)
    assert daily.meta["season"] == 48
    with pytest.raises(ValueError, match="shorter than every season"):
        load_dataset("forecast", context=24)


@pytest.mark.skipif(importlib.util.find_spec("statsmodels") is None, reason="statsmodels is not installed")
def test_sunspots():
    data = load_dataset("forecast", series="sunspots")
    assert data.meta["periods"]["test"] == [247, 309] and data.meta["season"] == 11
    assert data.spec.seq_len == 44 and data.spec.d_output == 11
    with pytest.raises(ValueError, match="series must be one of"):
        load_dataset("forecast", series="co2")
    with pytest.raises(ValueError, match="take no root"):
        load_dataset("forecast", root="/tmp")
