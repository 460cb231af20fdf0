"""Forecasting a real series: windows of past values -> the next ``horizon`` values.

Series (each ships inside a package; nothing is downloaded):

* ``taylor`` (default): half-hourly electricity demand of England and Wales, 5 June - 27 August
  2000, 4,032 values (Taylor, J. Oper. Res. Soc. 2003), from ``pmdarima`` (``pip install
  pmdarima``; brings statsmodels, about 75 MB). Daily season 48, weekly season 336.
* ``sunspots``: yearly sunspot numbers 1700-2008, 309 values, from ``statsmodels``; season 11.

Splits are chronological, with no overlap of targets: the last ``test_fraction`` of the series is
the test period, the last ``val_fraction`` of what precedes it the validation period, the rest
the training period. A window whose first target step is ``s`` has inputs ``series[s - context :
s]`` and targets ``series[s : s + horizon]``; a window belongs to the period that holds all its
targets (``s`` steps by ``stride``). Training windows lie wholly in the training period; a
validation or test window may read its context from earlier periods (values that are known at
forecast time), never a target of a later one. Values are standardised with the mean and
standard deviation of the training period only; MSE and MAE are in these standardised units.

Layout (direct multi-horizon forecasting, one head call per window):

* inputs ``x``: ``(num, context, D) float32``, the context window (``D`` = 1 for these series);
* targets ``y``: ``(num, horizon * D) float32``, step-major: ``y.view(num, horizon, D)[:, h]`` is
  the value ``h + 1`` steps after the last input step.

The model reads the whole context and emits ``horizon * D`` numbers per sequence from its final
representation (``TaskSpec``: ``kind="regression"``, ``d_output = horizon * D``,
``per_step=False``, metric ``"mse"``); pooling the *last* step ("last" pooling) is the natural
choice for a causal model. The reference to beat is :func:`seasonal_naive_forecast`, which repeats
the last observed season, in the same units.
"""

from __future__ import annotations

import functools
import importlib.util

import numpy as np
import torch

from shrinkssm._checks import check_choice

from ._common import check_fraction, check_int
from .sequence import SequenceData
from .splits import DataSplits, TaskSpec

__all__ = [
    "SERIES",
    "forecast_splits",
    "load_forecast",
    "load_series",
    "seasonal_naive_forecast",
    "seasonal_naive_predictions",
]

SERIES = {
    "taylor": {"package": "pmdarima", "seasons": (336, 48), "context": 336, "horizon": 48,
               "description": "half-hourly electricity demand, England and Wales 2000 (pmdarima)"},
    "sunspots": {"package": "statsmodels", "seasons": (11,), "context": 44, "horizon": 11,
                 "description": "yearly sunspot numbers 1700-2008 (statsmodels sunspots)"},
}  # fmt: skip
"""Per series: the package shipping it, its natural seasons (longest first), default window lengths."""

INSTALL = "pip install pmdarima (series 'taylor'; it brings statsmodels, which ships 'sunspots')"


@functools.lru_cache(maxsize=4)
def _cached_series(name: str) -> np.ndarray:
    if name == "taylor":
        try:
            from pmdarima.datasets import load_taylor
        except ImportError as exc:
            raise ImportError(f"series 'taylor' needs pmdarima: {INSTALL}") from exc
        values = np.asarray(load_taylor(as_series=False), dtype=np.float64)
    else:  # sunspots
        try:
            from statsmodels.datasets import sunspots
        except ImportError as exc:
            raise ImportError(
                f"series 'sunspots' needs statsmodels: pip install statsmodels ({INSTALL})"
            ) from exc
        values = np.asarray(sunspots.load_pandas().data["SUNACTIVITY"], dtype=np.float64)
    values = values.reshape(-1, 1)
    values.flags.writeable = False
    return values


def load_series(name: str) -> np.ndarray:
    """The raw series ``name`` as a read-only ``(T, D) float64`` array (see :data:`SERIES`)."""
    check_choice("series", name, tuple(SERIES))
    values = _cached_series(name)
    if not np.isfinite(values).all():
        raise ValueError(f"series {name!r} holds non-finite values")
    return values


def series_installed() -> bool:
    """Whether the default series (``taylor``: pmdarima) is importable."""
    return importlib.util.find_spec("pmdarima") is not None


def _windows(
    values: np.ndarray, starts: np.ndarray, context: int, horizon: int
) -> tuple[np.ndarray, np.ndarray]:
    """Inputs ``(n, context, D)`` and step-major targets ``(n, horizon * D)``, first targets at ``starts``."""
    x = np.stack([values[s - context : s] for s in starts])
    y = np.stack([values[s : s + horizon].reshape(-1) for s in starts])
    return x, y


def forecast_splits(
    series: np.ndarray,
    *,
    context: int,
    horizon: int,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    stride: int = 1,
    season: int | None = None,
    name: str = "forecast",
    meta: dict | None = None,
) -> DataSplits:
    """Cut a series into chronological train / val / test windows (see the module docstring).

    Parameters
    ----------
    series : numpy.ndarray
        ``(T,)`` or ``(T, D)`` finite values, oldest first.
    context, horizon : int
        Input and target window lengths.
    val_fraction : float
        Fraction of the pre-test part held out (its end) for validation, in ``[0, 1)``.
    test_fraction : float
        Fraction of the series (its end) for the test period, in ``(0, 1)``.
    stride : int
        Steps between the first targets of consecutive windows (every split).
    season : int, optional
        Recorded in ``meta["season"]`` for :func:`seasonal_naive_forecast`; must be ``<= context``.
    name : str
        Spec name.
    meta : dict, optional
        Extra entries for ``meta``.

    Returns
    -------
    DataSplits
        See the module docstring for shapes. ``meta`` holds ``mean`` / ``std`` (training period),
        ``periods`` (``[start, stop)`` of each period), ``context``, ``horizon``, ``season``.

    Raises
    ------
    ValueError
        Bad arguments, non-finite values, or a period too short for one window (the message gives
        the period lengths).
    """
    values = np.asarray(series, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2 or not np.isfinite(values).all():
        raise ValueError(f"series must be finite (T,) or (T, D) values, got shape {values.shape}")
    for value, what, low in ((context, "context", 1), (horizon, "horizon", 1), (stride, "stride", 1)):
        check_int(value, what, low)
    check_int(season, "season", 1, allow_none=True)
    if season is not None and season > context:
        raise ValueError(f"season={season} must be <= context={context} for the seasonal-naive baseline")
    val_fraction = check_fraction(val_fraction, "val_fraction")
    test_fraction = check_fraction(test_fraction, "test_fraction", open_low=True)
    total = values.shape[0]
    test_start = total - int(round(test_fraction * total))
    val_start = test_start - int(round(val_fraction * test_start))
    periods = {"train": (0, val_start), "val": (val_start, test_start), "test": (test_start, total)}
    mean = values[:val_start].mean(axis=0) if val_start else np.zeros(values.shape[1])
    std = values[:val_start].std(axis=0) if val_start else np.ones(values.shape[1])
    std = np.where(std > 0, std, 1.0)
    scaled = (values - mean) / std
    splits = {}
    for split, (start, stop) in periods.items():
        first = max(start, context)
        starts = np.arange(first, stop - horizon + 1, stride)
        if split == "val" and val_fraction == 0:
            starts = starts[:0]
        if starts.size == 0 and not (split == "val" and val_fraction == 0):
            raise ValueError(
                f"the {split} period [{start}, {stop}) of the {total}-step series holds no window of "
                f"context {context} + horizon {horizon}; periods: {periods}"
            )
        if starts.size == 0:  # val_fraction = 0: an empty validation split
            x = np.zeros((0, context, values.shape[1]))
            y = np.zeros((0, horizon * values.shape[1]))
        else:
            x, y = _windows(scaled, starts, context, horizon)
        splits[split] = SequenceData(x.astype(np.float32), y.astype(np.float32))
    spec = TaskSpec(
        kind="regression", d_input=values.shape[1], seq_len=context, d_output=horizon * values.shape[1],
        metric="mse", per_step=False, name=name,
    )  # fmt: skip
    record = dict(meta or {})
    record.update(
        name=name, context=context, horizon=horizon, stride=stride, season=season,
        mean=mean.tolist(), std=std.tolist(), periods={k: list(v) for k, v in periods.items()},
        val_fraction=val_fraction, test_fraction=test_fraction,
        target_layout="(num, horizon * D), step-major: y.view(num, horizon, D)[:, h] is h+1 steps ahead",
        units="standardised with the training period's mean and std",
        sizes={s: len(d) for s, d in splits.items()},
    )  # fmt: skip
    return DataSplits(splits["train"], splits["val"], splits["test"], spec, record)


def seasonal_naive_predictions(x: torch.Tensor, season: int, horizon: int) -> torch.Tensor:
    """Repeat the last observed season: ``pred[:, h] = x[:, L - season + (h mod season)]``.

    Parameters
    ----------
    x : torch.Tensor
        ``(B, L, D)`` context windows.
    season : int
        ``1 <= season <= L`` (1: the naive "last value" forecast).
    horizon : int
        Steps to forecast.

    Returns
    -------
    torch.Tensor
        ``(B, horizon * D)``, step-major as the targets.
    """
    if x.ndim != 3:
        raise ValueError(f"x must be (B, L, D), got shape {tuple(x.shape)}")
    check_int(season, "season", 1)
    check_int(horizon, "horizon", 1)
    length = x.shape[1]
    if season > length:
        raise ValueError(f"season={season} is longer than the context L={length}")
    index = length - season + torch.arange(horizon) % season  # (horizon,)
    return x[:, index, :].reshape(x.shape[0], -1)


def seasonal_naive_forecast(split: SequenceData, season: int) -> dict[str, float]:
    """MSE and MAE of the seasonal-naive forecast on a split, in the split's (standardised) units.

    Parameters
    ----------
    split : SequenceData
        A forecasting split: inputs ``(num, L, D)``, targets ``(num, horizon * D)``.
    season : int
        Season length in steps (``meta["season"]`` of :func:`load_forecast`), ``<= L``.

    Returns
    -------
    dict
        ``{"mse": float, "mae": float, "n": num}``, averaged over windows, steps and channels.
    """
    x = split.inputs.to(torch.float64)
    y = split.targets.to(torch.float64)
    if x.ndim != 3 or y.ndim != 2 or y.shape[1] % x.shape[2]:
        raise ValueError(
            "expected inputs (num, L, D) and targets (num, horizon * D), "
            f"got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if len(split) == 0:
        raise ValueError("the split is empty")
    pred = seasonal_naive_predictions(x, season, y.shape[1] // x.shape[2])
    error = pred - y
    return {"mse": float((error**2).mean()), "mae": float(error.abs().mean()), "n": len(split)}


def load_forecast(
    root: None = None,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    series: str = "taylor",
    context: int | None = None,
    horizon: int | None = None,
    stride: int = 1,
    test_fraction: float = 0.2,
    season: int | None = None,
) -> DataSplits:
    """Forecasting windows of a packaged real series (see the module docstring).

    Parameters
    ----------
    root : None
        The series ship inside packages: no root.
    val_fraction : float
        Fraction of the pre-test part (its end) for validation.
    seed : int
        Unused (the splits are chronological); accepted for the common loader interface.
    series : str
        ``"taylor"`` (default) or ``"sunspots"``.
    context, horizon : int, optional
        Window lengths; defaults per series (taylor: 336 = one week, 48 = one day; sunspots: 44, 11).
    stride : int
        Steps between consecutive windows.
    test_fraction : float
        Fraction of the series (its end) for testing.
    season : int, optional
        Season of the baseline, ``<= context``; default: the longest natural season of the series
        that fits the context (taylor: 336 = one week, else 48 = one day; sunspots: 11).

    Returns
    -------
    DataSplits
        With ``meta["season"]`` and ``meta["baseline"]``, the seasonal-naive MSE / MAE on val and
        test (:func:`seasonal_naive_forecast`).
    """
    if root is not None:
        raise ValueError("'forecast' series ship inside packages and take no root")
    check_choice("series", series, tuple(SERIES))
    defaults = SERIES[series]
    context = defaults["context"] if context is None else context
    horizon = defaults["horizon"] if horizon is None else horizon
    check_int(context, "context", 1)
    if season is None:
        fitting = [m for m in defaults["seasons"] if m <= context]
        if not fitting:
            raise ValueError(
                f"context={context} is shorter than every season {defaults['seasons']} of {series!r}; "
                "pass season=<steps> for the baseline"
            )
        season = fitting[0]
    data = forecast_splits(
        load_series(series), context=context, horizon=horizon, val_fraction=val_fraction,
        test_fraction=test_fraction, stride=stride, season=season, name="forecast",
        meta={"series": series, "source": defaults["description"], "seed": seed},
    )  # fmt: skip
    data.meta["baseline"] = {
        split: {"season": season, **seasonal_naive_forecast(getattr(data, split), season)}
        for split in ("val", "test")
        if len(getattr(data, split))
    }
    return data
