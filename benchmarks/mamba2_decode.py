"""Recurrent decoding of Mamba-2 models: tokens/s of ``step`` at batch 1 and 64, and state memory.

A character-LM shaped stack (issue 18; what ``shrinkssm generate`` runs): token embedding, 2 blocks
of ``Mamba2SSM`` (d_model 64, expand 2: E = 128, headdim 16: 8 heads, one group, layer norm), LM
head over 65 tokens, float32, one torch thread, eval mode, no gradients. Candidates, all built in
this process and timed interleaved (one call of each per round, medians):

* ``N``           -- ``d_state = N`` (default 128), unreduced;
* ``N/4``         -- a plain model with ``d_state = N / 4``;
* ``exact N->N/4`` -- the ``N`` model reduced to ``N / 4`` by the exact form (``B`` and ``C``
  projected by the transforms after the convolution, every token; the state has ``N/4`` columns);
* ``folded N->N/4`` -- the same reduction folded into ``in_proj`` and the convolution (a plain
  layer of ``d_state = N / 4``).

The reduced models get their Gramian statistics from training-mode forward passes over random
tokens (no gradients) before :meth:`~shrinkssm.nn.Mamba2SSM.plan_reduction`: what is timed is the
shape of the computation, not trained weights.

Printed: the CPU and threads, per candidate and batch the wall-clock tokens/s of ``model.step``
(``tokens = steps * batch``, every stream counted; each call decodes ``--tokens`` steps from a zero
state, greedy), the ratio to ``N`` measured in the same run, and the state per sequence in bytes
computed from the tensors ``step`` carries (every layer's convolution window and SSM state, summed,
divided by the batch).

    python benchmarks/mamba2_decode.py                 # about 30 s
    python benchmarks/mamba2_decode.py --n 64 --d-model 32 --tokens 128 --rounds 9

:func:`state_bytes`, :func:`decode_fn` and :func:`measure` are reused by
``experiments/mamba2_study.py`` for the trained models of the study (classification models are
stepped through their encoder and blocks, the stack without pooling and head).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

import _common
from shrinkssm.nn import ModelConfig, SSMModel


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


def state_bytes(states, batch_size: int) -> float:
    """Bytes of recurrent state per sequence: ``sum(numel * element_size)`` over every tensor in
    ``states`` (nested lists / tuples, e.g. :meth:`SSMModel.init_states`), divided by
    ``batch_size``. For a Mamba-2 layer: the convolution window ``(b, E + 2GN, d_conv - 1)`` plus
    the SSM state ``(b, heads, P, M)``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return sum(t.numel() * t.element_size() for t in _tensors(states)) / batch_size


def _first_input(model: SSMModel, batch_size: int) -> torch.Tensor:
    """One step's input: token 0 for token models, zeros ``(b, d_input)`` for real inputs."""
    if model.tokens:
        return torch.zeros(batch_size, dtype=torch.long)
    return torch.zeros(batch_size, model.d_input)


@torch.no_grad()
def _stack_step(model: SSMModel, x_k: torch.Tensor, states: list):
    """Encoder and blocks, one position (a classification model's ``step`` without the head)."""
    h = model.encoder(x_k)
    new = []
    for block, state in zip(model.blocks, states):
        h, state = block.step(h, state)
        new.append(state)
    return h, new


def decode_fn(model: SSMModel, batch_size: int, n_tokens: int) -> tuple[Callable[[], None], float]:
    """``(run, bytes per sequence)``: ``run()`` decodes ``n_tokens`` positions of ``batch_size``
    streams from a zero state. Per-step (LM) models: ``model.step``, greedy (the argmax is the next
    input; real inputs stay zero); pooled classifiers: :func:`_stack_step` (encoder and blocks).
    The model is put in eval mode."""
    if batch_size < 1 or n_tokens < 1:
        raise ValueError(f"batch_size and n_tokens must be >= 1, got {batch_size} and {n_tokens}")
    model.eval()
    memory = state_bytes(model.init_states(batch_size), batch_size)

    @torch.no_grad()
    def run() -> None:
        states = model.init_states(batch_size)
        x = _first_input(model, batch_size)
        for _ in range(n_tokens):
            if model.per_step:
                out, states = model.step(x, states)
            else:
                out, states = _stack_step(model, x, states)
            if model.tokens:
                x = out.argmax(-1) % model.d_input

    return run, memory


def measure(models: dict[str, SSMModel], batches=(1, 64), n_tokens: int = 64, rounds: int = 7,
            burn_in: int = 1, clock: Callable[[], float] = time.perf_counter) -> dict[str, dict]:
    """Every model at every batch size, timed interleaved (:func:`_common.time_round_robin`, wall
    clock by default). Returns ``{name: {"tokens_per_s": {batch: float}, "state_bytes": float,
    "state_dims": [...]}}`` (tokens/s counts every stream; bytes per sequence)."""
    fns, memory = {}, {}
    for name, model in models.items():
        for b in batches:
            fns[(name, b)], memory[name] = decode_fn(model, b, n_tokens)
    seconds = _common.time_round_robin(fns, rounds, burn_in=burn_in, clock=clock)
    return {name: {"tokens_per_s": {b: n_tokens * b / seconds[(name, b)] for b in batches},
                   "state_bytes": memory[name], "state_dims": model.state_dims()}
            for name, model in models.items()}


def lm_model(d_state: int, args, form: str = "exact", seed: int = 0) -> SSMModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(layer="mamba2", n_layers=args.layers, d_model=args.d_model, d_state=d_state,
                      headdim=args.headdim, norm="layer", mamba2_reduction=form)
    return SSMModel(cfg, d_input=args.vocab, d_output=args.vocab, task="lm")


def reduced_lm(n: int, r: int, args, form: str) -> SSMModel:
    """The ``d_state = n`` model with every layer reduced to ``r`` in ``form`` (statistics from
    training-mode forwards over random tokens)."""
    model = lm_model(n, args, form).train()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(2):
            model(torch.randint(0, args.vocab, (8, 128), generator=g))
    for layer in model.ssm_layers():
        layer.apply_reduction_(layer.plan_reduction(lambda hsv, size: r))
        assert layer.group_ranks == [r]
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=128, help="d_state N (compared with N / 4)")
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--headdim", type=int, default=16)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=65)
    ap.add_argument("--tokens", type=int, default=64, help="steps per timed call")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.n < 4:
        ap.error("--n must be >= 4")
    _common.set_threads(args.threads)
    _common.print_header("Mamba-2 recurrent decoding: tokens/s of step and state memory")
    N, r = args.n, args.n // 4
    models = {f"N={N}": lm_model(N, args).eval(), f"N={r}": lm_model(r, args).eval(),
              f"exact {N}->{r}": reduced_lm(N, r, args, "exact"),
              f"folded {N}->{r}": reduced_lm(N, r, args, "folded")}
    E = 2 * args.d_model
    print(f"LM stack: vocab {args.vocab}, {args.layers} blocks, d_model {args.d_model}, E {E}, "
          f"{E // args.headdim} heads of P = {args.headdim}, one group, d_conv 4, float32; "
          f"{args.tokens} greedy steps per call from a zero state, median of {args.rounds} "
          "interleaved rounds, wall clock")
    res = measure(models, tuple(args.batches), args.tokens, args.rounds)
    base = res[f"N={N}"]
    head = "".join(f" {'tok/s b=' + str(b):>13s} {'ratio':>6s}" for b in args.batches)
    print(f"  {'model':18s}{head} {'state B/seq':>12s} {'ratio':>6s}")
    for name, row in res.items():
        cells = "".join(f" {row['tokens_per_s'][b]:13,.0f} {row['tokens_per_s'][b] / base['tokens_per_s'][b]:6.2f}"
                        for b in args.batches)
        print(f"  {name:18s}{cells} {row['state_bytes']:12,.0f} "
              f"{row['state_bytes'] / base['state_bytes']:6.2f}")
    print("ratio: against N=%d in this run (tokens/s: above 1 is faster; bytes: below 1 is smaller)" % N)


if __name__ == "__main__":
    main()
