"""The record of what compression did: per reduction point and per layer.

Plain data with a JSON round trip, so that it goes into checkpoints and run directories and can be
plotted later (:mod:`shrinkssm.plots`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["LayerEvent", "ReductionEvent", "ReductionHistory"]


@dataclass
class LayerEvent:
    """One layer at one reduction point.

    ``hsv`` lists every Hankel singular value before the reduction (descending). Two units
    (:mod:`shrinkssm.nn.shrinkable`): ``old`` / ``target`` / ``new`` are the layer's ``d_state``
    (LRU: complex states; selective: mean real states per channel, rounded up), ``old_size`` /
    ``target_size`` / ``new_size`` its ``state_size`` (real numbers of recurrent state per step,
    the unit the gate compares; None in records written before it was kept). ``target`` is what
    the mode asked for and ``new`` the size after (equal to ``old`` when the gate or the minimum
    rank kept the layer as it was).
    """

    layer: int
    old: int
    new: int
    target: int
    hsv: list[float]
    error_bound: float | None = None
    kept_energy: float | None = None
    seconds: float = 0.0
    skipped: str | None = None        # why the layer was left alone (gate, min_rank, mode none)
    notes: list[str] = field(default_factory=list)
    old_size: int | None = None
    target_size: int | None = None
    new_size: int | None = None


@dataclass
class ReductionEvent:
    """One reduction point: the step, every layer, and the before/after evaluation if any.

    Times are wall-clock seconds: ``reduction_seconds`` is what the reduction itself costs,
    ``eval_seconds`` the validation run before and after it (only when an ``evaluate`` callback
    was given and some layer was due to change).
    """

    step: int
    mode: str
    method: str
    output: str
    layers: list[LayerEvent]
    metric_before: float | None = None
    metric_after: float | None = None
    rolled_back: bool = False
    reduction_seconds: float = 0.0    # the reduction alone: HSVs, truncation, optimizer surgery
    eval_seconds: float = 0.0         # the before/after validation around it (not included above)

    @property
    def state_dims_before(self) -> list[int]:
        return [e.old for e in self.layers]

    @property
    def state_dims_after(self) -> list[int]:
        """``d_state`` of every layer after the point (``old`` if it was rolled back)."""
        return [e.old if self.rolled_back else e.new for e in self.layers]

    @property
    def state_sizes_after(self) -> list[int | None]:
        """``state_size`` of every layer after the point (None in old records)."""
        return [e.old_size if self.rolled_back else e.new_size for e in self.layers]


@dataclass
class ReductionHistory:
    """All reduction points of a run, in order."""

    events: list[ReductionEvent] = field(default_factory=list)

    def append(self, event: ReductionEvent) -> None:
        self.events.append(event)

    def __len__(self) -> int:
        return len(self.events)

    def __iter__(self):
        return iter(self.events)

    def to_dict(self) -> dict:
        return {"events": [asdict(e) for e in self.events]}

    @classmethod
    def from_dict(cls, data: dict) -> "ReductionHistory":
        events = []
        for e in data.get("events", []):
            e = dict(e)
            e["layers"] = [LayerEvent(**layer) for layer in e["layers"]]
            if "seconds" in e:          # older records: "seconds" was the point with its evaluations
                e["reduction_seconds"] = e.pop("seconds") - e.get("eval_seconds", 0.0)
            events.append(ReductionEvent(**e))
        return cls(events)

    def save(self, path: str | os.PathLike) -> None:
        """Write the history as JSON (atomically: a partial file never replaces a good one)."""
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ReductionHistory":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def state_dims(self, initial: list[int]) -> list[tuple[int, list[int]]]:
        """``[(step, dims), ...]`` starting at step 0 with ``initial``: a staircase to plot."""
        points = [(0, list(initial))]
        for event in self.events:
            points.append((event.step, event.state_dims_after))
        return points
