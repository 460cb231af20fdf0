"""Plots of a run: training curves, state size over training, HSV spectra at each reduction.

Every function takes plain data (metric rows, a :class:`~shrinkssm.compress.ReductionHistory`)
and writes one PNG; matplotlib runs on its file-only "Agg" backend, so no display is needed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from shrinkssm.compress.history import ReductionHistory  # noqa: E402

__all__ = ["plot_training_curves", "plot_state_dims", "plot_hsv_spectra", "plot_run"]


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_training_curves(rows: Sequence[dict], path: str | os.PathLike, metric: str = "accuracy",
                         reduction_steps: Sequence[int] = ()) -> Path:
    """Loss and validation ``metric`` against steps (left) and wall-clock seconds (right).

    ``rows`` are ``metrics.jsonl`` records: ``step``, ``wall_seconds``, ``loss`` and, on
    evaluation rows, ``val_loss`` and ``val_<metric>``. Reduction steps are marked.
    """
    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if f"val_{metric}" in r]
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5), sharey="row")
    for col, xkey, xlabel in ((0, "step", "step"), (1, "wall_seconds", "wall-clock seconds")):
        ax = axes[0, col]
        ax.plot([r[xkey] for r in train], [r["loss"] for r in train], lw=1, label="train")
        if val:
            ax.plot([r[xkey] for r in val], [r["val_loss"] for r in val], "o-", ms=3, label="val")
        ax.set_yscale("log")
        ax.set_ylabel("loss")
        ax.legend(loc="upper right")
        ax = axes[1, col]
        if val:
            ax.plot([r[xkey] for r in val], [r[f"val_{metric}"] for r in val], "o-", ms=3,
                    color="C1")
        ax.set_ylabel(f"validation {metric}")
        ax.set_xlabel(xlabel)
    by_step = {r["step"]: r["wall_seconds"] for r in rows}
    for step in reduction_steps:
        for row in range(2):
            axes[row, 0].axvline(step, color="grey", ls=":", lw=0.8)
            if step in by_step:
                axes[row, 1].axvline(by_step[step], color="grey", ls=":", lw=0.8)
    axes[0, 0].set_title("against steps (dotted: reductions)")
    axes[0, 1].set_title("against wall-clock time")
    return _save(fig, path)


def plot_state_dims(history: ReductionHistory, initial: Sequence[int], total_steps: int,
                    path: str | os.PathLike) -> Path:
    """Per-layer state size against step: a staircase per layer, and the total."""
    points = history.state_dims(list(initial))
    steps = [s for s, _ in points] + [total_steps]
    fig, ax = plt.subplots(figsize=(7, 4))
    for layer in range(len(initial)):
        dims = [d[layer] for _, d in points]
        ax.step(steps, dims + dims[-1:], where="post", label=f"layer {layer}")
    if len(initial) > 1:
        totals = [sum(d) for _, d in points]
        ax.step(steps, totals + totals[-1:], where="post", color="k", lw=2, label="total")
    ax.set_xlabel("step")
    ax.set_ylabel("state size (complex states)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title("state size over training")
    return _save(fig, path)


def plot_hsv_spectra(history: ReductionHistory, path: str | os.PathLike) -> Path:
    """HSVs (normalised by the largest) of each layer at each reduction point, cut marked."""
    n_layers = max((len(e.layers) for e in history), default=1)
    cols = min(n_layers, 3)
    rows = -(-n_layers // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.5 * rows), squeeze=False)
    colors = plt.cm.viridis([i / max(1, len(history) - 1) for i in range(len(history))])
    for event, color in zip(history, colors):
        for le in event.layers:
            ax = axes[le.layer // cols, le.layer % cols]
            hsv = [h / le.hsv[0] if le.hsv and le.hsv[0] > 0 else 0.0 for h in le.hsv]
            ax.semilogy(range(1, len(hsv) + 1), [max(h, 1e-16) for h in hsv], color=color,
                        lw=1, label=f"step {event.step}: {le.old}\u2192{le.new}")
            if le.new < le.old:
                ax.axvline(le.new + 0.5, color=color, ls="--", lw=0.8)
    for index in range(rows * cols):
        ax = axes[index // cols, index % cols]
        if index >= n_layers:
            ax.axis("off")
            continue
        ax.set_title(f"layer {index}")
        ax.set_xlabel("index (dashed: kept rank)")
        ax.set_ylabel("\u03c3 / \u03c3\u2081")
        ax.legend(fontsize=7)
    fig.suptitle("Hankel singular values at each reduction point")
    return _save(fig, path)


def plot_run(rows: Sequence[dict], history: ReductionHistory, initial: Sequence[int],
             total_steps: int, out_dir: str | os.PathLike, metric: str = "accuracy") -> list[Path]:
    """All plots of a run into ``out_dir``; returns the files written."""
    out_dir = Path(out_dir)
    steps = [e.step for e in history if any(le.new < le.old for le in e.layers)]
    written = [plot_training_curves(rows, out_dir / "curves.png", metric, steps),
               plot_state_dims(history, initial, total_steps, out_dir / "state_dims.png")]
    if len(history):
        written.append(plot_hsv_spectra(history, out_dir / "hsv_spectra.png"))
    return written
