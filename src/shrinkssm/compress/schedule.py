"""When to reduce: the optimizer steps at which the compressor acts.

The schedule is a plain sorted tuple of step numbers (optimizer steps done, from 1), independent of
evaluation or logging in this package. Three named schedules (``compress.schedule``,
:data:`SCHEDULES`), for a run of ``T`` steps with reduction window ``w`` (``compress.window``):

``"equidistant"`` (the default)
    ``n`` points (``compress.n_points``) spread evenly over the window: steps
    ``max(1, round(w T i / n))``, ``i = 1..n`` (T = 200,000, n = 4, w = 0.1: 5,000, 10,000, 15,000,
    20,000). :meth:`ReductionSchedule.equidistant`.
``"described"``
    What the CompreSSM paper describes: a reduction check every ``c`` steps
    (``compress.check_every``, the published ``red_interval``) within the first ``w`` of training:
    steps ``c, 2c, ...`` up to ``floor(w T)`` (T = 200,000, c = 2,000, w = 0.1: 2,000, 4,000, ...,
    20,000, ten points). :meth:`ReductionSchedule.described`.
``"published"``
    What the published code actually runs: it checks every ``c`` steps within the window, but only
    inside its evaluation branch, which runs every ``e`` steps (``compress.published_eval_every``,
    the published ``eval_steps``). So it reduces at the steps of the window that are multiples of
    both ``c`` and ``e`` (T = 200,000, c = 2,000, e = 5,000, w = 0.1: 10,000 and 20,000 only; the
    published sCIFAR setting, T = 180,000, c = 2,000, e = 4,500: 18,000 only).
    :meth:`ReductionSchedule.published`.

Unless given, ``c`` and ``e`` follow the run's length: ``c = round(T / 100)`` and
``e = round(T / 40)`` (2,000 and 5,000 at the published 200,000 steps), so a shorter run keeps the
published proportions (:func:`default_check_every`, :func:`default_published_eval_every`).
Explicit ``compress.steps`` go with the equidistant schedule only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

__all__ = ["ReductionSchedule", "SCHEDULES", "default_check_every", "default_published_eval_every"]

SCHEDULES = ("equidistant", "described", "published")
"""The names of ``compress.schedule`` (see the module docstring)."""


def default_check_every(total_steps: int) -> int:
    """Steps between reduction checks when ``compress.check_every`` is not given: ``T / 100``
    rounded, at least 1 (2,000 for the published 200,000 steps)."""
    return max(1, round(total_steps / 100))


def default_published_eval_every(total_steps: int) -> int:
    """The published code's evaluation cadence when ``compress.published_eval_every`` is not
    given: ``T / 40`` rounded, at least 1 (5,000 for the published 200,000 steps)."""
    return max(1, round(total_steps / 40))


def _check_window(total_steps: int, window: float) -> None:
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0.0 < window <= 1.0:
        raise ValueError(f"window must lie in (0, 1], got {window}")


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
        _check_window(total_steps, window)
        if n_points < 0:
            raise ValueError(f"n_points must be >= 0, got {n_points}")
        last = window * total_steps
        if n_points > last:
            raise ValueError(f"{n_points} reduction points do not fit into the first {window:g} "
                             f"of {total_steps} steps ({int(last)}); lengthen training or widen "
                             "the window")
        return cls(tuple(max(1, round(last * i / n_points)) for i in range(1, n_points + 1)))

    @classmethod
    def described(cls, total_steps: int, check_every: int | None = None,
                  window: float = 0.1) -> "ReductionSchedule":
        """A check every ``check_every`` steps within the first ``window`` of training (the
        schedule the paper describes): ``check_every * k <= floor(window * total_steps)``.

        ``check_every`` None: :func:`default_check_every`. May be empty when ``check_every`` is
        longer than the window.
        """
        _check_window(total_steps, window)
        every = default_check_every(total_steps) if check_every is None else int(check_every)
        if every < 1:
            raise ValueError(f"check_every must be >= 1, got {every}")
        last = math.floor(window * total_steps + 1e-9)
        return cls(tuple(range(every, last + 1, every)))

    @classmethod
    def published(cls, total_steps: int, check_every: int | None = None,
                  eval_every: int | None = None, window: float = 0.1) -> "ReductionSchedule":
        """The steps of :meth:`described` that are also multiples of ``eval_every`` (the published
        code reduces only inside its evaluation branch): multiples of ``lcm(check_every,
        eval_every)`` up to ``floor(window * total_steps)``.

        ``None`` for either: :func:`default_check_every` / :func:`default_published_eval_every`.
        """
        every = default_check_every(total_steps) if check_every is None else int(check_every)
        ev = default_published_eval_every(total_steps) if eval_every is None else int(eval_every)
        if ev < 1:
            raise ValueError(f"eval_every must be >= 1, got {ev}")
        checks = cls.described(total_steps, every, window).steps
        return cls(tuple(s for s in checks if s % ev == 0))

    @classmethod
    def for_run(cls, total_steps: int, n_points: int = 4, window: float = 0.1,
                steps: Iterable[int] | None = None, mode: str = "tolerance", *,
                schedule: str = "equidistant", check_every: int | None = None,
                published_eval_every: int | None = None) -> "ReductionSchedule":
        """The schedule of a run (the ``compress`` section of a config).

        ``schedule`` names one of :data:`SCHEDULES`. For ``"equidistant"``, explicit ``steps``
        win over ``n_points`` / ``window``; ``"described"`` and ``"published"`` use ``window``,
        ``check_every`` and (published) ``published_eval_every``. ``mode="none"`` (the
        uncompressed baseline) has no reduction points at all, so nothing is measured or reported.
        """
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
        if mode == "none":
            return cls(())
        if schedule == "described":
            return cls.described(total_steps, check_every, window)
        if schedule == "published":
            return cls.published(total_steps, check_every, published_eval_every, window)
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
