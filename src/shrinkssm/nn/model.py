"""The deep SSM: an encoder, a stack of SSM blocks, pooling and a task head.

One block (as in the LRU paper and the CompreSSM code)::

    x -> norm -> mixer -> GELU -> dropout -> GLU -> dropout -> + x

The mixer is an :class:`~shrinkssm.nn.lru.LRU` (``layer="lru"``, the default), a Mamba-style
:class:`~shrinkssm.nn.selective.SelectiveSSM` (``layer="selective"``) or a Mamba-2
:class:`~shrinkssm.nn.mamba2.Mamba2SSM` (``layer="mamba2"``; the last two have their own gate and output
projection, the GELU/GLU after it are kept so that both kinds of model share one block). The same
model serves classification (pool over time, then a linear head), per-step regression (a linear
head at every position) and language modelling (token embedding in, next-token logits out).
:meth:`SSMModel.ssm_layers` exposes the mixers so that compression can walk them.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import Tensor, nn

from shrinkssm._tasks import TASK_KINDS
from shrinkssm._checks import check_choice
from shrinkssm.nn.lru import LRU
from shrinkssm.nn.mamba2 import Mamba2SSM
from shrinkssm.nn.mamba2.reduction import REDUCTIONS as MAMBA2_REDUCTIONS
from shrinkssm.nn.selective import REDUCTIONS, SURROGATES, SelectiveSSM
from shrinkssm.nn.shrinkable import ShrinkableLayer
from shrinkssm.ops.block import (batch_norm_fork, batch_norm_rows, encode_norm_fork, glu_block,
                                 glu_block_mean, linear)
from shrinkssm.ops.scan import BACKENDS

__all__ = ["ModelConfig", "SSMModel", "SSMBlock", "MaskedBatchNorm", "TASKS", "LAYERS", "LAYER_KINDS"]

TASKS = TASK_KINDS
LAYER_KINDS = {"lru": LRU, "selective": SelectiveSSM, "mamba2": Mamba2SSM}
"""The mixers a block can have (``model.layer``), by name."""
LAYERS = tuple(LAYER_KINDS)


class ModelConfig(BaseModel):
    """Architecture of an :class:`SSMModel` (the ``model:`` section of a run config)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    n_layers: int = Field(1, ge=1, description="number of blocks")
    d_model: int = Field(8, ge=1, description="width H of every block")
    layer: Literal[LAYERS] = Field(
        "lru", description="the mixer of every block: LRU, a Mamba-style selective SSM, or a "
        "Mamba-2 (SSD) layer")
    d_state: int | list[int] = Field(
        256, description="initial state size N of every mixer, or one per block (LRU: complex "
        "states, state_size 2N real numbers per step; selective: real states per channel, 16 in "
        "Mamba, state_size E*N; mamba2: states per head channel, 64 or 128 in Mamba-2, "
        "state_size E*N)")
    norm: Literal["batch", "layer"] = Field("batch", description="the published block uses batch")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    pooling: Literal["mean", "last"] = Field("mean", description="classification only")
    r_min: float = Field(0.9, ge=0.0, lt=1.0, description="smallest initial |lambda|")
    r_max: float = Field(0.999, gt=0.0, lt=1.0, description="largest initial |lambda|")
    max_phase: float = Field(2 * math.pi, gt=0.0, le=2 * math.pi)
    train_gamma: bool = True
    scan: Literal[BACKENDS] = Field(
        "auto", description="scan backend: auto, chunked, native or ref (auto = native on a CPU, "
        "chunked elsewhere; for the mamba2 SSD scan native only where a head's state P x N is at "
        "most 16 KiB, where its kernel is the faster one)")
    # selective layers only (layer="selective"; ignored by the LRU)
    expand: int = Field(2, ge=1, description="selective, mamba2: channels E = expand * d_model")
    d_conv: int = Field(4, ge=1, description="selective, mamba2: causal depthwise convolution kernel")
    dt_rank: int | None = Field(None, ge=1, description="selective: rank of the step-size "
                                "projection, null = ceil(d_model / 16)")
    dt_min: float = Field(0.001, gt=0.0, description="selective, mamba2: smallest initial step size")
    dt_max: float = Field(0.1, gt=0.0, description="selective, mamba2: largest initial step size")
    # mamba2 layers only (layer="mamba2")
    headdim: int = Field(64, ge=1, description="mamba2: channels P per head (heads = E / P)")
    ngroups: int = Field(1, ge=1, description="mamba2: groups of heads sharing B and C")
    chunk_size: int | Literal["auto"] = Field(
        "auto", description="mamba2: chunk length of the chunked SSD scan, a positive integer or "
        "auto (picked from d_state, headdim and the sequence length)")
    selective_reduction: Literal[REDUCTIONS] = Field(
        "per_channel", description="selective: per-channel balanced truncation (the paper) or one "
        "shared subset of state indices per layer")
    selective_surrogate: Literal[SURROGATES] = Field(
        "second_moment", description="selective: Gramians of the LTI surrogate from the second "
        "moments of delta B(x), C(x) or from their means (the paper's literal construction)")
    mamba2_reduction: Literal[MAMBA2_REDUCTIONS] = Field(
        "exact", description="mamba2: the balancing transforms kept as buffers after the "
        "convolution (exact) or folded into in_proj and the convolution, a plain layer with "
        "d_state r (folded, approximate)")
    surrogate_momentum: float | None = Field(
        0.1, gt=0.0, le=1.0, description="selective: weight of a batch in the surrogate's moving "
        "averages (mamba2: in the running Gramians), null = plain average")

    @field_validator("chunk_size", mode="before")
    @classmethod
    def _chunk_size_valid(cls, v):
        if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            return v
        raise ValueError(f"model.chunk_size: must be a positive integer or 'auto', got {v!r}")

    def d_state_of(self, block: int) -> int:
        """Initial ``d_state`` of block ``block`` (in the unit of ``layer``'s ``D_STATE_UNIT``)."""
        return self.d_state[block] if isinstance(self.d_state, list) else self.d_state

    @property
    def d_state_unit(self) -> str:
        """What one unit of ``d_state`` is for this ``layer`` (its class's ``D_STATE_UNIT``)."""
        return LAYER_KINDS[self.layer].D_STATE_UNIT

    @model_validator(mode="after")
    def _selective_settings(self) -> "ModelConfig":
        sizes = self.d_state if isinstance(self.d_state, list) else [self.d_state]
        if any(n < 1 for n in sizes):
            raise ValueError(f"d_state must be >= 1, got {self.d_state}")
        if isinstance(self.d_state, list) and len(self.d_state) != self.n_layers:
            raise ValueError(f"d_state lists {len(self.d_state)} sizes for {self.n_layers} blocks")
        if self.dt_min >= self.dt_max:
            raise ValueError(f"dt_min ({self.dt_min}) must be below dt_max ({self.dt_max})")
        if self.layer == "mamba2":
            inner = self.expand * self.d_model
            if inner % self.headdim or (inner // self.headdim) % self.ngroups:
                raise ValueError(f"mamba2: expand * d_model = {inner} must be a multiple of headdim "
                                 f"({self.headdim}) and the heads a multiple of ngroups ({self.ngroups})")
        return self


class MaskedBatchNorm(nn.Module):
    """Batch norm over (batch, time) of a (B, L, H) tensor whose statistics skip padded positions.

    With ``mask=None`` it equals ``nn.BatchNorm1d(H)`` applied over channels.
    """

    def __init__(self, d_model: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model))
        self.register_buffer("running_mean", torch.zeros(d_model))
        self.register_buffer("running_var", torch.ones(d_model))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: (B, L, H) or (B, H); mask: (B, L) bool. Returns the same shape as x."""
        if mask is None:
            # one fused kernel on the (B*L, H) view: ~4x faster than the masked path below,
            # backward included (BatchNorm of a (M, H) batch normalises over M, as wanted here).
            # Training: the native kernel of shrinkssm.ops.block (torch's where it cannot run).
            flat = x.reshape(-1, x.shape[-1])
            if self.training:
                return batch_norm_rows(flat, self.weight, self.bias, self.running_mean,
                                       self.running_var, self.momentum, self.eps).view_as(x)
            return F.batch_norm(flat, self.running_mean, self.running_var, self.weight, self.bias,
                                False, self.momentum, self.eps).view_as(x)
        if self.training:
            flat = x[mask]                                                     # (M, H)
            mean, var = flat.mean(0), flat.var(0, unbiased=False)
            with torch.no_grad():
                m = flat.shape[0]
                unbiased = var * (m / max(m - 1, 1))
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(unbiased, self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias

    def fork(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``(v, v, x)`` with ``v = self(x, mask)``: one output per consumer in a block (mixer, skip
        term, residual). In training without a mask the native kernel then sums the three
        gradients in its own backward (:func:`shrinkssm.ops.block.batch_norm_fork`)."""
        if mask is not None or not self.training:
            v = self(x, mask)
            return v, v, x
        return batch_norm_fork(x, self.weight, self.bias, self.running_mean, self.running_var,
                               self.momentum, self.eps)


class SSMBlock(nn.Module):
    """norm -> mixer -> GELU -> dropout -> GLU -> dropout -> residual, on (B, L, H).

    The mixer is ``self.lru`` (:class:`LRU`), ``self.selective`` (:class:`SelectiveSSM`) or
    ``self.mamba2`` (:class:`Mamba2SSM`), after ``cfg.layer``; :attr:`mixer` returns whichever it is.
    """

    def __init__(self, cfg: ModelConfig, index: int = 0) -> None:
        super().__init__()
        h = cfg.d_model
        self.norm = MaskedBatchNorm(h) if cfg.norm == "batch" else nn.LayerNorm(h)
        if cfg.layer == "selective":
            self.selective = SelectiveSSM(
                h, cfg.d_state_of(index), expand=cfg.expand, d_conv=cfg.d_conv, dt_rank=cfg.dt_rank,
                dt_min=cfg.dt_min, dt_max=cfg.dt_max, reduction=cfg.selective_reduction,
                surrogate=cfg.selective_surrogate, surrogate_momentum=cfg.surrogate_momentum,
                scan=cfg.scan)
        elif cfg.layer == "mamba2":
            self.mamba2 = Mamba2SSM(
                h, cfg.d_state_of(index), expand=cfg.expand, headdim=cfg.headdim, ngroups=cfg.ngroups,
                d_conv=cfg.d_conv, chunk_size=cfg.chunk_size, dt_min=cfg.dt_min, dt_max=cfg.dt_max,
                scan=cfg.scan, gramian_momentum=cfg.surrogate_momentum, reduction=cfg.mamba2_reduction)
        else:
            self.lru = LRU(h, cfg.d_state_of(index), r_min=cfg.r_min, r_max=cfg.r_max, max_phase=cfg.max_phase,
                           train_gamma=cfg.train_gamma, scan=cfg.scan)
        self.glu = nn.Linear(h, 2 * h)
        self.dropout = nn.Dropout(cfg.dropout)
        # the tail after the mixer as one fused operation when dropout is inactive (False:
        # separate torch operations, the same maths; for tests and benchmarks)
        self.fused_tail = True

    @property
    def mixer(self) -> LRU | SelectiveSSM | Mamba2SSM:
        """The block's SSM layer."""
        for name in ("selective", "mamba2"):
            if hasattr(self, name):
                return getattr(self, name)
        return self.lru

    def _norm(self, x: Tensor, mask: Tensor | None) -> Tensor:
        return self.norm(x, mask) if isinstance(self.norm, MaskedBatchNorm) else self.norm(x)

    def _mix(self, y: Tensor) -> Tensor:
        y = self.dropout(F.gelu(y))
        return self.dropout(F.glu(self.glu(y), dim=-1))

    def forward(self, x: Tensor, mask: Tensor | None = None, *, mean: bool = False) -> Tensor:
        """x: (B, L, H) -> (B, L, H); mask: (B, L) bool, True at valid positions.

        Without active dropout, everything after the mixer (the LRU's skip term ``D u``, GELU,
        GLU and the residual) runs as one fused operation (:func:`shrinkssm.ops.block.glu_block`,
        the same maths in one pass, native on CPU), and the batch norm hands each of its three
        consumers its own output (:meth:`MaskedBatchNorm.fork`); with dropout, separate torch
        operations. ``mean=True`` (no mask) returns the mean of the output over positions,
        ``(B, H)``, which the fused tail computes without writing the (B, L, H) output
        (:func:`shrinkssm.ops.block.glu_block_mean`): the mean pooling after a last block.
        """
        if mean and mask is not None:
            raise ValueError("SSMBlock: mean=True takes no mask (a masked mean is SSMModel.pool's)")
        if not self._fused():
            out = x + self._mix(self.mixer(self._norm(x, mask), mask))
            return out.sum(1) * (1.0 / out.shape[1]) if mean else out
        if isinstance(self.norm, MaskedBatchNorm):
            v, v_skip, x = self.norm.fork(x, mask)
        else:
            v = v_skip = self.norm(x)
        return self._fused_tail(v, v_skip, x, mask, mean)

    def _fused(self) -> bool:
        return self.fused_tail and not (self.training and self.dropout.p > 0)

    def forward_encoded(self, x: Tensor, weight: Tensor, bias: Tensor, *, mean: bool = False) -> Tensor:
        """``self(linear(x, weight, bias), mean=mean)`` for a one-channel input ``x: (B, L, 1)``
        without a mask (the encoder of the first block): in training with batch norm and the fused
        tail, the encoder and the norm run as one operation
        (:func:`shrinkssm.ops.block.encode_norm_fork`)."""
        if not (self._fused() and isinstance(self.norm, MaskedBatchNorm) and self.norm.training
                and not (self._forward_hooks or self._forward_pre_hooks or self.norm._forward_hooks
                         or self.norm._forward_pre_hooks)):
            return self(linear(x, weight, bias), mean=mean)
        n = self.norm
        v, v_skip, h = encode_norm_fork(x, weight, bias, n.weight, n.bias, n.running_mean, n.running_var,
                                        n.momentum, n.eps)
        return self._fused_tail(v, v_skip, h, None, mean)

    def _fused_tail(self, v: Tensor, v_skip: Tensor, x: Tensor, mask: Tensor | None,
                    mean: bool = False) -> Tensor:
        """mixer and fused tail on the normalised ``v`` (twice: mixer and skip term) and the
        residual ``x``; ``mean``: the output's mean over positions (no mask)."""
        mixer, tail = self.mixer, glu_block_mean if mean else glu_block
        if isinstance(mixer, LRU) and not mixer.dense_skip:
            if mask is not None:  # what the LRU does with a mask: padded inputs are zeroed
                v = v_skip = v * mask.unsqueeze(-1).to(v.dtype)
            y = mixer(v, skip=False)
            return tail(x, y, v_skip, mixer.D, self.glu.weight, self.glu.bias)
        return tail(x, mixer(v, mask), None, None, self.glu.weight, self.glu.bias)

    def step(self, x_k: Tensor, state):
        """x_k: (B, H) and the mixer's state (LRU: (B, N) complex; selective: the tuple of
        :meth:`SelectiveSSM.initial_state`) -> ((B, H), new state); needs eval mode for batch norm."""
        y_k, state = self.mixer.step(self._norm(x_k, None), state)
        return x_k + self._mix(y_k), state


class SSMModel(nn.Module):
    """A deep LRU model for classification, per-step regression or language modelling.

    Parameters
    ----------
    config : ModelConfig
    d_input : int
        Input channels C (real inputs), or the vocabulary size when ``tokens=True``.
    d_output : int
        Classes (classification), output channels (regression) or vocabulary size (lm).
    task : {"classification", "regression", "lm"}
    tokens : bool, optional
        Inputs are int64 token ids (embedding encoder) instead of real channels (linear encoder).
        Defaults to True for ``task="lm"``.
    per_step : bool, optional
        An output at every position (no pooling). Defaults to False for classification and True
        otherwise; a sequence-level regression sets it False.
    n_segments : int
        Documents per example, laid end to end (``x: (B, n_segments * L)`` tokens, padded with
        token 0), as in the LRA retrieval task: each is encoded by the same blocks and pooled over
        its non-padding tokens, and the head sees ``[h1, h2, h1 * h2, h1 - h2]`` (two documents).

    Shapes: ``forward(x, mask)`` with ``x: (B, L, C)`` real or ``(B, L)`` int64 and
    ``mask: (B, L)`` bool (True = valid) returns ``(B, d_output)`` when pooled and
    ``(B, L, d_output)`` per step.
    """

    def __init__(self, config: ModelConfig, *, d_input: int, d_output: int,
                 task: str = "classification", tokens: bool | None = None,
                 per_step: bool | None = None, n_segments: int = 1) -> None:
        super().__init__()
        check_choice("task", task, TASKS)
        self.config, self.task = config, task
        self.tokens = task == "lm" if tokens is None else tokens
        self.per_step = task != "classification" if per_step is None else per_step
        if n_segments not in (1, 2) or (n_segments == 2 and (self.per_step or not self.tokens)):
            raise ValueError("n_segments=2 (document pairs) needs pooled outputs over tokens; "
                             f"got n_segments={n_segments}")
        self.n_segments = n_segments
        self.d_input, self.d_output = d_input, d_output
        h = config.d_model
        self.encoder = nn.Embedding(d_input, h) if self.tokens else nn.Linear(d_input, h)
        self.blocks = nn.ModuleList(SSMBlock(config, i) for i in range(config.n_layers))
        self.head = nn.Linear(4 * h if n_segments == 2 else h, d_output)

    # -- compression interface ----------------------------------------------------------------
    def ssm_layers(self) -> list[ShrinkableLayer]:
        """The SSM layers (LRU or selective), first block first."""
        return [block.mixer for block in self.blocks]

    def state_dims(self) -> list[int]:
        """``d_state`` of every SSM layer, in the unit of the model's layer kind
        (:meth:`state_unit`: complex states of an LRU, mean real states per channel of a
        selective layer); the sizes the config's ``model.d_state`` sets."""
        return [int(layer.d_state) for layer in self.ssm_layers()]

    def state_sizes(self) -> list[int]:
        """``state_size`` of every SSM layer: real numbers of recurrent state per sequence and
        step (what the scan pays; the same unit for every layer kind)."""
        return [int(layer.state_size) for layer in self.ssm_layers()]

    def state_unit(self) -> str:
        """What one unit of :meth:`state_dims` is (``D_STATE_UNIT`` of the layers; every block
        of a model has the same kind)."""
        units = sorted({layer.D_STATE_UNIT for layer in self.ssm_layers()})
        return units[0] if len(units) == 1 else "mixed: " + "; ".join(units)

    def layout(self) -> dict:
        """Per-layer shapes that differ from the config after reductions (for checkpoints):
        ``{"layers": [layer.layout(), ...], "state_dims": [...]}`` (``state_dims`` for readers;
        ``layers`` is what :meth:`apply_layout_` rebuilds from)."""
        return {"layers": [layer.layout() for layer in self.ssm_layers()],
                "state_dims": self.state_dims()}

    def apply_layout_(self, layout: dict) -> None:
        """Reshape the layers to a :meth:`layout` (placeholder values) before loading weights.

        Also reads the layouts of checkpoints written before per-layer layouts
        (``{"state_dims", "dense_skip"}`` and, for selective models, ``"selective"``)."""
        layers = self.ssm_layers()
        entries = _layer_layouts(layout)
        if len(entries) != len(layers):
            raise ValueError(f"layout describes {len(entries)} layers, the model has {len(layers)}")
        for i, (layer, entry) in enumerate(zip(layers, entries)):
            entry = {**getattr(layer, "LAYOUT_DEFAULTS", {}), **entry}   # keys added since
            if set(entry) != set(layer.layout()):
                raise ValueError(f"the layout and the model disagree on the kind of layer {i} "
                                 f"(layout keys {sorted(entry)}, the {type(layer).__name__} has "
                                 f"{sorted(layer.layout())})")
            if layer.layout() != entry:
                layer.apply_layout_(entry)
        if "layers" in layout and "state_dims" in layout and list(layout["state_dims"]) != self.state_dims():
            raise ValueError(f"the layout's state_dims {layout['state_dims']} disagree with its layers "
                             f"(which give {self.state_dims()})")

    # -- forward ------------------------------------------------------------------------------
    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """See the class docstring for shapes."""
        if self.n_segments == 2:
            return self._forward_pair(x)
        if not self.per_step and mask is None and self.config.pooling == "mean":
            return self.head(self.features(x, mean=True))                     # (B, d_output)
        h = self.features(x, mask)                                            # (B, L, H)
        if self.per_step:
            return self.head(h)                                               # (B, L, d_output)
        return self.head(self.pool(h, mask))                                  # (B, d_output)

    def features(self, x: Tensor, mask: Tensor | None = None, *, mean: bool = False) -> Tensor:
        """Encoder and blocks: ``(B, L, C)`` or ``(B, L)`` tokens -> ``(B, L, H)``; with
        ``mean=True`` (no mask) their mean over positions, ``(B, H)``, the same as
        ``pool(features(x), None)``, fused into the last block."""
        if mean and mask is not None:
            raise ValueError("SSMModel.features: mean=True takes no mask (use pool(features(x, mask), mask))")
        blocks = list(self.blocks)
        if not blocks:
            h = self.encoder(x) if self.tokens else linear(x, self.encoder.weight, self.encoder.bias)
            return self.pool(h, None) if mean else h
        last = len(blocks) - 1
        if self.tokens:
            h = self.encoder(x)                                               # (B, L, H)
        elif mask is None and x.shape[-1] == 1:
            # one input channel: the first block may fuse the encoder into its batch norm
            h = blocks[0].forward_encoded(x, self.encoder.weight, self.encoder.bias, mean=mean and last == 0)
            blocks = blocks[1:]
            last -= 1
        else:  # nn.Linear's maths
            h = linear(x, self.encoder.weight, self.encoder.bias)
        for i, block in enumerate(blocks):
            h = block(h, mask, mean=True) if mean and i == last else block(h, mask)
        return h

    def _forward_pair(self, x: Tensor) -> Tensor:
        b, total = x.shape
        docs = x.reshape(2 * b, total // 2)                                   # (2B, L): doc 1s, doc 2s interleaved
        mask = docs != 0
        pooled = self.pool(self.features(docs, mask), mask).reshape(b, 2, -1)  # (B, 2, H)
        h1, h2 = pooled[:, 0], pooled[:, 1]
        return self.head(torch.cat([h1, h2, h1 * h2, h1 - h2], dim=-1))      # (B, d_output)

    def pool(self, h: Tensor, mask: Tensor | None) -> Tensor:
        """(B, L, H) -> (B, H): mean over valid positions, or the last valid position."""
        if self.config.pooling == "mean":
            if mask is None:  # sum * (1/L): its backward broadcasts instead of dividing (B, L, H)
                return h.sum(1) * (1.0 / h.shape[1])
            w = mask.to(h.dtype).unsqueeze(-1)                                # (B, L, 1)
            return (h * w).sum(1) / w.sum(1).clamp_min(1.0)
        if mask is None:
            return h[:, -1]
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = torch.where(mask, positions, -1).amax(1).clamp_min(0)          # (B,)
        return h[torch.arange(h.shape[0], device=h.device), last]

    # -- recurrent inference ------------------------------------------------------------------
    def init_states(self, batch_size: int) -> list:
        """Zero states of every layer: (B, N_i) complex tensors for LRUs, the tuples of
        :meth:`SelectiveSSM.initial_state` for selective layers."""
        return [layer.initial_state(batch_size) for layer in self.ssm_layers()]

    @torch.no_grad()
    def step(self, x_k: Tensor, states: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """One position for per-step tasks: ``x_k: (B,) int64 or (B, C)`` -> ``(B, d_output)``.

        The model must be in eval mode (batch norm uses running statistics, dropout is off).
        """
        if not self.per_step:
            raise ValueError("step() is for per-step models (lm, per-step regression)")
        if self.training:
            raise RuntimeError("call model.eval() before step(): batch statistics and dropout "
                               "are not defined for a single position")
        h = self.encoder(x_k)                                                 # (B, H)
        new_states = []
        for block, state in zip(self.blocks, states):
            h, state = block.step(h, state)
            new_states.append(state)
        return self.head(h), new_states


def _layer_layouts(layout: dict) -> list[dict]:
    """The per-layer entries of a model layout, old or new format (:meth:`SSMModel.apply_layout_`)."""
    if "layers" in layout:
        return list(layout["layers"])
    if "selective" in layout:
        return list(layout["selective"])
    dims, dense = layout["state_dims"], layout["dense_skip"]
    if len(dims) != len(dense):
        raise ValueError(f"layout lists {len(dims)} state sizes and {len(dense)} dense_skip flags")
    return [{"d_state": int(n), "dense_skip": bool(d)} for n, d in zip(dims, dense)]
