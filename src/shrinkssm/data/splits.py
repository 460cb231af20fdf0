"""What a data set asks of a model (:class:`TaskSpec`), its three splits (:class:`DataSplits`), and
the deterministic, stratified hold-out used to carve validation (and, where a data set has no
official one, test) splits out of the training data.

The stratified hold-out follows the usual proportional allocation (as scikit-learn's
``train_test_split(stratify=...)``): the hold-out size is ``round(fraction * n)``, each class gets
its proportional share rounded down, and the few samples left over go to the classes with the
largest remainders; within a class the samples are drawn at random from a seeded generator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shrinkssm._tasks import TASK_KINDS
from shrinkssm._checks import check_choice

from .sequence import SequenceData

__all__ = ["KINDS", "METRICS", "TaskSpec", "DataSplits", "split_indices", "holdout", "TEST_STREAM",
           "VAL_STREAM"]

TEST_STREAM = 1
"""``SeedSequence`` stream of a held-out test split (with the loader's ``test_seed``)."""
VAL_STREAM = 2
"""``SeedSequence`` stream of the validation split (with ``train.seed``): every loader carves
validation with it, so the validation split of a data set depends on the seed alone."""

KINDS = TASK_KINDS
METRICS = ("accuracy", "mse", "mae", "rmse", "perplexity", "bits_per_char")


@dataclass(frozen=True)
class TaskSpec:
    """What a data set asks of a model.

    Attributes
    ----------
    kind : str
        ``"classification"`` (one label per sequence), ``"regression"`` (real targets) or
        ``"lm"`` (next-token prediction: token inputs, per-step class targets).
    d_input : int
        Input channels ``C`` of ``(B, L, C)`` features. For token inputs it equals ``vocab_size``
        (the width of a one-hot encoding).
    seq_len : int
        ``L``, the (padded) sequence length.
    n_classes : int or None
        Number of classes (classification, lm).
    d_output : int or None
        Width of the regression target (per sequence, or per step when ``per_step``).
    tokens : bool
        Inputs are ``(B, L) int64`` tokens in ``[0, vocab_size)``.
    vocab_size : int or None
        Required when ``tokens``.
    metric : str
        Headline metric, one of :data:`METRICS` (``"accuracy"`` for classification).
    per_step : bool or None
        Targets per step (``(B, L)`` or ``(B, L, D)``) rather than per sequence. None: True for
        ``"lm"``, False otherwise.
    variable_length : bool
        Sequences may be shorter than ``L``: batches then carry a ``mask``.
    n_segments : int
        Documents per example laid end to end at fixed offsets (AAN retrieval: 2 documents of
        ``L / 2`` tokens each, padded with token 0), to be encoded separately and compared.
    name : str
        The data set's registry name.
    """

    kind: str
    d_input: int
    seq_len: int
    n_classes: int | None = None
    d_output: int | None = None
    tokens: bool = False
    vocab_size: int | None = None
    metric: str = "accuracy"
    per_step: bool | None = None
    variable_length: bool = False
    n_segments: int = 1
    name: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.n_segments, int) or self.n_segments < 1 or self.seq_len % self.n_segments:
            raise ValueError(f"n_segments must be a positive divisor of seq_len ({self.seq_len}), "
                             f"got {self.n_segments!r}")
        check_choice("kind", self.kind, KINDS)
        check_choice("metric", self.metric, METRICS)
        for name in ("d_input", "seq_len"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        if self.kind in ("classification", "lm") and (self.n_classes is None or self.n_classes < 2):
            raise ValueError(f"a {self.kind} task needs n_classes >= 2, got {self.n_classes!r}")
        if self.kind == "regression" and (self.d_output is None or self.d_output < 1):
            raise ValueError(f"a regression task needs d_output >= 1, got {self.d_output!r}")
        if self.tokens and (self.vocab_size is None or self.vocab_size != self.d_input):
            raise ValueError(
                f"token inputs need vocab_size == d_input, got {self.vocab_size!r} and {self.d_input}"
            )
        if self.kind == "lm" and not self.tokens:
            raise ValueError("an lm task needs token inputs (tokens=True)")
        if self.per_step is None:
            object.__setattr__(self, "per_step", self.kind == "lm")
        elif self.kind == "lm" and not self.per_step:
            raise ValueError("an lm task has per-step targets (per_step=True)")

    @property
    def output_dim(self) -> int:
        """Width of the model's output head: ``n_classes`` or ``d_output``."""
        return self.d_output if self.kind == "regression" else self.n_classes


@dataclass
class DataSplits:
    """The three splits of a data set and what it asks of a model.

    ``val`` is always carved from the official training data; ``test`` is only for the final
    report, never for selection. ``meta`` records how the splits were made (source directory,
    seeds, sizes, normalisation statistics, permutation, class names).
    """

    train: SequenceData
    val: SequenceData
    test: SequenceData
    spec: TaskSpec
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for split_name in ("train", "val", "test"):
            split = getattr(self, split_name)
            if not isinstance(split, SequenceData):
                raise ValueError(f"{split_name} must be a SequenceData, got {type(split).__name__}")
            if split.seq_len != self.spec.seq_len or split.tokens != self.spec.tokens:
                raise ValueError(
                    f"{split_name} has length {split.seq_len} (tokens={split.tokens}), "
                    f"spec says {self.spec.seq_len} (tokens={self.spec.tokens})"
                )
            if not split.tokens and split.n_channels != self.spec.d_input:
                raise ValueError(
                    f"{split_name} has {split.n_channels} channels, spec says d_input={self.spec.d_input}"
                )

    def summary(self) -> str:
        """One line: name, sizes of the splits, shape and task."""
        s = self.spec
        width = f"vocab {s.vocab_size}" if s.tokens else f"C={s.d_input}"
        target = f"{s.n_classes} classes" if s.kind != "regression" else f"d_output={s.d_output}"
        return (
            f"{s.name or 'data'}: train {len(self.train)}, val {len(self.val)}, test {len(self.test)}; "
            f"L={s.seq_len}, {width}; {s.kind}, {target}, metric {s.metric}"
        )


def _check_fraction(fraction: float, name: str) -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {fraction!r}")
    return float(fraction)


def _stratified_quotas(counts: np.ndarray, n_held: int) -> np.ndarray:
    """Per-class hold-out sizes summing to ``n_held``, proportional to ``counts`` (largest remainder)."""
    exact = counts * (n_held / counts.sum())
    quotas = np.floor(exact).astype(np.int64)
    short = n_held - int(quotas.sum())
    # Stable sort: ties go to the lower class, so the result is deterministic.
    by_remainder = np.argsort(-(exact - quotas), kind="stable")
    quotas[by_remainder[:short]] += 1
    return quotas


def split_indices(
    n: int,
    fraction: float,
    *,
    seed: int,
    labels: np.ndarray | None = None,
    stream: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(n)`` into a kept part and a held-out part of ``round(fraction * n)`` samples.

    Parameters
    ----------
    n : int
        Number of samples.
    fraction : float
        Held-out fraction, in ``[0, 1)``.
    seed : int
        Non-negative; the split is a function of ``(seed, stream, labels)`` only.
    labels : numpy.ndarray, optional
        ``(n,)`` integer class labels: stratify, so that every class is held out in proportion
        (each class's held-out count is within one of ``count * n_held / n``). None: a plain
        random split.
    stream : int
        Separates independent splits made with the same seed (validation vs test).

    Returns
    -------
    kept, held : numpy.ndarray
        Sorted ``int64`` indices; disjoint, together ``range(n)``.

    Raises
    ------
    ValueError
        Bad fraction, seed or labels, or a split that would leave nothing to keep.
    """
    fraction = _check_fraction(fraction, "fraction")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    n_held = int(np.floor(fraction * n + 0.5))
    if n_held >= n and n > 0:
        raise ValueError(f"holding out {fraction} of {n} samples leaves none to keep")
    rng = np.random.default_rng(np.random.SeedSequence([int(stream), int(seed)]))
    held_mask = np.zeros(n, dtype=bool)
    if labels is None:
        held_mask[rng.permutation(n)[:n_held]] = True
    else:
        labels = np.asarray(labels)
        if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be ({n},) integers to stratify, got {labels.shape} {labels.dtype}")
        classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        quotas = _stratified_quotas(counts, n_held)
        for c in range(len(classes)):
            members = np.flatnonzero(inverse == c)
            held_mask[rng.permutation(members)[: quotas[c]]] = True
    return np.flatnonzero(~held_mask).astype(np.int64), np.flatnonzero(held_mask).astype(np.int64)


def holdout(
    data: SequenceData, fraction: float, *, seed: int, stream: int = 0, stratify: bool = True
) -> tuple[SequenceData, SequenceData]:
    """Split ``data`` into (kept, held-out) with :func:`split_indices`.

    Stratifies on per-sequence class labels when ``stratify`` and the targets are ``(num,)``
    integers; otherwise the split is plain random.
    """
    labels = None
    if stratify and data.targets.ndim == 1 and not data.targets.dtype.is_floating_point:
        labels = data.targets.numpy()
    kept, held = split_indices(len(data), fraction, seed=seed, labels=labels, stream=stream)
    return data.subset(kept), data.subset(held)
