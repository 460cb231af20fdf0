"""Plots of a run: training curves, state size over training, HSV spectra at each reduction, and
(with ``compress.track_every``) HSV trajectories over training and the stability of the state
ranking.

Every function takes plain data (metric rows, a :class:`~shrinkssm.compress.ReductionHistory`)
and writes one PNG. Figures are made with matplotlib's object-oriented API (``Figure``, no
``pyplot``), so no display is needed whatever backend the process has, and neither importing this
module nor plotting changes a global matplotlib setting.

Conventions shared by the three plots:

* Layer ``i`` has the same colour everywhere (:func:`layer_color`: the tab10 palette); the
  curves, which are of the whole model, are black (validation) and grey (training), and
  reduction points are dotted grey lines.
* Every axis says its unit. Losses are cross-entropies in nats (natural logarithm) for
  classification and language models, mean squared errors of the (standardised) targets for
  regression; time is the training wall-clock in seconds, validation excluded (the
  ``wall_seconds`` of ``metrics.jsonl``). State sizes are each layer's ``d_state`` on linear
  integer axes, labelled with its unit (LRU: complex states; selective: mean real states per
  channel).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import matplotlib
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from shrinkssm.compress.history import ReductionHistory
from shrinkssm.compress.tracking import ranking_stability
from shrinkssm.lti.gramians import rank_for_energy

__all__ = ["plot_training_curves", "plot_state_dims", "plot_hsv_spectra", "plot_hsv_tracks",
           "plot_ranking_stability", "plot_run", "track_taus", "layer_color", "loss_label", "metric_label",
           "TRACK_TAUS"]

TRACK_TAUS = (0.01, 0.02, 0.04)
"""The tolerances whose cuts the HSV-trajectory plots mark (the run's own ``tol`` is added)."""

_DPI = 110
_NICE = [1, 2, 2.5, 5, 10]          # integer tick steps: 0, 50, 100 rather than 0, 30, 60
_METRICS = {
    "accuracy": "accuracy (fraction correct)",
    "bits_per_char": "bits per character",
    "perplexity": "perplexity (per character)",
    "mse": "mean squared error",
    "rmse": "root mean squared error",
    "mae": "mean absolute error",
}


def layer_color(layer: int) -> tuple:
    """The colour of layer ``layer`` in every plot (tab10, cycling after 10 layers)."""
    return matplotlib.colormaps["tab10"](layer % 10)


def loss_label(rows: Sequence[dict]) -> str:
    """The loss axis label of a run, from what its ``metrics.jsonl`` rows hold."""
    keys = {k for r in rows for k in r}
    if keys & {"val_mse", "train_mse", "val_rmse"}:
        return "loss: mean squared error"
    if keys & {"val_bits_per_char", "train_bits_per_char"}:
        return "loss: cross-entropy (nats per character)"
    return "loss: cross-entropy (nats)"


def metric_label(metric: str) -> str:
    """``"accuracy"`` -> ``"accuracy (fraction correct)"``; unknown names are spelt out."""
    return _METRICS.get(metric, metric.replace("_", " "))


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI)
    return path


def _subplots(nrows: int = 1, ncols: int = 1, *, figsize, **kw):
    """A new figure and its axes (as ``pyplot.subplots``, without pyplot's global state)."""
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)            # this figure's own file-only canvas; the process's backend is untouched
    return fig, fig.subplots(nrows, ncols, **kw)


def _plain_numbers(ax) -> None:
    """A log y axis with ticks at 1, 2 and 5 times the powers of ten, labelled as plain numbers
    (0.2, 0.5, 1, 2: no 2x10^-1)."""
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def plot_training_curves(rows: Sequence[dict], path: str | os.PathLike, metric: str = "accuracy",
                         reduction_steps: Sequence[int] = ()) -> Path:
    """Loss and validation ``metric`` against steps (left) and training seconds (right).

    ``rows`` are ``metrics.jsonl`` records: ``step``, ``wall_seconds``, ``loss`` and, on
    evaluation rows, ``val_loss`` and ``val_<metric>``. Reduction steps are dotted lines. The loss
    axis is logarithmic only when the loss spans more than a factor of 10.
    """
    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if f"val_{metric}" in r]
    fig, axes = _subplots(2, 2, figsize=(10, 6.5), sharex="col", sharey="row")
    losses = [r["loss"] for r in train] + [r["val_loss"] for r in val if "val_loss" in r]
    positive = [v for v in losses if v > 0]
    log_loss = bool(positive) and len(positive) == len(losses) and max(positive) > 10 * min(positive)
    by_step = {r["step"]: r["wall_seconds"] for r in rows}
    for col, xkey, xlabel in ((0, "step", "step"),
                              (1, "wall_seconds", "training time (s, validation excluded)")):
        ax = axes[0, col]
        ax.plot([r[xkey] for r in train], [r["loss"] for r in train], color="0.55", lw=1,
                label="training (mean since last row)")
        if val:
            ax.plot([r[xkey] for r in val], [r["val_loss"] for r in val], "o-", color="k",
                    ms=3, lw=1.2, label="validation")
        if log_loss:
            ax.set_yscale("log")
            _plain_numbers(ax)
        ax = axes[1, col]
        if val:
            ax.plot([r[xkey] for r in val], [r[f"val_{metric}"] for r in val], "o-", color="k",
                    ms=3, lw=1.2)
        ax.set_xlabel(xlabel)
        for step in reduction_steps:
            x = step if col == 0 else by_step.get(step)
            if x is None:
                continue
            for row in range(2):
                axes[row, col].axvline(x, color="0.6", ls=":", lw=1)
    if reduction_steps:
        axes[0, 0].plot([], [], color="0.6", ls=":", lw=1, label="reduction point")
    axes[0, 0].set_ylabel(loss_label(rows))
    axes[1, 0].set_ylabel(f"validation {metric_label(metric)}")
    axes[0, 0].legend(loc="upper right", fontsize=8)
    axes[0, 0].set_title("against steps")
    axes[0, 1].set_title("against training time")
    if len(val) <= 1:
        axes[1, 0].text(0.5, 0.5, "one validation point: lower train.eval_every for a curve",
                        transform=axes[1, 0].transAxes, ha="center", fontsize=8, color="0.4")
    return _save(fig, path)


def plot_state_dims(history: ReductionHistory, initial: Sequence[int], total_steps: int,
                    path: str | os.PathLike, unit: str = "complex states") -> Path:
    """State size (``d_state``, in ``unit``) of every layer against step: a staircase per layer on
    a linear integer axis.

    The x axis covers the reduction points with some room after the last one (they sit in the
    first part of training); the state sizes hold from there to ``total_steps``, which the plot
    says. With several layers the total is given in the title.
    """
    points = history.state_dims(list(initial))
    last = points[-1][0]
    end = total_steps if last == 0 or last > 0.6 * total_steps else min(total_steps, round(last * 1.6))
    steps = [s for s, _ in points] + [end]
    fig, ax = _subplots(figsize=(7, 4))
    n = len(initial)
    for layer in range(n):
        dims = [d[layer] for _, d in points]
        width = 1.6 + 2.4 * (n - 1 - layer) / max(1, n - 1)   # equal sizes: both colours show
        ax.step(steps, dims + dims[-1:], where="post", color=layer_color(layer), lw=width,
                zorder=2 + layer, label=f"layer {layer}: {dims[0]} \u2192 {dims[-1]}")
        ax.plot([s for s, _ in points[1:]], dims[1:], "o", color=layer_color(layer),
                ms=2.5 + width, zorder=2 + layer)
    ax.set_xlim(0, end)
    ax.set_ylim(0, max(max(initial, default=1), 1) * 1.08)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True, steps=_NICE))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=_NICE))
    xlabel = "step"
    if end < total_steps:
        xlabel += f" (sizes stay as at step {last} until the end of training, step {total_steps:,})"
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"state size d_state ({unit})")
    ax.legend(fontsize=8, loc="upper right")
    title = "state size over training"
    if len(initial) > 1:
        title += f" (total {sum(points[0][1])} \u2192 {sum(points[-1][1])})"
    ax.set_title(title)
    return _save(fig, path)


def _shade(color: tuple, t: float) -> tuple:
    """``color`` mixed with white: ``t`` = 0 light, 1 the full colour."""
    mix = 0.3 + 0.7 * t
    return tuple(1 - mix * (1 - c) for c in color[:3])


def plot_hsv_spectra(history: ReductionHistory, path: str | os.PathLike) -> Path:
    """HSVs (normalised by the largest) of each layer at each reduction point, the cut marked.

    One panel per layer in the layer's colour, light (first point) to full (last point); a
    dashed line marks the kept size where a layer was reduced.
    """
    n_layers = max((len(e.layers) for e in history), default=1)
    cols = min(n_layers, 3)
    rows = -(-n_layers // cols)
    width = {1: 7.0, 2: 5.0}.get(cols, 4.3)
    fig, axes = _subplots(rows, cols, figsize=(width * cols, 4.3 * rows), squeeze=False)
    n_events = len(history)
    smallest: dict[int, float] = {}
    for k, event in enumerate(history):
        t = k / max(1, n_events - 1)
        for le in event.layers:
            ax = axes[le.layer // cols, le.layer % cols]
            color = _shade(layer_color(le.layer), t) if n_events > 1 else layer_color(le.layer)
            top = le.hsv[0] if le.hsv and le.hsv[0] > 0 else 1.0
            hsv = [max(h / top, 1e-16) for h in le.hsv]
            smallest[le.layer] = min([smallest.get(le.layer, 1.0)] + hsv)
            change = f"{le.old} \u2192 {le.new}" if le.new < le.old else f"{le.old} kept"
            ax.semilogy(range(1, len(hsv) + 1), hsv, color=color, lw=1.3,
                        label=f"step {event.step}: {change}")
            if le.new < le.old:
                ax.axvline(le.new + 0.5, color=color, ls="--", lw=0.9)
    for index in range(rows * cols):
        ax = axes[index // cols, index % cols]
        if index >= n_layers:
            ax.axis("off")
            continue
        ax.set_title(f"layer {index}", color=layer_color(index))
        ax.set_xlabel("state index, largest first (dashed: states kept)")
        ax.set_ylabel("\u03c3\u1d62 / \u03c3\u2081 (Hankel singular value, relative)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=_NICE))
        ax.set_xlim(left=0)
        # whole decades, so that the axis has labelled powers of ten and no 6x10^-1 labels
        ax.set_ylim(10.0 ** math.floor(math.log10(smallest.get(index, 0.1))), 1.5)
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.legend(fontsize=8, loc="upper right")
    fig.suptitle("Hankel singular values at each reduction point")
    return _save(fig, path)


def _track_layers(track: Sequence[dict]) -> list[int]:
    return sorted({e["layer"] for row in track for e in row["layers"]})


def _size_changes(track: Sequence[dict], layer: int) -> list[int]:
    """Steps of the tracked rows at which ``layer`` has a smaller size than at the row before."""
    sizes = [(row["step"], e["d_state"]) for row in track for e in row["layers"] if e["layer"] == layer]
    return [s for (s, n), (_, m) in zip(sizes[1:], sizes) if n < m]


def _tau_styles(taus: Sequence[float]) -> dict[float, tuple]:
    shades = matplotlib.colormaps["Greys"]
    n = len(taus)
    return {tau: (shades(0.45 + 0.5 * i / max(1, n - 1)), ("--", "-.", ":", (0, (5, 1)))[i % 4])
            for i, tau in enumerate(sorted(taus))}


def track_taus(config) -> tuple[float, ...]:
    """The tolerances marked in a run's HSV-trajectory plots: :data:`TRACK_TAUS` and the run's
    own ``compress.tol`` when it compresses by tolerance (``config``: a RunConfig)."""
    taus = set(TRACK_TAUS)
    if config.compress.mode == "tolerance" and config.compress.tol > 0:
        taus.add(float(config.compress.tol))
    return tuple(sorted(taus))


def plot_hsv_tracks(track: Sequence[dict], path: str | os.PathLike,
                    taus: Sequence[float] = TRACK_TAUS) -> Path:
    """The HSVs of every layer against step (log scale), from ``hsv_track.jsonl`` rows.

    One panel per layer: the ``i``-th largest HSV over training, one thin line per ``i`` (light:
    the largest, dark: the smallest), and for each ``tau`` the cut -- the smallest HSV that the
    energy rule with ``tau`` keeps, ``sigma_r`` with ``r = rank_for_energy(hsv, tau)`` -- as a
    grey line whose label gives ``r`` at the last point. Dotted lines: a reduction between two
    points (the layer is smaller at the later one).
    """
    layers = _track_layers(track) or [0]
    cols = min(len(layers), 3)
    rows_ = -(-len(layers) // cols)
    fig, axes = _subplots(rows_, cols, figsize=(6.5 * cols, 4.3 * rows_), squeeze=False)
    styles = _tau_styles(taus)
    for k, layer in enumerate(layers):
        ax = axes[k // cols, k % cols]
        points = [(row["step"], e["hsv"]) for row in track for e in row["layers"]
                  if e["layer"] == layer and e.get("hsv")]
        width = max((len(h) for _, h in points), default=0)
        cmap = matplotlib.colormaps["viridis_r"]
        for i in range(width):
            xs = [s for s, h in points if len(h) > i and h[i] > 0]
            ys = [h[i] for s, h in points if len(h) > i and h[i] > 0]
            ax.plot(xs, ys, color=cmap(i / max(1, width - 1)), lw=0.6, alpha=0.8)
        for tau, (color, ls) in styles.items():
            ranks = [rank_for_energy(torch.tensor(h, dtype=torch.float64), tau) for _, h in points]
            cuts = [(s, h[r - 1], r) for (s, h), r in zip(points, ranks)]
            if cuts:
                ax.plot([c[0] for c in cuts], [max(c[1], 1e-300) for c in cuts], color=color,
                        ls=ls, lw=2.0, label=f"cut of \u03c4 = {tau:g} (keeps {cuts[-1][2]} at the end)")
        for step in _size_changes(track, layer):
            ax.axvline(step, color="0.6", ls=":", lw=1)
        if points:
            ax.set_yscale("log")
        ax.set_title(f"layer {layer}", color=layer_color(layer))
        ax.set_xlabel("step")
        ax.set_ylabel("Hankel singular value \u03c3\u1d62 (one line per rank i)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=_NICE))
        ax.legend(fontsize=8, loc="lower left")
    for index in range(len(layers), rows_ * cols):
        axes[index // cols, index % cols].axis("off")
    fig.suptitle("Hankel singular values over training (light: largest; dotted: a reduction)")
    return _save(fig, path)


def plot_ranking_stability(track: Sequence[dict], path: str | os.PathLike,
                           taus: Sequence[float] = TRACK_TAUS) -> Path:
    """How stable the ranking of the states is: for each ``tau``, the overlap of the top-r state
    sets (``r`` the states the energy rule with ``tau`` keeps) between consecutive tracked points
    (:func:`shrinkssm.compress.tracking.ranking_stability`), against the later point's step.

    1 means the same states would be kept; points across a reduction are not compared (dotted
    lines mark them). A layer without per-state energies (selective) shows a note instead.
    """
    layers = _track_layers(track) or [0]
    fig, axes = _subplots(len(layers), 1, figsize=(7.5, 3.4 * len(layers)), squeeze=False)
    styles = _tau_styles(taus)
    for k, layer in enumerate(layers):
        ax = axes[k, 0]
        drawn = False
        for tau, (color, ls) in styles.items():
            points = ranking_stability(track, layer, tau)
            if points:
                drawn = True
                ax.plot([p[0] for p in points], [p[2] for p in points], "o", color=color, ls=ls,
                        ms=3, lw=1.4, label=f"\u03c4 = {tau:g} (top {points[-1][1]} at the end)")
        for step in _size_changes(track, layer):
            ax.axvline(step, color="0.6", ls=":", lw=1)
        if not drawn:
            ax.text(0.5, 0.5, "no comparable consecutive points (per-state energies needed)",
                    transform=ax.transAxes, ha="center", fontsize=8, color="0.4")
        ax.set_ylim(0, 1.04)
        ax.set_title(f"layer {layer}", color=layer_color(layer))
        ax.set_xlabel("step (the later of two consecutive tracked points)")
        ax.set_ylabel("overlap of the top-r state sets\n(fraction shared)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=_NICE))
        if drawn:
            ax.legend(fontsize=8, loc="lower right")
    fig.suptitle("Stability of the state ranking between consecutive points")
    return _save(fig, path)


def plot_run(rows: Sequence[dict], history: ReductionHistory, initial: Sequence[int],
             total_steps: int, out_dir: str | os.PathLike, metric: str = "accuracy",
             unit: str = "complex states", track: Sequence[dict] = (),
             taus: Sequence[float] = TRACK_TAUS) -> list[Path]:
    """All plots of a run into ``out_dir``; returns the files written. ``initial`` and the
    history's sizes are ``d_state`` values in ``unit`` (the layers' ``D_STATE_UNIT``); ``track``:
    the rows of ``hsv_track.jsonl`` (HSV trajectories and ranking stability, marked for ``taus``)."""
    out_dir = Path(out_dir)
    steps = [e.step for e in history if any(le.new < le.old for le in e.layers)]
    written = [plot_training_curves(rows, out_dir / "curves.png", metric, steps),
               plot_state_dims(history, initial, total_steps, out_dir / "state_dims.png", unit)]
    if len(history):
        written.append(plot_hsv_spectra(history, out_dir / "hsv_spectra.png"))
    if track:
        written.append(plot_hsv_tracks(track, out_dir / "hsv_tracks.png", taus))
        written.append(plot_ranking_stability(track, out_dir / "hsv_stability.png", taus))
    return written
