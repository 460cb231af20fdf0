"""Loss and metrics of a task, and evaluation over a data split.

The :class:`Objective` turns a model's outputs and a :class:`~shrinkssm.data.Batch` into a loss
and additive statistics (sums and counts), so that metrics over many batches are exact averages.

==================  ==============================  =========================================
task                loss                            metrics
==================  ==============================  =========================================
classification      cross-entropy over sequences    accuracy
lm                  cross-entropy over valid steps  accuracy, bits_per_char, perplexity
regression          mean squared error (masked)     mse, mae, rmse
==================  ==============================  =========================================
"""

from __future__ import annotations

import math
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shrinkssm.data import IGNORE_INDEX, Batch, TaskSpec

__all__ = ["Objective", "evaluate"]

_LOWER_IS_BETTER = {"mse", "mae", "rmse", "perplexity", "bits_per_char"}
_STAT_KEYS = {"classification": ("correct",), "lm": ("correct",), "regression": ("abs_sum",)}


class Objective:
    """Loss and metrics for a :class:`~shrinkssm.data.TaskSpec`."""

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec
        self.kind = spec.kind
        self.metric = spec.metric

    def loss(self, out: Tensor, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        """Mean loss over the batch, and additive statistics for :meth:`summarize`.

        ``out``: (B, K) logits (classification), (B, L, V) logits (lm), or (B, D) / (B, L, D)
        predictions (regression).
        """
        y = batch.y
        if self.kind == "classification":
            loss = F.cross_entropy(out, y)
            correct = (out.argmax(-1) == y).sum()
            return loss, {"loss_sum": loss.item() * len(y), "n": len(y),
                          "correct": correct.item()}
        if self.kind == "lm":
            logits = out.reshape(-1, out.shape[-1])
            target = y.reshape(-1)
            if batch.mask is not None:
                target = target.masked_fill(~batch.mask.reshape(-1), IGNORE_INDEX)
            valid = target != IGNORE_INDEX
            loss = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
            n = int(valid.sum())
            correct = ((logits.argmax(-1) == target) & valid).sum()
            return loss, {"loss_sum": loss.item() * n, "n": n, "correct": correct.item()}
        err = out - y
        if batch.mask is not None and err.ndim == 3:
            w = batch.mask.unsqueeze(-1).to(err.dtype).expand_as(err)
        else:
            w = torch.ones_like(err)
        n = w.sum()
        loss = (err.square() * w).sum() / n.clamp_min(1)
        return loss, {"loss_sum": loss.item() * n.item(), "n": n.item(),
                      "abs_sum": (err.abs() * w).sum().item()}

    def summarize(self, stats: dict[str, float]) -> dict[str, float]:
        """Metrics from summed statistics: always ``loss``, and the task's metrics."""
        n = max(stats.get("n", 0), 1)
        loss = stats.get("loss_sum", 0.0) / n
        out = {"loss": loss}
        if self.kind in ("classification", "lm"):
            out["accuracy"] = stats.get("correct", 0) / n
        if self.kind == "lm":
            out["bits_per_char"] = loss / math.log(2)
            out["perplexity"] = math.exp(min(loss, 50.0))
        if self.kind == "regression":
            out["mse"] = loss
            out["rmse"] = math.sqrt(loss)
            out["mae"] = stats.get("abs_sum", 0.0) / n
        return out

    def score(self, metrics: dict[str, float]) -> float:
        """The headline metric as "higher is better" (negated for errors and perplexities)."""
        value = metrics[self.metric]
        return -value if self.metric in _LOWER_IS_BETTER else value


def _add(total: dict, stats: dict) -> None:
    for key, value in stats.items():
        total[key] = total.get(key, 0) + value


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterator[Batch], objective: Objective,
             device: torch.device | str = "cpu",
             combine: Callable[[dict], dict] | None = None) -> dict[str, float]:
    """Metrics of ``model`` over ``batches`` (eval mode during, previous mode restored after).

    ``combine`` merges the summed statistics of several processes (data-parallel evaluation,
    each process over its shard) before the metrics are formed.
    """
    was_training = model.training
    model.eval()
    total: dict[str, float] = {}
    try:
        for batch in batches:
            batch = batch.to(device)
            _, stats = objective.loss(model(batch.x, batch.mask), batch)
            _add(total, stats)
    finally:
        model.train(was_training)
    if combine is not None:
        keys = ("loss_sum", "n", *_STAT_KEYS[objective.kind])   # a rank may have seen no batch
        total = combine({key: total.get(key, 0.0) for key in keys})
    return objective.summarize(total)
