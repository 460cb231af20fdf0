"""The Mamba-2 layer: parameters, forward pass, recurrent step, sizes.

The block as published (Dao & Gu 2024, "Transformers are SSMs"; the structure of
``mamba_ssm.modules.mamba2.Mamba2`` and of Hugging Face's ``Mamba2Mixer``), on ``u: (b, L, H_model)``
with ``E = expand * d_model`` inner channels split into ``heads = E / headdim`` heads of width
``P = headdim``, and ``G = ngroups`` groups of heads sharing ``B`` and ``C`` (``N = d_state``)::

    z, xBC, dt = in_proj(u)                    z: (b, L, E) the gate; xBC: (b, L, E + 2 G N); dt: (b, L, heads)
    xBC        = silu(causal depthwise conv(xBC))     kernel d_conv, with bias
    x, B, C    = split(xBC)                    x: (b, L, heads, P); B, C: (b, L, G, N)
    dt         = softplus(dt + dt_bias)        (b, L, heads), the step sizes
    A          = -exp(A_log)                   (heads,), one scalar decay rate per head
    y          = SSD scan(x, dt, A, B, C) + D x           (shrinkssm.ops.ssd_scan), D: (heads,)
    y          = RMSNorm_g(y * silu(z)) * norm.weight     gated RMS norm, norm_before_gate=False
    out        = out_proj(y)

The recurrence per head ``h`` of group ``g`` is ``S[t] = exp(dt[t] A) S[t-1] + (dt[t] x[t]) B[t]^T``,
``y[t] = S[t] C[t]`` with a real state ``S: (P, N)`` (:mod:`shrinkssm.ops.ssd_scan`).

The gated RMS norm normalises over groups of ``norm_group_size`` channels of ``E``: ``E / ngroups``
(one group of heads each) in ``mamba_ssm``'s ``Mamba2``, the whole ``E`` in Hugging Face's
``Mamba2Mixer`` (transformers 4.57). Both coincide when ``ngroups = 1``; the default here is
``mamba_ssm``'s, and :func:`shrinkssm.nn.from_hf` sets ``norm_group_size = E`` to reproduce a
Hugging Face model.

Parameter names are those of Hugging Face's mixer (``in_proj.weight``, ``conv1d.weight``,
``conv1d.bias``, ``dt_bias``, ``A_log``, ``D``, ``norm.weight``, ``out_proj.weight``), so a mixer's
state dict loads as it is.

Sizes: ``d_state`` is ``N``, the states per head and per channel of the head (the width of ``B``
and ``C``); :attr:`Mamba2SSM.state_size` = ``heads * P * N = E * N`` real numbers per sequence and
step (what the scan carries; the convolution window is not counted, as for the selective layer).

Reduction (:mod:`~shrinkssm.nn.mamba2.reduction`, the exact form): after it, group ``g``'s scan
reads ``B'_g = T_g^- B_g`` and ``C'_g = T_g^T C_g`` of ``r_g`` states (buffers ``red_in``,
``red_out``); ``in_proj`` and the convolution keep their width ``N``. Then ``state_size`` is
``heads_per_group * P * sum_g r_g`` and ``d_state`` its mean per channel, rounded up. Groups of
equal order share one scan call. The *folded* form (``reduction="folded"``,
:mod:`~shrinkssm.nn.mamba2.folding`) instead folds the transforms into ``in_proj`` and the
convolution and leaves a plain layer of ``d_state = r`` (approximate). Training-mode forward passes gather the groups' Gramians
(:mod:`~shrinkssm.nn.mamba2.gramians`); :func:`shrinkssm.nn.calibrate` gathers them over batches
you choose (for a layer that has not trained, e.g. one from :func:`shrinkssm.nn.from_hf`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shrinkssm.nn.mamba2.gramians import GramianStatistics
from shrinkssm._checks import check_choice
from shrinkssm.nn.mamba2.reduction import REDUCTIONS, Mamba2Reducer
from shrinkssm.ops.ssd_scan import SSD_BACKENDS, resolve_chunk_size, ssd_scan

__all__ = ["Mamba2SSM", "GatedRMSNorm"]


class GatedRMSNorm(nn.Module):
    """``RMSNorm(y * silu(z)) * weight`` over groups of ``group_size`` channels (the gate before
    the norm: ``norm_before_gate=False``).

    Shapes: ``y, z: (..., E)`` -> ``(..., E)``; ``weight: (E,)``; ``E % group_size == 0``. Computed
    in the dtype of ``y`` (float32 at least).
    """

    def __init__(self, d: int, group_size: int, eps: float = 1e-5) -> None:
        super().__init__()
        if group_size < 1 or d % group_size:
            raise ValueError(f"norm_group_size must divide the {d} inner channels, got {group_size}")
        self.group_size, self.eps = group_size, eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, y: Tensor, z: Tensor) -> Tensor:
        dtype = y.dtype
        work = torch.promote_types(dtype, torch.float32)
        h = y.to(work) * F.silu(z.to(work))
        g = h.reshape(*h.shape[:-1], -1, self.group_size)
        g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * g.reshape(h.shape).to(dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, group_size={self.group_size}, eps={self.eps}"


class Mamba2SSM(GramianStatistics, Mamba2Reducer, nn.Module):
    """A Mamba-2 block (equations in :mod:`shrinkssm.nn.mamba2.layer`); a
    :class:`~shrinkssm.nn.shrinkable.ShrinkableLayer` (reduction in
    :mod:`~shrinkssm.nn.mamba2.reduction`).

    Parameters
    ----------
    d_model : int
        Width of the input and output.
    d_state : int
        ``N``: states per head channel, the width of ``B`` and ``C`` (64 or 128 in Mamba-2).
    expand : int
        ``E = expand * d_model`` inner channels.
    headdim : int
        ``P``, channels per head; ``E`` must be a multiple of it (``heads = E / P``).
    ngroups : int
        ``G``, groups of heads sharing ``B`` and ``C``; ``heads`` must be a multiple of it.
    d_conv : int
        Kernel of the causal depthwise convolution over ``(x, B, C)``.
    chunk_size : int or "auto"
        Chunk length of the SSD scan's chunked form; ``"auto"`` picks it from the state width, the
        head width and the sequence length (:func:`shrinkssm.ops.ssd_scan.auto_chunk_size`).
    dt_min, dt_max, dt_init_floor : float
        ``softplus(dt_bias)`` is drawn log-uniformly in ``[dt_min, dt_max]``, at least the floor.
    A_init_range : (float, float)
        ``-A = exp(A_log)`` is drawn uniformly in this range (Mamba-2: (1, 16)).
    norm_eps : float
        Epsilon of the gated RMS norm.
    norm_group_size : int, optional
        Channels per group of the gated RMS norm; default ``E / ngroups`` (module docstring).
    bias : bool
        Biases of ``in_proj`` and ``out_proj`` (Mamba-2: none).
    conv_bias : bool
        Bias of the convolution (Mamba-2: yes).
    scan : {"auto", "chunked", "native", "ref"}
        Backend of :func:`shrinkssm.ops.ssd_scan.ssd_scan` ("auto": the native kernel on a CPU for
        heads whose state is at most 16 KiB, the chunked form otherwise).
    gramian_momentum : float or None
        Weight of a batch in the running Gramians (:mod:`~shrinkssm.nn.mamba2.gramians`); None
        for a plain average. ``track_gramians = False`` stops gathering them.
    reduction : {"exact", "folded"}
        How :meth:`apply_reduction_` reduces (:data:`~shrinkssm.nn.mamba2.reduction.REDUCTIONS`):
        transforms kept as buffers after the convolution (exact), or folded into ``in_proj`` and
        the convolution, leaving a plain layer with ``d_state = r`` (approximate).

    Shapes: ``forward(u: (b, L, d_model), mask: (b, L) bool) -> (b, L, d_model)``;
    ``step(u_k: (b, d_model), state) -> ((b, d_model), state)`` with ``state`` from
    :meth:`initial_state`.
    """

    LAYOUT_DEFAULTS = {"ranks": None}
    """Layout keys a checkpoint written before them lacks, with the value they then mean."""

    D_STATE_UNIT = ("states per head channel (N, the width of B and C; after a reduction the mean "
                    "group order, rounded up; state_size E*N)")

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        *,
        expand: int = 2,
        headdim: int = 64,
        ngroups: int = 1,
        d_conv: int = 4,
        chunk_size: int | str = "auto",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init_floor: float = 1e-4,
        A_init_range: tuple[float, float] = (1.0, 16.0),
        norm_eps: float = 1e-5,
        norm_group_size: int | None = None,
        bias: bool = False,
        conv_bias: bool = True,
        scan: str = "auto",
        gramian_momentum: float | None = 0.1,
        reduction: str = "exact",
    ) -> None:
        super().__init__()
        check_choice("reduction", reduction, REDUCTIONS)
        for name, v in (("d_model", d_model), ("d_state", d_state), ("expand", expand),
                        ("headdim", headdim), ("ngroups", ngroups), ("d_conv", d_conv)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        resolve_chunk_size(chunk_size, 1, 1, 1, 1, 1)          # raises on anything but int >= 1, "auto"
        E = expand * d_model
        if E % headdim:
            raise ValueError(f"the inner width expand * d_model = {E} must be a multiple of headdim "
                             f"({headdim})")
        heads = E // headdim
        if heads % ngroups:
            raise ValueError(f"the {heads} heads (expand * d_model / headdim) must be a multiple of "
                             f"ngroups ({ngroups})")
        if not 0.0 < dt_min < dt_max:
            raise ValueError(f"need 0 < dt_min < dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        if not 0.0 < A_init_range[0] <= A_init_range[1]:
            raise ValueError(f"A_init_range must be (low, high) with 0 < low <= high, got {A_init_range}")
        if scan not in SSD_BACKENDS:
            raise ValueError(f"unknown SSD-scan backend {scan!r}; valid: {', '.join(SSD_BACKENDS)}")
        if gramian_momentum is not None and not 0.0 < gramian_momentum <= 1.0:
            raise ValueError(f"gramian_momentum must lie in (0, 1] or be None, got {gramian_momentum}")
        self.gramian_momentum = gramian_momentum
        self.reduction = reduction
        self.track_gramians = True
        self._calibrating = False      # True inside calibrating() (nn.calibration)
        self.ranks: list[int] | None = None
        self.d_model, self.expand, self.headdim, self.ngroups = d_model, expand, headdim, ngroups
        self.d_conv, self.chunk_size, self.scan = d_conv, chunk_size, scan
        self.d_inner, self.nheads, self.n = E, heads, d_state
        self.dt_min, self.dt_max, self.dt_init_floor = dt_min, dt_max, dt_init_floor
        self.A_init_range = (float(A_init_range[0]), float(A_init_range[1]))
        self.last_replaced: dict = {}
        self._build_projections(bias, conv_bias)
        self.dt_bias = nn.Parameter(torch.zeros(heads))
        self.A_log = nn.Parameter(torch.zeros(heads))
        self.D = nn.Parameter(torch.ones(heads))
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True
        self.norm = GatedRMSNorm(E, E // ngroups if norm_group_size is None else int(norm_group_size),
                                 norm_eps)
        self.out_proj = nn.Linear(E, d_model, bias=bias)
        self.register_buffer("gram_steps", torch.zeros((), dtype=torch.int64))
        self._allocate_reduction(None)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Mamba-2's initialisation: ``-A`` uniform in ``A_init_range``, ``D = 1``, step sizes
        log-uniform in ``[dt_min, dt_max]`` through ``dt_bias`` (inverse softplus), the
        projections and the convolution as ``nn.Linear`` / ``nn.Conv1d`` draw them, norm weight 1."""
        H = self.nheads
        self.A_log.copy_(torch.log(torch.empty(H).uniform_(*self.A_init_range)))
        self.D.fill_(1.0)
        log_min, log_max = math.log(self.dt_min), math.log(self.dt_max)
        dt = torch.exp(torch.rand(H) * (log_max - log_min) + log_min).clamp_min(self.dt_init_floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.norm.weight.fill_(1.0)

    def _build_projections(self, bias: bool, conv_bias: bool, like: dict | None = None) -> None:
        """(Re)create ``in_proj`` (``d_model -> E + conv_dim + heads``) and the depthwise ``conv1d``
        (``conv_dim`` channels) for the current width ``N`` (``self.n``), freshly initialised."""
        like = like or {}
        conv_dim = self.conv_dim
        self.in_proj = nn.Linear(self.d_model, self.d_inner + conv_dim + self.nheads, bias=bias, **like)
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, self.d_conv, groups=conv_dim,
                                padding=self.d_conv - 1, bias=conv_bias, **like)

    def _set_width_(self, n: int) -> None:
        """Make ``B`` and ``C`` of width ``n``: new ``in_proj`` and ``conv1d`` (values to be written
        by the caller), the old and new parameters recorded in ``last_replaced``
        (``"in_proj.weight"``, ...), the reduction's buffers reallocated unreduced."""
        old = {name: p for name, p in self.named_parameters() if name.startswith(("in_proj.", "conv1d."))}
        like = dict(dtype=self.in_proj.weight.dtype, device=self.in_proj.weight.device)
        self.n = int(n)
        self._build_projections(self.in_proj.bias is not None, self.conv1d.bias is not None, like)
        new = dict(self.named_parameters())
        for name, p in old.items():
            self.last_replaced[name] = (p, new[name])
        self._allocate_reduction(None)

    def _allocate_reduction(self, ranks: list[int] | None) -> None:
        """(Re)create the reduced form's buffers for group orders ``ranks`` (None: unreduced) with
        zeros: ``red_in``, ``red_out`` ``(sum r_g, N)`` (None when unreduced, so absent from the
        state dict) and the running Gramians ``gram_P``, ``gram_Q`` ``(G, M, M)``, ``M = max r_g``.
        ``gram_steps`` is kept."""
        like = dict(dtype=self.D.dtype, device=self.D.device)
        self.ranks = None if ranks is None else [int(r) for r in ranks]
        M = self.n if ranks is None else max(self.ranks)
        R = None if ranks is None else sum(self.ranks)
        for name in ("red_in", "red_out"):
            self.register_buffer(name, None if R is None else torch.zeros(R, self.n, **like))
        self.register_buffer("gram_P", torch.zeros(self.ngroups, M, M, **like))
        self.register_buffer("gram_Q", torch.zeros(self.ngroups, M, M, **like))

    # -- sizes ---------------------------------------------------------------------------------
    @property
    def group_ranks(self) -> list[int]:
        """The scan's states per head channel in each group: ``[N] * G`` unreduced, else ``r_g``."""
        return [self.n] * self.ngroups if self.ranks is None else list(self.ranks)

    @property
    def d_state(self) -> int:
        """``N`` unreduced (the width of ``B`` and ``C``); after a reduction the mean group order,
        rounded up (``ceil(state_size / E)``)."""
        return math.ceil(self.state_size / self.d_inner)

    @property
    def state_size(self) -> int:
        """Real numbers of recurrent state per sequence and step: ``heads_per_group * P * sum_g r_g``
        (``E * N`` unreduced)."""
        return (self.nheads // self.ngroups) * self.headdim * sum(self.group_ranks)

    @property
    def conv_dim(self) -> int:
        """Channels of the convolution: ``E + 2 G N``."""
        return self.d_inner + 2 * self.ngroups * self.n

    def layout(self) -> dict:
        """Shapes for checkpoints: ``{"d_state": N, "ranks": None | [r_g, ...]}`` (``N`` the width
        of ``B`` and ``C``, smaller than the configured one after a folded reduction; ``ranks``
        the group orders of the exact reduced form)."""
        return {"d_state": self.n, "ranks": None if self.ranks is None else list(self.ranks)}

    def apply_layout_(self, layout: dict) -> None:
        """Reshape the reduced form's buffers (zero placeholders) to a :meth:`layout`, before
        ``load_state_dict`` of a checkpoint. To *reduce* a trained layer use the protocol
        (:meth:`plan_reduction`, :meth:`apply_reduction_`)."""
        if "d_state" not in layout or not set(layout) <= {"d_state", "ranks"}:
            raise ValueError(f"a mamba2 layout has the keys ['d_state', 'ranks'] ('ranks' may be "
                             f"absent in checkpoints written before the reduction), got {sorted(layout)}")
        width = int(layout["d_state"])
        if not 1 <= width <= self.n:
            raise ValueError(f"the checkpoint's mamba2 layer has B and C of width {layout['d_state']}, "
                             f"this model's {self.n} (a reduction only shrinks them)")
        ranks = layout.get("ranks")
        if ranks is not None:
            ranks = [int(r) for r in ranks]
            if len(ranks) != self.ngroups or not all(1 <= r <= width for r in ranks):
                raise ValueError(f"a mamba2 layout's ranks are one order in [1, {width}] per group "
                                 f"({self.ngroups}), got {layout['ranks']}")
        if width != self.n:                                      # a folded reduction
            self._set_width_(width)
        self.last_replaced = {}
        self._allocate_reduction(ranks)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Checkpoints written before the reduction have no Gramian buffers: they load with
        empty statistics (zeros, ``gram_steps`` 0)."""
        for name in ("gram_steps", "gram_P", "gram_Q"):
            state_dict.setdefault(prefix + name, getattr(self, name).detach().clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        reduced = "" if self.ranks is None else f", ranks={self.ranks}"
        return (f"d_model={self.d_model}, d_inner={self.d_inner}, heads={self.nheads}, "
                f"headdim={self.headdim}, ngroups={self.ngroups}, d_state={self.n}{reduced}, "
                f"chunk_size={self.chunk_size!r}, scan={self.scan!r}, reduction={self.reduction!r}")

    # -- forward -------------------------------------------------------------------------------
    def _split_proj(self, zxbcdt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """in_proj output (..., E + conv_dim + heads) -> z (..., E), xBC (..., conv_dim), dt (..., heads)."""
        return zxbcdt.split([self.d_inner, self.conv_dim, self.nheads], dim=-1)

    def _split_xbc(self, xbc: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(..., conv_dim) -> x (..., heads, P), B (..., G, N), C (..., G, N)."""
        GN = self.ngroups * self.n
        x, B, C = xbc.split([self.d_inner, GN, GN], dim=-1)
        lead = xbc.shape[:-1]
        return (x.reshape(*lead, self.nheads, self.headdim), B.reshape(*lead, self.ngroups, self.n),
                C.reshape(*lead, self.ngroups, self.n))

    def forward(self, u: Tensor, mask: Tensor | None = None) -> Tensor:
        """Run the block over whole sequences.

        Parameters
        ----------
        u : (b, L, d_model) float32 or float64
        mask : (b, L) bool, optional
            True at valid positions. Padded positions get a zero input and a zero step, so the
            state passes through them unchanged.

        Returns
        -------
        (b, L, d_model), dtype of ``u``
        """
        if u.ndim != 3 or u.shape[-1] != self.d_model:
            raise ValueError(f"expected input of shape (B, L, {self.d_model}), got {tuple(u.shape)}")
        if mask is not None and (mask.shape != u.shape[:2] or mask.dtype != torch.bool):
            raise ValueError(f"mask must be (B, L) = {tuple(u.shape[:2])} bool, got {tuple(mask.shape)} "
                             f"{mask.dtype}")
        L = u.shape[1]
        m = None if mask is None else mask.unsqueeze(-1).to(u.dtype)
        if m is not None:
            u = u * m
        z, xbc, dt = self._split_proj(self.in_proj(u))
        xbc = F.silu(self.conv1d(xbc.transpose(1, 2))[..., :L].transpose(1, 2))
        if m is not None:
            xbc = xbc * m
        x, B, C = self._split_xbc(xbc)
        dt = F.softplus(dt + self.dt_bias)                                   # (b, L, heads)
        if m is not None:
            dt = dt * m   # zero step: padding leaves the state unchanged
        A = -torch.exp(self.A_log)
        track = self._calibrating or (self.training and self.track_gramians)
        if self.ranks is None:
            y = ssd_scan(x, dt, A, B, C, chunk_size=self.chunk_size, backend=self.scan)
            if track:
                self._track_gramians(x, dt, A, list(B.unbind(2)), list(C.unbind(2)), mask)
        else:
            Bs, Cs = self._reduced_bc(B, C)
            y = self._reduced_scan(x, dt, A, Bs, Cs)
            if track:
                self._track_gramians(x, dt, A, Bs, Cs, mask)
        y = y + x * self.D[:, None]
        y = self.norm(y.reshape(*y.shape[:2], self.d_inner), z)
        return self.out_proj(y)

    def _reduced_bc(self, B: Tensor, C: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """``B, C: (..., G, N)`` -> per group ``B'_g = B_g T_g^-^T``, ``C'_g = C_g T_g``: ``(..., r_g)``."""
        Bs, Cs, off = [], [], 0
        for g, r in enumerate(self.ranks):
            Bs.append(B[..., g, :] @ self.red_in[off:off + r].T)
            Cs.append(C[..., g, :] @ self.red_out[off:off + r].T)
            off += r
        return Bs, Cs

    def _reduced_scan(self, x: Tensor, dt: Tensor, A: Tensor, Bs: list[Tensor], Cs: list[Tensor]
                      ) -> Tensor:
        """The SSD scan of the reduced form: one call per distinct group order (the groups of that
        order and their heads); ``x (b, L, heads, P)`` -> ``(b, L, heads, P)``."""
        buckets: dict[int, list[int]] = {}
        for g, r in enumerate(self.ranks):
            buckets.setdefault(r, []).append(g)
        if len(buckets) == 1:
            return ssd_scan(x, dt, A, torch.stack(Bs, 2), torch.stack(Cs, 2),
                            chunk_size=self.chunk_size, backend=self.scan)
        rep = self.nheads // self.ngroups
        parts, order = [], []
        for groups in buckets.values():
            heads = torch.cat([torch.arange(g * rep, (g + 1) * rep) for g in groups]).to(x.device)
            parts.append(ssd_scan(x[:, :, heads], dt[:, :, heads], A[heads],
                                  torch.stack([Bs[g] for g in groups], 2),
                                  torch.stack([Cs[g] for g in groups], 2),
                                  chunk_size=self.chunk_size, backend=self.scan))
            order.append(heads)
        inverse = torch.argsort(torch.cat(order))
        return torch.cat(parts, dim=2)[:, :, inverse]

    # -- recurrent mode ------------------------------------------------------------------------
    def initial_state(self, batch_size: int) -> tuple[Tensor, Tensor]:
        """Zero state: the convolution window ``(b, conv_dim, d_conv - 1)`` (the last inputs of
        ``xBC``, oldest first) and the SSM state ``(b, heads, P, M)``: ``M = N`` unreduced, the
        largest group order after a reduction (groups of smaller order padded with states that
        stay zero)."""
        like = dict(dtype=self.D.dtype, device=self.D.device)
        return (torch.zeros(batch_size, self.conv_dim, self.d_conv - 1, **like),
                torch.zeros(batch_size, self.nheads, self.headdim, max(self.group_ranks), **like))

    def step(self, u_k: Tensor, state: tuple[Tensor, Tensor] | None = None
             ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """One position: ``u_k: (b, d_model)`` -> ``(y_k: (b, d_model), new state)`` (state from
        :meth:`initial_state`, or None for zeros). Equals :meth:`forward` position by position."""
        if u_k.ndim != 2 or u_k.shape[-1] != self.d_model:
            raise ValueError(f"expected u_k of shape (B, {self.d_model}), got {tuple(u_k.shape)}")
        conv_state, S = self.initial_state(u_k.shape[0]) if state is None else state
        z, xbc, dt = self._split_proj(self.in_proj(u_k))
        window = torch.cat([conv_state, xbc.unsqueeze(-1)], dim=-1)         # (b, conv_dim, d_conv)
        xbc = (window * self.conv1d.weight[:, 0, :]).sum(-1)
        if self.conv1d.bias is not None:
            xbc = xbc + self.conv1d.bias
        x, B, C = self._split_xbc(F.silu(xbc))                                # (b, heads, P), (b, G, N)
        if self.ranks is not None:                                           # (b, G, M), zero-padded
            M = max(self.ranks)
            Bs, Cs = self._reduced_bc(B, C)
            B = torch.stack([F.pad(t, (0, M - t.shape[-1])) for t in Bs], 1)
            C = torch.stack([F.pad(t, (0, M - t.shape[-1])) for t in Cs], 1)
        rep = self.nheads // self.ngroups
        Bh, Ch = B.repeat_interleave(rep, dim=1), C.repeat_interleave(rep, dim=1)   # (b, heads, N)
        dt = F.softplus(dt + self.dt_bias)                                   # (b, heads)
        a = torch.exp(dt * -torch.exp(self.A_log))
        S = a[..., None, None] * S + (dt[..., None] * x)[..., None] * Bh[:, :, None, :]
        y = (S * Ch[:, :, None, :]).sum(-1) + x * self.D[:, None]           # (b, heads, P)
        out = self.out_proj(self.norm(y.reshape(y.shape[0], self.d_inner), z))
        return out, (window[..., 1:], S)
