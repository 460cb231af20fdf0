"""The selective (Mamba-1 style) SSM layer: parameters, forward pass, recurrent step, sizes.

The layer (Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", 2023;
the structure of ``mamba_simple.Mamba``), on ``u: (B, L, H)`` with ``E = expand * H`` channels::

    x, z   = in_proj(u)                       (B, L, E) each; z is the gate
    x      = silu(causal depthwise conv(x))   kernel d_conv
    dt, B(x), C(x) = x_proj(x)                dt: (B, L, dt_rank); B(x), C(x): (B, L, N), shared by channels
    delta  = softplus(dt_proj(dt))            (B, L, E), the input-dependent step size
    h[t]   = exp(delta[t] A) h[t-1] + delta[t] B[t] x[t]     per channel, A = -exp(A_log) (E, N) real
    y[t]   = C[t] . h[t] + D x[t]
    out    = out_proj(y * silu(z))

i.e. the zero-order-hold transition of a diagonal continuous-time ``A`` with Mamba-1's simplified
input term ``delta B`` (``selective_scan_ref``). The scan is
:func:`shrinkssm.ops.selective_scan.selective_scan` (a fused CPU kernel, a chunked plain-torch form
that ``scan="auto"`` uses off the CPU, and a sequential reference).

After a per-channel reduction a channel's states are real (``re_*``) or complex (``cx_*``) with
continuous-time eigenvalues ``alpha``: at run time the transition is ``exp(delta[t] alpha)``, state
``j`` reads ``(M_B B(x))_j`` and writes ``(C(x) M_C^T)_j`` (``(B, L, N) @ (N, R)`` GEMMs), and the
scan runs over the kept states only, channels grouped in buckets padded to the largest rank of the
bucket. The surrogate statistics are in :mod:`~shrinkssm.nn.selective.surrogate`, the reductions in
:mod:`~shrinkssm.nn.selective.reduction`; the mathematics in ``docs/design.md`` §7, measured costs
and results in the README.

Sizes: ``d_state`` is the mean number of real states per channel, rounded up (``N`` for an
unreduced layer); :meth:`SelectiveSSM.channel_orders` gives every channel's order and
:attr:`SelectiveSSM.state_size` their sum (what the scan pays for; a complex state counts 2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shrinkssm._checks import check_choice
from shrinkssm.nn.selective.reduction import REDUCTIONS, SelectiveReducer
from shrinkssm.nn.shrinkable import set_param
from shrinkssm.nn.selective.surrogate import SURROGATES, SurrogateStatistics
from shrinkssm.ops.selective_scan import BACKENDS, ScanLayout, lanes_for, selective_scan

__all__ = ["SelectiveSSM"]


class SelectiveSSM(SurrogateStatistics, SelectiveReducer, nn.Module):
    """Mamba-1 style selective SSM block (equations in :mod:`shrinkssm.nn.selective.layer`); a
    :class:`~shrinkssm.nn.shrinkable.ShrinkableLayer`.

    Parameters
    ----------
    d_model : int
        Width H of the input and output.
    d_state : int
        States N per channel (the width of ``B(x)`` and ``C(x)``).
    expand : int
        ``E = expand * d_model`` channels.
    d_conv : int
        Kernel size of the causal depthwise convolution.
    dt_rank : int, optional
        Rank of the step-size projection; default ``ceil(d_model / 16)`` as in Mamba.
    dt_min, dt_max : float
        ``softplus(dt_proj.bias)`` is drawn log-uniformly in ``[dt_min, dt_max]``.
    dt_init_floor : float
        Smallest initial step.
    reduction : {"per_channel", "shared"}
        What ``reduce_(method="balanced")`` does; :mod:`shrinkssm.nn.selective.reduction`.
    surrogate : {"second_moment", "mean"}
        Which Gramians rank the states; :mod:`shrinkssm.nn.selective.surrogate`.
    surrogate_momentum : float or None
        Weight of a new batch in the surrogate's moving averages; None for a plain average.
    scan : {"auto", "chunked", "native", "ref"}
        Backend of :func:`~shrinkssm.ops.selective_scan.selective_scan`; "auto" is "native" on a
        CPU with the compiled extension and "chunked" on other devices.

    Shapes: ``forward(u: (B, L, H), mask: (B, L) bool) -> (B, L, H)``;
    ``step(u_k: (B, H), state) -> ((B, H), state)`` with ``state`` from :meth:`initial_state`.

    Notes
    -----
    Parameter names never change, only shapes: the reduced-form parameters (``re_*``, ``cx_*``)
    exist from the start with zero states, and ``A_log`` keeps its name with zero columns after a
    per-channel reduction. Optimizers therefore keep their parameter order across reductions and
    resumes; :meth:`reduce_` leaves ``(old, new)`` pairs in ``last_replaced`` for
    :func:`shrinkssm.compress.swap_parameters`. ``A_log`` and the reduced eigenvalue parameters are
    tagged ``_no_weight_decay`` (as in Mamba), as is ``D``.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        *,
        expand: int = 2,
        d_conv: int = 4,
        dt_rank: int | None = None,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init_floor: float = 1e-4,
        reduction: str = "per_channel",
        surrogate: str = "second_moment",
        surrogate_momentum: float | None = 0.1,
        scan: str = "auto",
    ) -> None:
        super().__init__()
        if d_model < 1 or d_state < 1 or expand < 1 or d_conv < 1:
            raise ValueError(f"d_model, d_state, expand and d_conv must be >= 1, got {d_model}, {d_state}, "
                             f"{expand}, {d_conv}")
        if not 0.0 < dt_min < dt_max:
            raise ValueError(f"need 0 < dt_min < dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        check_choice("reduction", reduction, REDUCTIONS)
        check_choice("surrogate", surrogate, SURROGATES)
        if surrogate_momentum is not None and not 0.0 < surrogate_momentum <= 1.0:
            raise ValueError(f"surrogate_momentum must lie in (0, 1] or be None, got {surrogate_momentum}")
        if scan not in BACKENDS:
            raise ValueError(f"unknown selective-scan backend {scan!r}; valid: {', '.join(BACKENDS)}")
        self.d_model, self.expand, self.d_conv = d_model, expand, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank is None else int(dt_rank)
        if self.dt_rank < 1:
            raise ValueError(f"dt_rank must be >= 1, got {dt_rank}")
        self.dt_min, self.dt_max, self.dt_init_floor = dt_min, dt_max, dt_init_floor
        self.reduction, self.surrogate, self.scan = reduction, surrogate, scan
        self.surrogate_momentum = surrogate_momentum
        self.track_surrogate = True
        self._calibrating = False
        self.last_replaced: dict[str, tuple[nn.Parameter, nn.Parameter]] = {}
        self._layout_cache: dict = {}
        E = self.d_inner
        self.in_proj = nn.Linear(d_model, 2 * E, bias=False)
        self.conv = nn.Conv1d(E, E, d_conv, groups=E, padding=d_conv - 1, bias=True)
        self.dt_proj = nn.Linear(self.dt_rank, E, bias=True)
        self.out_proj = nn.Linear(E, d_model, bias=False)
        self._allocate(n_bc=d_state, n_diag=d_state, n_real=0, n_complex=0)
        self.reset_parameters()

    # ----------------------------------------------------------------------------------------
    # parameters and buffers
    # ----------------------------------------------------------------------------------------
    def _allocate(self, n_bc: int, n_diag: int, n_real: int, n_complex: int) -> None:
        """(Re)create every shape-changing parameter and buffer with zeros (see :meth:`apply_layout_`)."""
        E = self.d_inner
        current = self._parameters.get("x_proj_weight")
        like = dict(dtype=current.dtype, device=current.device) if current is not None else \
            dict(dtype=self.in_proj.weight.dtype, device=self.in_proj.weight.device)
        z = lambda *shape: torch.zeros(*shape, **like)  # noqa: E731
        nwd = dict(_no_weight_decay=True)
        self._set_param("x_proj_weight", z(self.dt_rank + 2 * n_bc, E))
        self._set_param("A_log", z(E, n_diag), **nwd)
        if "D" not in self._parameters:
            self._set_param("D", z(E), **nwd)
        self._set_param("re_alpha_log", z(n_real), **nwd)
        self._set_param("re_B", z(n_real, n_bc))
        self._set_param("re_C", z(n_real, n_bc))
        self._set_param("cx_alpha_log", z(n_complex), **nwd)
        self._set_param("cx_alpha_im", z(n_complex), **nwd)
        for name in ("cx_B_re", "cx_B_im", "cx_C_re", "cx_C_im"):
            self._set_param(name, z(n_complex, n_bc))
        dev = like["device"]
        self.register_buffer("re_chan", torch.zeros(n_real, dtype=torch.int64, device=dev))
        self.register_buffer("cx_chan", torch.zeros(n_complex, dtype=torch.int64, device=dev))
        # the surrogate's running means (see :mod:`shrinkssm.nn.selective.surrogate`)
        self.register_buffer("sur_a", z(E, n_diag))               # E[exp(delta A)], diagonal states
        self.register_buffer("sur_a_re", z(n_real))               # E[exp(delta alpha)], real states
        self.register_buffer("sur_a_cx", z(n_complex, 2))         # E[exp(delta alpha)], re | im
        self.register_buffer("sur_dtB", z(E, n_bc))               # E[delta_c B_n]
        self.register_buffer("sur_C", z(n_bc))                    # E[C_n]
        self.register_buffer("sur_BB", z(E, n_bc, n_bc))          # E[delta_c^2 B_n B_m]
        self.register_buffer("sur_CC", z(n_bc, n_bc))             # E[C_n C_m]
        if "sur_steps" not in self._buffers:
            self.register_buffer("sur_steps", torch.zeros((), dtype=torch.int64, device=dev))
        self.register_buffer("sur_steps_states", torch.zeros((), dtype=torch.int64, device=dev))
        self._clear_layouts()

    def _set_param(self, name: str, value: Tensor, **tags) -> nn.Parameter:
        return set_param(self, name, value, **tags)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Mamba's initialisation: S4D-real ``A`` (``A_log = log(1..N)``), ``D = 1``, step sizes
        log-uniform in ``[dt_min, dt_max]`` through ``dt_proj.bias``, ``dt_proj.weight`` uniform
        with scale ``dt_rank^-1/2``, ``x_proj`` like ``nn.Linear``. Only for an unreduced layer."""
        if self.n_real or self.n_complex:
            raise ValueError("reset_parameters is for an unreduced layer")
        E, N = self.d_inner, self.n_diag
        self.A_log.copy_(torch.log(torch.arange(1, N + 1, dtype=torch.float64)).repeat(E, 1))
        self.D.fill_(1.0)
        bound = 1.0 / math.sqrt(E)
        self.x_proj_weight.uniform_(-bound, bound)
        nn.init.uniform_(self.dt_proj.weight, -self.dt_rank ** -0.5, self.dt_rank ** -0.5)
        log_min, log_max = math.log(self.dt_min), math.log(self.dt_max)
        dt = torch.exp(torch.rand(E) * (log_max - log_min) + log_min)
        dt = dt.clamp_min(self.dt_init_floor)
        # inverse of softplus, so that softplus(dt_proj.bias) = dt
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.dt_proj.bias._no_weight_decay = True
        self.reset_surrogate_()


    # -- sizes ---------------------------------------------------------------------------------
    D_STATE_UNIT = "real states per channel (mean over channels, rounded up)"

    @property
    def n_bc(self) -> int:
        """Width of ``B(x)`` and ``C(x)``."""
        return (self.x_proj_weight.shape[0] - self.dt_rank) // 2

    @property
    def n_diag(self) -> int:
        """States per channel in the diagonal (unreduced or shared-reduced) form; 0 after a
        per-channel reduction."""
        return int(self.A_log.shape[1])

    @property
    def n_real(self) -> int:
        return int(self.re_alpha_log.shape[0])

    @property
    def n_complex(self) -> int:
        return int(self.cx_alpha_log.shape[0])

    @property
    def is_balanced_form(self) -> bool:
        """True after a per-channel reduction (states in the transformed form)."""
        return self.n_diag == 0

    def channel_orders(self) -> Tensor:
        """(E,) int64: real states of every channel (a complex state counts 2)."""
        E = self.d_inner
        orders = torch.full((E,), self.n_diag, dtype=torch.int64)
        orders += torch.bincount(self.re_chan.cpu(), minlength=E)
        orders += 2 * torch.bincount(self.cx_chan.cpu(), minlength=E)
        return orders

    @property
    def state_size(self) -> int:
        """Real numbers of recurrent state per sequence and step, summed over the ``E`` channels
        (a complex state counts 2): what the scan pays for. ``E * N`` for an unreduced layer."""
        return self.d_inner * self.n_diag + self.n_real + 2 * self.n_complex

    @property
    def d_state(self) -> int:
        """Mean real states per channel, rounded up (``N`` for an unreduced layer)."""
        return math.ceil(self.state_size / self.d_inner)

    def layout(self) -> dict:
        """Shapes that differ from the construction arguments (for checkpoints)."""
        return {"n_bc": self.n_bc, "n_diag": self.n_diag, "n_real": self.n_real, "n_complex": self.n_complex}

    def apply_layout_(self, layout: dict) -> None:
        """Reshape every shape-changing parameter and buffer (zero placeholders) to a :meth:`layout`,
        before ``load_state_dict`` of a checkpoint. To *reduce* a trained layer use :meth:`reduce_`."""
        keys = {"n_bc", "n_diag", "n_real", "n_complex"}
        if set(layout) != keys:
            raise ValueError(f"a selective layout has the keys {sorted(keys)}, got {sorted(layout)}")
        n_bc, n_diag, n_real, n_complex = (int(layout[k]) for k in ("n_bc", "n_diag", "n_real", "n_complex"))
        if n_bc < 1 or n_diag not in (0, n_bc) or min(n_real, n_complex) < 0 or \
                n_diag + n_real + n_complex == 0:
            raise ValueError(f"inconsistent selective layout {layout}")
        self.last_replaced = {}
        self._allocate(n_bc, n_diag, n_real, n_complex)
        self.last_replaced.clear()

    def extra_repr(self) -> str:
        form = "balanced" if self.is_balanced_form else f"N={self.n_diag}"
        return (f"d_model={self.d_model}, d_inner={self.d_inner}, {form}, d_state={self.d_state}, "
                f"reduction={self.reduction!r}, scan={self.scan!r}")

    # ----------------------------------------------------------------------------------------
    # scan layouts
    # ----------------------------------------------------------------------------------------
    def _clear_layouts(self) -> None:
        """Forget the cached layouts; build the diagonal ones (both precisions) now, so that code
        traced by ``torch.compile`` finds them (building a layout reads tensor data)."""
        self._layout_cache = {}
        for dtype in (torch.float32, torch.float64) if self.n_diag else ():
            self._layout("diag", dtype)

    def _layout(self, kind: str, dtype: torch.dtype) -> tuple[ScanLayout, Tensor | None]:
        """The bucket layout of one kind of states ("diag", "re", "cx"), cached by content."""
        lanes = lanes_for(dtype)
        if kind == "diag":
            key = ("diag", lanes, self.n_diag)
        else:
            chan = (self.re_chan if kind == "re" else self.cx_chan).cpu()
            key = (kind, lanes, chan.numpy().tobytes())
        hit = self._layout_cache.get(key)
        if hit is None:
            if kind == "diag":
                hit = (ScanLayout.shared(self.d_inner, self.n_diag, lanes), None)
            else:
                layout, pos = ScanLayout.ragged(chan, self.d_inner, lanes)
                hit = (layout, pos)
            self._layout_cache[key] = hit
        layout, pos = hit
        return layout, None if pos is None else pos.to(self.D.device)

    # ----------------------------------------------------------------------------------------
    # forward
    # ----------------------------------------------------------------------------------------
    def _check_input(self, u: Tensor, mask: Tensor | None) -> None:
        if u.ndim != 3 or u.shape[-1] != self.d_model:
            raise ValueError(f"expected input of shape (B, L, {self.d_model}), got {tuple(u.shape)}")
        if mask is not None and (mask.shape != u.shape[:2] or mask.dtype != torch.bool):
            raise ValueError(f"mask must be (B, L) = {tuple(u.shape[:2])} bool, got {tuple(mask.shape)} "
                             f"{mask.dtype}")

    def _branch(self, u: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Everything before the scan: x, z, delta: (B, L, E); B(x), C(x): (B, L, N_bc)."""
        L = u.shape[1]
        m = None if mask is None else mask.unsqueeze(-1).to(u.dtype)         # (B, L, 1)
        if m is not None:
            u = u * m
        x, z = self.in_proj(u).chunk(2, dim=-1)                               # (B, L, E) each
        x = self.conv(x.transpose(1, 2))[..., :L].transpose(1, 2)           # causal, (B, L, E)
        x = F.silu(x)
        if m is not None:
            x = x * m
        dt, Bx, Cx = (x @ self.x_proj_weight.T).split([self.dt_rank, self.n_bc, self.n_bc], dim=-1)
        delta = F.softplus(self.dt_proj(dt))                                  # (B, L, E)
        if m is not None:
            delta = delta * m   # zero step: padding leaves the state unchanged
        return x, z, delta, Bx, Cx

    def _ssm(self, x: Tensor, delta: Tensor, Bx: Tensor, Cx: Tensor, mask: Tensor | None = None,
             track: bool = False) -> Tensor:
        """The scan over every kind of state: (B, L, E) without the skip term; updates the surrogate
        statistics when ``track``."""
        y = x.new_zeros(x.shape)
        decays = {}
        if self.n_diag:
            layout, _ = self._layout("diag", x.dtype)
            alpha = layout.pack_shared(-torch.exp(self.A_log))
            out = selective_scan(x, delta, alpha, Bx, Cx, layout, self.scan, return_decay=track)
            y_d, decays["diag"] = out if track else (out, None)
            y = y + y_d
        if self.n_real:
            layout, pos = self._layout("re", x.dtype)
            alpha = layout.pack(-torch.exp(self.re_alpha_log), pos)
            Bs = Bx @ layout.pack(self.re_B, pos).T                              # (B, L, S)
            Cs = Cx @ layout.pack(self.re_C, pos).T
            out = selective_scan(x, delta, alpha, Bs, Cs, layout, self.scan, return_decay=track)
            y_r, dec = out if track else (out, None)
            decays["re"] = None if dec is None else dec[pos]
            y = y + y_r
        if self.n_complex:
            layout, pos = self._layout("cx", x.dtype)
            alpha = layout.pack(torch.complex(-torch.exp(self.cx_alpha_log), self.cx_alpha_im), pos)
            MB = layout.pack(torch.complex(self.cx_B_re, self.cx_B_im), pos)     # (S, N_bc)
            MC = layout.pack(torch.complex(self.cx_C_re, self.cx_C_im), pos)
            Bs = torch.complex(Bx @ MB.real.T, Bx @ MB.imag.T)                   # (B, L, S)
            Cs = torch.complex(Cx @ MC.real.T, Cx @ MC.imag.T)
            out = selective_scan(x, delta, alpha, Bs, Cs, layout, self.scan, return_decay=track)
            y_c, dec = out if track else (out, None)
            decays["cx"] = None if dec is None else dec[pos]
            y = y + y_c
        if track:
            self._track(delta, Bx, Cx, mask, decays)
        return y

    def forward(self, u: Tensor, mask: Tensor | None = None) -> Tensor:
        """Run the block over whole sequences.

        Parameters
        ----------
        u : (B, L, H) float32 or float64
        mask : (B, L) bool, optional
            True at valid positions. Padded positions get a zero input and a zero step, so the
            state passes through them unchanged; the surrogate statistics skip them.

        Returns
        -------
        (B, L, H), dtype of ``u``
        """
        self._check_input(u, mask)
        x, z, delta, Bx, Cx = self._branch(u, mask)
        track = self._calibrating or (self.training and self.track_surrogate)
        y = self._ssm(x, delta, Bx, Cx, mask, track)
        y = (y + x * self.D) * F.silu(z)
        return self.out_proj(y)

    # ----------------------------------------------------------------------------------------
    # recurrent mode
    # ----------------------------------------------------------------------------------------
    def initial_state(self, batch_size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Zero state: conv window ``(B, E, d_conv - 1)``, diagonal states ``(B, E, N)``, real
        reduced states ``(B, R_re)`` and complex reduced states ``(B, R_cx)`` complex."""
        like = dict(dtype=self.D.dtype, device=self.D.device)
        cdtype = {torch.float32: torch.complex64, torch.float64: torch.complex128}[self.D.dtype]
        return (torch.zeros(batch_size, self.d_inner, self.d_conv - 1, **like),
                torch.zeros(batch_size, self.d_inner, self.n_diag, **like),
                torch.zeros(batch_size, self.n_real, **like),
                torch.zeros(batch_size, self.n_complex, dtype=cdtype, device=self.D.device))

    def step(self, u_k: Tensor, state: tuple | None = None) -> tuple[Tensor, tuple]:
        """One position: ``u_k: (B, H)`` -> ``(y_k: (B, H), new state)`` (state from
        :meth:`initial_state`, or None for zeros). Equals :meth:`forward` position by position."""
        if u_k.ndim != 2 or u_k.shape[-1] != self.d_model:
            raise ValueError(f"expected u_k of shape (B, {self.d_model}), got {tuple(u_k.shape)}")
        conv_state, hd, hr, hc = self.initial_state(u_k.shape[0]) if state is None else state
        x, z = self.in_proj(u_k).chunk(2, dim=-1)                             # (B, E)
        window = torch.cat([conv_state, x.unsqueeze(-1)], dim=-1)             # (B, E, d_conv)
        x = F.silu((window * self.conv.weight[:, 0, :]).sum(-1) + self.conv.bias)
        dt, Bx, Cx = (x @ self.x_proj_weight.T).split([self.dt_rank, self.n_bc, self.n_bc], dim=-1)
        delta = F.softplus(self.dt_proj(dt))                                  # (B, E)
        y = x * self.D
        if self.n_diag:
            a = torch.exp(delta.unsqueeze(-1) * -torch.exp(self.A_log))      # (B, E, N)
            hd = a * hd + (delta * x).unsqueeze(-1) * Bx.unsqueeze(1)
            y = y + (hd * Cx.unsqueeze(1)).sum(-1)
        if self.n_real:
            e = delta[:, self.re_chan]                                        # (B, R_re)
            a = torch.exp(e * -torch.exp(self.re_alpha_log))
            hr = a * hr + e * x[:, self.re_chan] * (Bx @ self.re_B.T)
            y = y.index_add(1, self.re_chan, (Cx @ self.re_C.T) * hr)
        if self.n_complex:
            e = delta[:, self.cx_chan]
            alpha = torch.complex(-torch.exp(self.cx_alpha_log), self.cx_alpha_im)
            b = torch.complex(Bx @ self.cx_B_re.T, Bx @ self.cx_B_im.T)
            c = torch.complex(Cx @ self.cx_C_re.T, Cx @ self.cx_C_im.T)
            hc = torch.exp(e * alpha) * hc + e * x[:, self.cx_chan] * b
            y = y.index_add(1, self.cx_chan, (c * hc).real)
        out = self.out_proj(y * F.silu(z))
        return out, (window[..., 1:], hd, hr, hc)
