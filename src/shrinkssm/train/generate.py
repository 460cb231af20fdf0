"""Sampling from a character-level language model with the recurrent ``step`` mode.

A trained :class:`~shrinkssm.nn.SSMModel` (task ``lm``) is run one token at a time: the prompt is
fed through ``model.step`` to build the state, then tokens are drawn from the softmax of the
next-token logits (temperature, optional top-k). Each step costs O(sum of the layers' state
sizes), which is where compression shows at inference time: :func:`tokens_per_second` measures it.
"""

from __future__ import annotations

import time

import torch

from shrinkssm.nn import SSMModel

__all__ = ["generate", "tokens_per_second"]


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


@torch.no_grad()
def tokens_per_second(model: SSMModel, n_tokens: int = 500, batch_size: int = 1,
                      repeats: int = 3) -> float:
    """Recurrent decoding speed: best of ``repeats`` runs of ``n_tokens`` steps (greedy)."""
    model.eval()
    device = next(model.parameters()).device
    best = float("inf")
    for _ in range(repeats):
        states = model.init_states(batch_size)
        token = torch.zeros(batch_size, dtype=torch.long, device=device)
        start = time.perf_counter()
        for _ in range(n_tokens):
            logits, states = model.step(token, states)
            token = logits.argmax(-1)
        best = min(best, time.perf_counter() - start)
    return n_tokens * batch_size / best
