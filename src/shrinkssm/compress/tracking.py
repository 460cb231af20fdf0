"""HSVs tracked between reductions: every layer's Hankel singular values every K steps.

``compress.track_every=K`` makes the trainer call :meth:`HSVTracker.record` after every K-th
optimizer step (before the compressor acts at that step, so at a reduction point the row holds the
HSVs the reduction was decided on). Nothing is reduced; the published code has this as
``hsv_interval``. The paper's case for reducing early rests on the ranking of the states settling
early in training; :func:`ranking_stability` measures that from the rows.

One row per recorded step, one JSON object per line in ``<run_dir>/hsv_track.jsonl``::

    {"step": 2000, "seconds": 0.08,
     "layers": [{"layer": 0, "d_state": 256, "hsv": [...], "state_energy": [...]}, ...]}

* ``hsv``: the layer's HSVs, float64, descending (LRU: ``N`` values in ``output="complex"``, ``2N``
  in ``"real"``; selective: every channel's surrogate HSVs pooled and sorted);
* ``state_energy``: LRU only, ``(N,)`` float64: the Hankel energy attributed to each stored state
  slot ``j``, ``e[j] = sum_k sigma_k |T[j, k] T^-[k, j]|`` with ``T``, ``T^-`` the full balancing
  transforms of the complex view (:func:`shrinkssm.lti.balancing.coordinate_energy`); it ranks the
  states themselves, which the sorted HSVs cannot. Slot ``j`` is the same mode (the same
  parameters) until the next reduction re-diagonalises the layer; ``null`` for selective layers;
* ``seconds``: what the measurement took (kept out of the training time).

**Resume-safe.** Rows are appended, one ``write`` per line (a line torn by a crash is skipped
when read). On resume from a checkpoint of step ``s`` the file is cut back to the rows with
``step <= s`` before training continues, so the steps after ``s`` are recorded once, from the
resumed run (which computes the same values). :func:`read_track` also keeps only the last row of
any step.

Which HSVs a layer kind reports is decided in one place, :func:`layer_hsvs`.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from shrinkssm import lti
from shrinkssm.lti.balancing import coordinate_energy, square_root
from shrinkssm.nn.shrinkable import shrinkable_layers

__all__ = ["TRACK_FILE", "LayerHSVs", "layer_hsvs", "HSVTracker", "read_track", "top_overlap",
           "ranking_stability"]

TRACK_FILE = "hsv_track.jsonl"
"""The file name of the tracked HSVs inside a run directory."""


@dataclass
class LayerHSVs:
    """What :func:`layer_hsvs` measures of one layer.

    ``hsv``: (n,) float64, descending. ``state_energy``: (N,) float64 per stored state slot, or
    None where the layer kind has no per-state attribution.
    """

    hsv: np.ndarray
    state_energy: np.ndarray | None


def layer_hsvs(layer: nn.Module, output: str = "complex") -> LayerHSVs:
    """The HSVs of one SSM layer, asked of the layer in the way its kind supports.

    The only place that knows the layer kinds: an LRU (anything with ``system()``) is measured
    through :func:`shrinkssm.lti.hankel_singular_values` of its system, as the compressor does,
    plus the per-state energy of the module docstring; a selective layer reports its surrogate's
    per-channel HSVs (``hankel_singular_values()``), pooled and sorted, and nothing before it has
    surrogate statistics (an empty array).

    Raises ``ValueError`` for a layer that is not stable (as the compressor's measurement does).
    """
    if hasattr(layer, "system"):
        sys = layer.system()
        hsv = lti.hankel_singular_values(sys, output=output).double().cpu().numpy()
        exact = lti.DiagonalSystem(sys.lam.to(torch.complex128), sys.B.to(torch.complex128),
                                   sys.C.to(torch.complex128), sys.D.double())
        P, Q = lti.gramians(exact, output="complex")
        energy = coordinate_energy(square_root(P.cpu().numpy(), Q.cpu().numpy()))
        return LayerHSVs(hsv, np.asarray(energy, dtype=np.float64))
    if hasattr(layer, "hankel_singular_values") and hasattr(layer, "has_surrogate"):
        if not layer.has_surrogate():
            return LayerHSVs(np.zeros(0), None)
        per_channel = [h.double().cpu().numpy() for h in layer.hankel_singular_values()]
        return LayerHSVs(np.sort(np.concatenate(per_channel))[::-1].copy(), None)
    raise TypeError(f"{type(layer).__name__} reports no Hankel singular values")


def _ssm_layers(model: nn.Module) -> list[nn.Module]:
    """The layers the compressor reduces (:func:`shrinkssm.nn.shrinkable.shrinkable_layers`)."""
    return shrinkable_layers(model)


class HSVTracker:
    """Record every layer's HSVs every ``every`` steps into ``path`` (one JSON row per step).

    Parameters
    ----------
    every : int
        Record after optimizer steps ``every, 2 every, ...`` (>= 1).
    path : path or None
        The ``hsv_track.jsonl`` to append to; None keeps the rows in memory only (``rows``).
    output : {"complex", "real"}
        The view of the LRU's HSVs (``compress.output``).
    resume_step : int, optional
        Continuing a run from a checkpoint of this step: rows after it are dropped from ``path``
        first. None starts ``path`` empty.
    """

    def __init__(self, every: int, path: str | os.PathLike | None = None, *,
                 output: str = "complex", resume_step: int | None = None) -> None:
        if int(every) < 1:
            raise ValueError(f"track_every must be >= 1, got {every}")
        self.every, self.output = int(every), output
        self.rows: list[dict] = []
        self._log = None
        if path is not None:
            from shrinkssm.train.metrics_log import MetricsLog   # atomic cut-back, appends

            self._log = MetricsLog(Path(path), resume_step=resume_step)

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def record(self, step: int, model: nn.Module) -> dict:
        """Measure every SSM layer of ``model`` now and append the row (returned too). A layer
        that cannot be measured (not stable) gets an empty ``hsv`` and a ``note``."""
        t0 = time.perf_counter()
        layers = []
        for index, layer in enumerate(_ssm_layers(model)):
            entry = {"layer": index, "d_state": int(layer.d_state)}
            try:
                measured = layer_hsvs(layer, self.output)
            except ValueError as exc:
                entry.update(hsv=[], state_energy=None, note=str(exc))
            else:
                entry["hsv"] = measured.hsv.tolist()
                entry["state_energy"] = (None if measured.state_energy is None
                                         else measured.state_energy.tolist())
            layers.append(entry)
        row = {"step": int(step), "seconds": round(time.perf_counter() - t0, 6), "layers": layers}
        self.rows.append(row)
        if self._log is not None:
            self._log.write(row)
        return row

    def close(self) -> None:
        if self._log is not None:
            self._log.close()


def read_track(path: str | os.PathLike) -> list[dict]:
    """The rows of an ``hsv_track.jsonl`` by step (a torn last line skipped; of two rows of one
    step, the later); [] if there is no file."""
    from shrinkssm.train.metrics_log import read_metrics

    by_step = {}
    for row in read_metrics(path):
        if isinstance(row, dict) and "step" in row and "layers" in row:
            by_step[int(row["step"])] = row
    return [by_step[s] for s in sorted(by_step)]


def top_overlap(a: Sequence[float], b: Sequence[float], r: int) -> float:
    """``|top_r(a) & top_r(b)| / r``: the share of the ``r`` highest-scoring indices of ``a``
    that are also among the ``r`` highest of ``b`` (ties: the lower index ranks first).

    ``a`` and ``b`` score the same items (same length); ``1 <= r <= len(a)``. 1.0 means the same
    set, 0.0 disjoint sets.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"scores must be two 1-D sequences of one length, got {a.shape} and {b.shape}")
    if not 1 <= r <= a.size:
        raise ValueError(f"r must lie in [1, {a.size}], got {r}")
    top_a = set(np.argsort(-a, kind="stable")[:r].tolist())
    top_b = set(np.argsort(-b, kind="stable")[:r].tolist())
    return len(top_a & top_b) / r


def ranking_stability(rows: Sequence[dict], layer: int, tau: float) -> list[tuple[int, int, float]]:
    """Overlap of the top-r state sets of one layer between consecutive tracked points.

    For each pair of consecutive rows in which the layer has the same size (no reduction in
    between) and per-state energies, ``r = rank_for_energy(hsv of the earlier row, tau)`` (the
    states that tolerance ``tau`` would keep; halved, rounded up, for a real order) and the overlap is :func:`top_overlap` of the two
    rows' ``state_energy`` at that ``r``.

    Returns ``[(step, r, overlap), ...]``, ``step`` being the later row's.
    """
    out = []
    for prev, cur in zip(rows, rows[1:]):
        a = next((e for e in prev["layers"] if e["layer"] == layer), None)
        b = next((e for e in cur["layers"] if e["layer"] == layer), None)
        if a is None or b is None or a["d_state"] != b["d_state"] or not a.get("state_energy") \
                or not b.get("state_energy") or not a.get("hsv"):
            continue
        r = lti.rank_for_energy(torch.tensor(a["hsv"], dtype=torch.float64), tau)
        if len(a["hsv"]) == 2 * len(a["state_energy"]):     # a real order: two per LRU state
            r = math.ceil(r / 2)
        r = max(1, min(r, len(a["state_energy"])))
        out.append((int(cur["step"]), int(r), top_overlap(a["state_energy"], b["state_energy"], r)))
    return out
