"""Sampling from a character-level language model with the recurrent ``step`` mode.

A trained :class:`~shrinkssm.nn.SSMModel` (task ``lm``) is run one token at a time: the prompt is
fed through ``model.step`` to build the state, then tokens are drawn from the softmax of the
next-token logits (temperature, optional top-k). Each step costs O(sum of the layers' state
sizes), which is where compression shows at inference time: :func:`tokens_per_second` measures it.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from shrinkssm.nn import SSMModel

__all__ = ["Spread", "decoding_speed", "generate", "tokens_per_second"]


@torch.no_grad()
def generate(model: SSMModel, prompt: torch.Tensor, length: int, *, temperature: float = 1.0,
             top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Continue ``prompt: (B, P) int64`` by ``length`` tokens; returns ``(B, P + length) int64``."""
    if model.task != "lm":
        raise ValueError(f"generation needs a language model, this run's task is {model.task!r}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if prompt.ndim != 2 or prompt.shape[1] < 1:
        raise ValueError(f"prompt must be (B, P >= 1) token ids, got {tuple(prompt.shape)}")
    model.eval()
    states = model.init_states(prompt.shape[0])
    for k in range(prompt.shape[1]):
        logits, states = model.step(prompt[:, k], states)                # (B, V)
    out = [prompt]
    for _ in range(length):
        logits = logits / temperature
        if top_k is not None:
            kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        token = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)  # (B, 1)
        out.append(token)
        logits, states = model.step(token[:, 0], states)
    return torch.cat(out, 1)


@dataclass(frozen=True)
class Spread:
    """A median over repeated measurements with its range (``low`` .. ``high``)."""

    median: float
    low: float
    high: float
    runs: int

    @classmethod
    def of(cls, values: list[float]) -> "Spread":
        return cls(statistics.median(values), min(values), max(values), len(values))


@torch.no_grad()
def _decode_seconds(model: SSMModel, n_tokens: int, batch_size: int) -> float:
    """Seconds of one greedy recurrent decoding run of ``n_tokens`` steps."""
    device = next(model.parameters()).device
    states = model.init_states(batch_size)
    token = torch.zeros(batch_size, dtype=torch.long, device=device)
    start = time.perf_counter()
    for _ in range(n_tokens):
        logits, states = model.step(token, states)
        token = logits.argmax(-1)
    return time.perf_counter() - start


def decoding_speed(models: list[SSMModel], n_tokens: int = 300, batch_size: int = 1,
                   repeats: int = 7, warmup: int = 1) -> tuple[list[Spread], list[Spread]]:
    """Recurrent decoding speed of several models, measured interleaved.

    Every model first decodes ``warmup`` untimed runs; then ``repeats`` rounds each time every
    model once, in turn, so that a slow moment of a shared machine falls on all of them alike.

    Returns
    -------
    speeds : list of Spread
        Tokens per second (``n_tokens * batch_size / seconds``, all streams counted) per model.
    ratios : list of Spread
        Per round, the speed of ``models[0]`` over that of each model (``ratios[0]`` is 1).
    """
    if repeats < 1 or n_tokens < 1 or batch_size < 1:
        raise ValueError(f"repeats, n_tokens and batch_size must be >= 1, got {repeats}, "
                         f"{n_tokens}, {batch_size}")
    for model in models:
        model.eval()
        for _ in range(warmup):
            _decode_seconds(model, n_tokens, batch_size)
    seconds: list[list[float]] = [[] for _ in models]
    for _ in range(repeats):
        for i, model in enumerate(models):
            seconds[i].append(_decode_seconds(model, n_tokens, batch_size))
    speeds = [Spread.of([n_tokens * batch_size / t for t in ts]) for ts in seconds]
    ratios = [Spread.of([b / a for a, b in zip(seconds[0], ts)]) for ts in seconds]
    return speeds, ratios


def tokens_per_second(model: SSMModel, n_tokens: int = 300, batch_size: int = 1,
                      repeats: int = 7, warmup: int = 1) -> Spread:
    """Recurrent decoding speed of one model (:func:`decoding_speed`): tokens/s, median and range."""
    return decoding_speed([model], n_tokens, batch_size, repeats, warmup)[0][0]


def format_decoding(speeds: list[Spread], ratios: list[Spread], dims: list[list[int]],
                    n_tokens: int, batch_size: int) -> str:
    """The report of :func:`decoding_speed` for a run: its final state sizes (``dims[0]``) and,
    when measured, its initial ones (``dims[1]``), with the speed-up and its range."""
    first = speeds[0]
    lines = [f"recurrent decoding, {batch_size} stream(s) x {n_tokens} tokens; median (range) "
             f"of {first.runs} timed runs after a warm-up:"]
    labels = ["final state sizes", "initial state sizes"]
    for label, size, speed in zip(labels, dims, speeds):
        lines.append(f"  {label} {size}: {speed.median:,.0f} tokens/s "
                     f"({speed.low:,.0f}-{speed.high:,.0f})")
    if len(ratios) > 1:
        r = ratios[1]
        lines.append(f"  final / initial: {r.median:.2f}x ({r.low:.2f}-{r.high:.2f}x; "
                     "above 1: compression made decoding faster)")
    return "\n".join(lines)
