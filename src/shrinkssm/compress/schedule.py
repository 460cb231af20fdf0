"""When to reduce: the optimizer steps at which the compressor acts.

The schedule is a plain sorted tuple of step numbers, independent of evaluation or logging. The
published configurations reduce at 4 equidistant points inside the first 10% of training; with
:meth:`ReductionSchedule.equidistant` those are the steps ``round(T * window * i / n)`` for
``i = 1..n`` (for T = 200,000: 5,000, 10,000, 15,000 and 20,000).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

__all__ = ["ReductionSchedule"]


@dataclass(frozen=True)
class ReductionSchedule:
    """Steps (counted in optimizer steps taken, starting at 1) at which to reduce.

    ``step`` in :meth:`is_due` is the number of optimizer steps done so far, i.e. the compressor is
    called after ``optimizer.step()``.
    """

    steps: tuple[int, ...]

    def __post_init__(self) -> None:
        steps = tuple(sorted(set(int(s) for s in self.steps)))
        if any(s < 1 for s in steps):
            raise ValueError(f"reduction steps must be >= 1, got {list(self.steps)}")
        object.__setattr__(self, "steps", steps)

    @classmethod
    def at(cls, steps: Iterable[int]) -> "ReductionSchedule":
        """Reduce at exactly these steps."""
        return cls(tuple(steps))

    @classmethod
    def equidistant(cls, total_steps: int, n_points: int = 4, window: float = 0.1) -> "ReductionSchedule":
        """``n_points`` equidistant steps, the last at ``window * total_steps``.

        Parameters
        ----------
        total_steps : int
            Length of training in optimizer steps.
        n_points : int
            Number of reduction points (0 gives an empty schedule).
        window : float
            Fraction of training, in (0, 1], that the points cover.
        """
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if n_points < 0:
            raise ValueError(f"n_points must be >= 0, got {n_points}")
        if not 0.0 < window <= 1.0:
            raise ValueError(f"window must lie in (0, 1], got {window}")
        last = window * total_steps
        if n_points > last:
            raise ValueError(f"{n_points} reduction points do not fit into the first {window:g} "
                             f"of {total_steps} steps ({int(last)}); lengthen training or widen "
                             "the window")
        return cls(tuple(max(1, round(last * i / n_points)) for i in range(1, n_points + 1)))

    @classmethod
    def for_run(cls, total_steps: int, n_points: int = 4, window: float = 0.1,
                steps: Iterable[int] | None = None, mode: str = "tolerance") -> "ReductionSchedule":
        """The schedule of a run (the ``compress`` section of a config).

        Explicit ``steps`` win over ``n_points`` / ``window``; ``mode="none"`` (the uncompressed
        baseline) has no reduction points at all, so nothing is measured or reported.
        """
        if mode == "none":
            return cls(())
        if steps:
            return cls.at(steps)
        return cls.equidistant(total_steps, n_points, window)

    def is_due(self, step: int) -> bool:
        return step in self.steps

    def remaining(self, step: int) -> tuple[int, ...]:
        """Points still to come after ``step``."""
        return tuple(s for s in self.steps if s > step)

    def __len__(self) -> int:
        return len(self.steps)
