"""The selective scan of Mamba-style SSMs: a sequential reference, a chunked form and a fused CPU kernel.

For every channel ``c`` (of ``E``) and every state ``i`` of that channel (conventions of
:mod:`shrinkssm.lti`; legend B batch, L length, E channels, S states)::

    h[t, i] = exp(delta[t, c] * alpha[i]) * h[t-1, i] + delta[t, c] * u[t, c] * B[t, i]
    y[t, c] = sum over the states i of channel c of Re(C[t, i] * h[t, i])          (h[-1] = 0)

that is, the zero-order-hold transition ``exp(delta A)`` of a diagonal continuous-time state
matrix with Mamba-1's simplified input term ``delta B u`` (Gu & Dao 2023, ``selective_scan_ref``
in ``mamba_ssm``). The step size ``delta`` and the projections ``B``, ``C`` depend on the input;
``alpha`` (real, or complex for conjugate pairs after a reduction) does not. The layer adds the
skip term ``D u`` itself.

The bucket layout (:class:`ScanLayout`)
---------------------------------------
States are stored so that a fused kernel needs no gathers. Channels are grouped in *buckets* of
``lanes`` channels (one vector: 16 for float32, 8 for float64); bucket ``g`` has ``slots[g]`` slots,
and slot ``s`` holds one state of each channel of the bucket (lane ``l`` is channel
``bucket_chan[g, l]``; -1 marks an empty lane). State ``i`` of the flat ``(S,)`` axis is lane
``i % lanes`` of slot ``i // lanes``. Two ways to feed ``B`` and ``C``:

* **shared** (:meth:`ScanLayout.shared`): every channel has the same ``K`` states and slot ``s`` of
  every bucket reads column ``slot_column[s]`` of ``B, C: (B, L, K)``. This is Mamba's own
  structure (``B(x)`` and ``C(x)`` are shared by all channels); the kernel broadcasts them, so the
  cost is that of ``E * K`` state updates and nothing of size ``(B, L, E * K)`` is stored.
* **per state** (:meth:`ScanLayout.ragged`): ``B, C: (B, L, S)`` give every state its own value
  (after a per-channel balancing transform). Channels may hold different numbers of states: they
  are sorted by that number and each bucket is padded only to its own largest channel ("pad to
  the max rank within buckets"), so the work follows the kept ranks.

Backends (``backend=``)
-----------------------
``"ref"``  plain loop over time (``unbind``), differentiated by autograd; the reference.
``"chunked"``  plain torch on any device, differentiated by autograd, no Python loop over time
(:func:`selective_scan_chunked`, :mod:`shrinkssm.ops._selective_chunked`): chunks of about
``sqrt(L)`` steps, local states and running products of the decays inside every chunk, a carry
over the chunk ends and a fix-up, so about ``2 sqrt(L)`` sequential steps instead of ``L``; only
products of the decays (no logarithms, no division), ``(B, L, S)`` temporaries only. The
backend for GPUs.
``"native"``  the fused C kernel (``shrinkssm.ops._native_scan``: ``sel_forward`` /
``sel_backward``, source ``_native/selective.c``): ``exp(delta alpha)`` is computed on the fly
(vectorised exp and sincos), states are checkpointed every :data:`CHECKPOINT_CHUNK` steps and
recomputed in the backward; float32 and float64, real and complex states. The kernel is the
PyTorch custom operator pair ``shrinkssm::selective_forward`` / ``selective_backward`` (fake
implementations and autograd registered), so ``torch.compile`` and ``torch.export`` trace through
it; in plain eager mode it is called without the dispatcher (:mod:`shrinkssm.ops._op_dispatch`).
``"auto"``  ``"native"`` for CPU tensors when the extension is loaded (``"ref"`` on a CPU without
it, as before), ``"chunked"`` on every other device (:func:`resolve_backend`).

Gradients (torch's complex convention ``dL/dRe + i dL/dIm``), with ``g[t]`` the adjoint of
``h[t]``, ``a[t] = exp(delta alpha)`` and ``w[t] = delta u``::

    g[t] = conj(a[t+1]) g[t+1] + dy[t, c] conj(C[t])
    dC[t] = dy[t, c] conj(h[t]),   dB[t] = w[t] g[t],   dw = Re(g conj(B)),   da = g conj(h[t-1])
    dalpha += delta conj(a) da,    ddelta += Re(da conj(alpha a)) + dw u,   du += dw delta

The tests compare the kernel and the chunked form with the reference, forward and backward, in
float64 / complex128 and with :func:`torch.autograd.gradcheck`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from shrinkssm.ops import _native_backend
from shrinkssm.ops._native_backend import _expect, _real_dtype
from shrinkssm.ops._op_dispatch import OpSpec, call, checked
from shrinkssm.ops._selective_chunked import varying_scan_chunked

__all__ = [
    "BACKENDS",
    "CHECKPOINT_CHUNK",
    "ScanLayout",
    "lanes_for",
    "resolve_backend",
    "selective_scan",
    "selective_scan_chunked",
    "selective_scan_ref",
]

BACKENDS = ("auto", "ref", "chunked", "native")
"""Valid values of ``backend=``."""

CHECKPOINT_CHUNK = 32
"""Steps between stored states in the native forward; the backward recomputes one chunk at a time."""

_LANES = {torch.float32: 16, torch.float64: 8}


def lanes_for(dtype: torch.dtype) -> int:
    """Channels per bucket for a real dtype (one 64-byte vector): 16 for float32, 8 for float64."""
    if dtype not in _LANES:
        raise ValueError(f"the selective scan runs in float32 or float64, got {dtype}")
    return _LANES[dtype]


# ------------------------------------------------------------------------------------------------
# Layout
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ScanLayout:
    """Where every state sits: buckets of ``lanes`` channels, each with its own number of slots.

    Build it with :meth:`shared` or :meth:`ragged`; see the module docstring.

    Attributes
    ----------
    n_channels : int
        E, the channels of ``u``, ``delta`` and ``y``.
    lanes : int
        Channels per bucket (16 for float32, 8 for float64 in the native kernel).
    bucket_chan : (G, lanes) int64
        Channel of each lane; -1 for an empty lane.
    offsets : (G + 1,) int64
        First state of each bucket; ``offsets[-1] = S``. Multiples of ``lanes``.
    slot_column : (S // lanes,) int64 or None
        Shared mode: the column of ``B``/``C`` that each slot reads; None in per-state mode.
    n_columns : int
        K, the width of shared ``B``/``C`` (0 in per-state mode).
    """

    n_channels: int
    lanes: int
    bucket_chan: Tensor
    offsets: Tensor
    slot_column: Tensor | None = None
    n_columns: int = 0

    def __post_init__(self) -> None:
        G = self.bucket_chan.shape[0]
        if self.bucket_chan.ndim != 2 or self.bucket_chan.shape[1] != self.lanes:
            raise ValueError(f"bucket_chan must be (G, {self.lanes}), got {tuple(self.bucket_chan.shape)}")
        if self.offsets.shape != (G + 1,) or int(self.offsets[0]) != 0:
            raise ValueError("offsets must be (G + 1,) starting at 0")
        # a plain int, so that code traced by torch.compile reads it without touching tensor data
        object.__setattr__(self, "_n_states", int(self.offsets[-1]))
        steps = self.offsets.diff()
        if bool((steps < 0).any()) or bool((self.offsets % self.lanes != 0).any()):
            raise ValueError("offsets must be non-decreasing multiples of lanes")
        chans = self.bucket_chan[self.bucket_chan >= 0]
        if chans.numel() and (int(chans.max()) >= self.n_channels or chans.unique().numel() != chans.numel()):
            raise ValueError("bucket_chan must name each channel (< n_channels) at most once")
        if self.slot_column is not None:
            if self.slot_column.shape != (self.n_states // self.lanes,):
                raise ValueError("slot_column must have one entry per slot")
            if self.slot_column.numel() and not 0 <= int(self.slot_column.min()) <= int(
                    self.slot_column.max()) < self.n_columns:
                raise ValueError(f"slot_column entries must lie in [0, {self.n_columns})")

    # -- constructors ---------------------------------------------------------------------------
    @classmethod
    def shared(cls, n_channels: int, n_columns: int, lanes: int) -> "ScanLayout":
        """Every channel has ``n_columns`` states; slot ``n`` of each bucket reads column ``n``.

        The states of an ``(E, K)`` parameter go to the layout with :meth:`pack_shared`.
        """
        if n_channels < 1 or n_columns < 1:
            raise ValueError(f"need n_channels >= 1 and n_columns >= 1, got {n_channels}, {n_columns}")
        G = math.ceil(n_channels / lanes)
        chan = torch.arange(G * lanes, dtype=torch.int64)
        chan = torch.where(chan < n_channels, chan, -1).reshape(G, lanes)
        offsets = torch.arange(G + 1, dtype=torch.int64) * n_columns * lanes
        column = torch.arange(n_columns, dtype=torch.int64).repeat(G)
        return cls(n_channels, lanes, chan, offsets, column, n_columns)

    @classmethod
    def ragged(cls, state_channel: Tensor, n_channels: int, lanes: int) -> tuple["ScanLayout", Tensor]:
        """A per-state layout for states listed with their channel; channels may differ in size.

        Channels are sorted by their number of states (descending, ties by index) and grouped in
        buckets of ``lanes``; a bucket has as many slots as its largest channel.

        Parameters
        ----------
        state_channel : (R,) int64
            Channel of each listed state (any order; states of a channel keep their order).
        n_channels : int
        lanes : int

        Returns
        -------
        layout : ScanLayout
        positions : (R,) int64
            Where each listed state sits on the ``(S,)`` axis (for :meth:`pack`).
        """
        state_channel = torch.as_tensor(state_channel, dtype=torch.int64).cpu()
        if state_channel.ndim != 1:
            raise ValueError("state_channel must be (R,)")
        if state_channel.numel() and not (0 <= int(state_channel.min())
                                          and int(state_channel.max()) < n_channels):
            raise ValueError(f"state_channel entries must lie in [0, {n_channels})")
        counts = torch.bincount(state_channel, minlength=n_channels)
        order = sorted((c for c in range(n_channels) if counts[c] > 0), key=lambda c: (-int(counts[c]), c))
        G = math.ceil(len(order) / lanes)
        chan = torch.full((G, lanes), -1, dtype=torch.int64)
        offsets = torch.zeros(G + 1, dtype=torch.int64)
        lane_of, bucket_of = {}, {}
        for k, c in enumerate(order):
            g, l = divmod(k, lanes)
            chan[g, l] = c
            lane_of[c], bucket_of[c] = l, g
        for g in range(G):
            slots = max(int(counts[c]) for c in order[g * lanes:(g + 1) * lanes])
            offsets[g + 1] = offsets[g] + slots * lanes
        positions = torch.empty(state_channel.numel(), dtype=torch.int64)
        seen = torch.zeros(n_channels, dtype=torch.int64)
        for r, c in enumerate(state_channel.tolist()):
            positions[r] = offsets[bucket_of[c]] + seen[c] * lanes + lane_of[c]
            seen[c] += 1
        return cls(n_channels, lanes, chan, offsets), positions

    # -- properties -----------------------------------------------------------------------------
    @property
    def n_states(self) -> int:
        """S, the length of the padded state axis."""
        return self._n_states

    @property
    def n_buckets(self) -> int:
        return int(self.bucket_chan.shape[0])

    @property
    def is_shared(self) -> bool:
        return self.slot_column is not None

    def state_channel(self) -> Tensor:
        """(S,) int64: the channel of every state of the layout, -1 for padding."""
        out = torch.full((self.n_states,), -1, dtype=torch.int64)
        for g in range(self.n_buckets):
            a, b = int(self.offsets[g]), int(self.offsets[g + 1])
            out[a:b] = self.bucket_chan[g].repeat((b - a) // self.lanes)
        return out

    def state_column(self) -> Tensor:
        """(S,) int64, shared mode: the column of ``B``/``C`` that every state reads."""
        if self.slot_column is None:
            raise ValueError("state_column is defined for shared layouts only")
        return self.slot_column.repeat_interleave(self.lanes)

    # -- moving values in and out ----------------------------------------------------------------
    def pack_shared(self, values: Tensor) -> Tensor:
        """(E, K, ...) per-channel, per-column values -> (S, ...) in this shared layout (0 padding).

        Differentiable (a pad, a reshape and a permutation).
        """
        if not self.is_shared:
            raise ValueError("pack_shared needs a shared layout")
        E, K = self.n_channels, self.n_columns
        if tuple(values.shape[:2]) != (E, K):
            raise ValueError(f"values must start with (E, K) = {(E, K)}, got {tuple(values.shape)}")
        G, W = self.n_buckets, self.lanes
        rest = values.shape[2:]
        padded = torch.cat([values, values.new_zeros(G * W - E, K, *rest)]) if G * W > E else values
        return padded.reshape(G, W, K, *rest).transpose(1, 2).reshape(G * K * W, *rest)

    def pack(self, values: Tensor, positions: Tensor) -> Tensor:
        """(R, ...) listed values -> (S, ...) at ``positions`` (zeros elsewhere); differentiable."""
        out = values.new_zeros(self.n_states, *values.shape[1:])
        return out.index_copy(0, positions.to(values.device), values)


# ------------------------------------------------------------------------------------------------
# Checks
# ------------------------------------------------------------------------------------------------


def _check(u, delta, alpha, B, C, layout) -> None:
    for name, t, nd in (("u", u, 3), ("delta", delta, 3), ("alpha", alpha, 1), ("B", B, 3), ("C", C, 3)):
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")  # noqa: TRY004
        if t.ndim != nd:
            raise ValueError(f"{name} must have {nd} dimensions, got shape {tuple(t.shape)}")
    if not isinstance(layout, ScanLayout):
        raise ValueError(f"layout must be a ScanLayout, got {type(layout).__name__}")  # noqa: TRY004
    if u.dtype not in _LANES:
        raise ValueError(f"u must be float32 or float64, got {u.dtype}")
    if delta.dtype != u.dtype:
        raise ValueError(f"delta is {delta.dtype} but u is {u.dtype}")
    if u.shape != delta.shape:
        raise ValueError(f"u and delta must have the same shape (B, L, E), got {tuple(u.shape)} and "
                         f"{tuple(delta.shape)}")
    nb, L, E = u.shape
    if min(nb, L, E) < 1:
        raise ValueError(f"u must have B, L, E >= 1, got {tuple(u.shape)}")
    if E != layout.n_channels:
        raise ValueError(f"u has {E} channels but the layout {layout.n_channels}")
    complex_of = {torch.float32: torch.complex64, torch.float64: torch.complex128}[u.dtype]
    if alpha.dtype not in (u.dtype, complex_of):
        raise ValueError(f"alpha must be {u.dtype} or {complex_of} (the precision of u), got {alpha.dtype}")
    S = layout.n_states
    if alpha.shape[0] != S:
        raise ValueError(f"alpha must have S = {S} entries (the layout's states), got {alpha.shape[0]}")
    width = layout.n_columns if layout.is_shared else S
    for name, t in (("B", B), ("C", C)):
        if tuple(t.shape) != (nb, L, width):
            what = "K (shared layout)" if layout.is_shared else "S (per-state layout)"
            raise ValueError(f"{name} must have shape (B, L, {what}) = {(nb, L, width)}, "
                             f"got {tuple(t.shape)}")
        if layout.is_shared and t.dtype != u.dtype:
            raise ValueError(f"shared {name} must be real ({u.dtype}), got {t.dtype}")
        if not layout.is_shared and t.dtype != alpha.dtype:
            raise ValueError(f"per-state {name} must have alpha's dtype {alpha.dtype}, got {t.dtype}")
    if alpha.is_complex() and layout.is_shared:
        raise ValueError("complex states need a per-state layout (ScanLayout.ragged)")
    devices = {t.device for t in (u, delta, alpha, B, C)}
    if len(devices) > 1:
        raise ValueError(f"tensors are on different devices: {sorted(map(str, devices))}")


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend ("ref", "chunked" or "native") that ``backend`` means for ``device``.

    ``"auto"`` is ``"native"`` on a CPU when the compiled extension is loaded, ``"ref"`` on a CPU
    without it, and ``"chunked"`` on every other device. Raises ValueError for an unknown name
    or ``"native"`` off the CPU, RuntimeError for ``"native"`` without the extension.
    """
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"unknown selective-scan backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
    if backend == "native":
        if device.type != "cpu":
            raise ValueError(f"backend='native' runs on CPU tensors only, got device {device}")
        _native_backend._require()
        return "native"
    if backend == "auto":
        if device.type != "cpu":
            return "chunked"
        return "native" if _native_backend.native_available() else "ref"
    return backend


# ------------------------------------------------------------------------------------------------
# Reference
# ------------------------------------------------------------------------------------------------


def _expand(u: Tensor, delta: Tensor, alpha: Tensor, B: Tensor, C: Tensor, layout: ScanLayout
            ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The recurrence expanded to every state of the layout.

    Returns the decays ``a = exp(delta alpha)``, the inputs ``b = delta u B`` and the read-outs
    ``C``, each (B, L, S) in alpha's dtype (padding states get a zero step), then the used states
    ``keep`` (R,) int64 and their channels ``kept_chan`` (R,) int64, for :func:`_read_out`. The
    index tensors come from the layout on the CPU, so nothing here waits for the device.
    """
    dev = u.device
    chan = layout.state_channel()                                     # (S,), CPU
    valid = chan >= 0
    keep, kept_chan = valid.nonzero().flatten().to(dev), chan[valid].to(dev)
    ch, valid = chan.clamp_min(0).to(dev), valid.to(dev)
    e = delta[..., ch] * valid                                        # (B, L, S)
    w = e * u[..., ch]                                                # (B, L, S)
    a = torch.exp(e * alpha)                                          # (B, L, S) real or complex
    if layout.is_shared:
        col = layout.state_column().to(dev)
        Bv, Cv = B[..., col], C[..., col]                             # (B, L, S)
    else:
        Bv, Cv = B, C
    return a, w * Bv, Cv, keep, kept_chan


def _read_out(u: Tensor, Cv: Tensor, h: Tensor, keep: Tensor, kept_chan: Tensor) -> Tensor:
    """``y[..., c] = sum over the states i of channel c of Re(C[..., i] h[..., i])``: (B, L, E)."""
    p = Cv * h                                                        # (B, L, S)
    p = p.real if p.is_complex() else p
    return u.new_zeros(u.shape).index_add(2, kept_chan, p.index_select(2, keep))


def selective_scan_ref(u: Tensor, delta: Tensor, alpha: Tensor, B: Tensor, C: Tensor, layout: ScanLayout,
                       return_decay: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Reference selective scan: the recurrence of the module docstring, one step at a time.

    Same parameters and returns as :func:`selective_scan` (without ``backend``).
    """
    _check(u, delta, alpha, B, C, layout)
    a, b, Cv, keep, kept_chan = _expand(u, delta, alpha, B, C, layout)
    h = b.new_zeros(b.shape[0], b.shape[2])                           # (B, S)
    states = []
    for a_t, b_t in zip(a.unbind(1), b.unbind(1)):
        h = a_t * h + b_t
        states.append(h)
    y = _read_out(u, Cv, torch.stack(states, dim=1), keep, kept_chan)  # (B, L, E)
    if return_decay:
        return y, a.detach().sum((0, 1))
    return y


def selective_scan_chunked(u: Tensor, delta: Tensor, alpha: Tensor, B: Tensor, C: Tensor, layout: ScanLayout,
                           return_decay: bool = False, chunk: int | None = None
                           ) -> Tensor | tuple[Tensor, Tensor]:
    """Chunked selective scan in plain torch, any device: no Python loop over time.

    The recurrence expanded to every state is run by
    :func:`shrinkssm.ops._selective_chunked.varying_scan_chunked`: chunks of ``T = chunk`` steps
    (default ``ceil(sqrt(L))``), local states and prefix decays by a ``T``-step loop over every
    chunk at once, a carry over the chunk ends and a fix-up, so the Python-level depth is
    ``T + ceil(L / T) - 1`` (about ``2 sqrt(L)``) sequential steps instead of ``L``. Only products
    of the decays appear (no logarithms or divisions), so strong and near-1 decays over long
    sequences stay finite, values and gradients. Memory: ``(B, L, S)`` tensors only, as in the
    reference: with autograd about eight in the states' dtype (``a``, ``b``, ``C`` expanded to
    every state, then five in the scan), the reference about six; no ``(L, L)`` or ``(T, T)``
    matrix per state.

    Same parameters and returns as :func:`selective_scan` (without ``backend``); ``chunk`` >= 1
    need not divide L.
    """
    _check(u, delta, alpha, B, C, layout)
    a, b, Cv, keep, kept_chan = _expand(u, delta, alpha, B, C, layout)
    y = _read_out(u, Cv, varying_scan_chunked(a, b, chunk), keep, kept_chan)
    if return_decay:
        return y, a.detach().sum((0, 1))
    return y


# ------------------------------------------------------------------------------------------------
# Native kernel
# ------------------------------------------------------------------------------------------------


def _ptr(t: Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()  # an empty output of new_empty(0) is 0 too: "absent"


def _opt(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.contiguous()


def _check_op(op, u, dl, alr, ali, Br, Bi, Cr, Ci, bchan, boff, kidx, K, chunk) -> None:
    """Shapes and dtypes a selective operator hands to C (ValueError naming the argument); the
    kernel itself checks the layout's sizes."""
    nb, L, E = u.shape
    _real_dtype(op, u)
    S, G, lanes = alr.shape[0], bchan.shape[0], _LANES[u.dtype]
    width = K if kidx is not None else S
    if bchan.ndim != 2 or bchan.shape[1] != lanes or chunk < 1 or len({ali is None, Bi is None, Ci is None}) > 1:
        raise ValueError(f"shrinkssm::{op}: need bchan (G, {lanes}), chunk >= 1 and the imaginary parts "
                         "ali, Bi, Ci all given or all None")
    _expect(op, u.dtype, dl=(dl, (nb, L, E)), alr=(alr, (S,)), ali=(ali, (S,)), Br=(Br, (nb, L, width)),
            Bi=(Bi, (nb, L, width)), Cr=(Cr, (nb, L, width)), Ci=(Ci, (nb, L, width)))
    _expect(op, torch.int64, bchan=(bchan, (G, lanes)), boff=(boff, (G + 1,)), kidx=(kidx, (S // lanes,)))


def _sel_forward_impl(
    u: Tensor, dl: Tensor, alr: Tensor, ali: Tensor | None, Br: Tensor, Bi: Tensor | None, Cr: Tensor,
    Ci: Tensor | None, bchan: Tensor, boff: Tensor, kidx: Tensor | None, K: int, chunk: int, save: bool,
    want_decay: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Fused selective scan on real tensors (complex states split into re/im by the caller).

    u, dl: (B, L, E) real; alr, ali: (S,) (ali None for real states); Br, Bi, Cr, Ci: (B, L, K)
    shared (kidx (S // lanes,) int64 given) or (B, L, S) per state; bchan (G, lanes), boff (G + 1,)
    int64: the :class:`ScanLayout`. Returns y (B, L, E); the checkpoints (B, ceil(L / chunk), W)
    when ``save`` and the per-row decay sums (B, W) when ``want_decay`` (else empty), W = S for
    real and 2 S (re parts, then im parts) for complex states.
    """
    _native_backend._require()
    u, dl, alr, Br, Cr, bchan, boff = (t.contiguous() for t in (u, dl, alr, Br, Cr, bchan, boff))
    ali, Bi, Ci, kidx = _opt(ali), _opt(Bi), _opt(Ci), _opt(kidx)
    nb, L, E = u.shape
    S = alr.shape[0]
    cplx = ali is not None
    width = (1 + cplx) * S
    y = u.new_empty(nb, L, E)
    ck = u.new_empty((nb, (L + chunk - 1) // chunk, width) if save else (0,))
    ds = u.new_empty((nb, width) if want_decay else (0,))
    _native_backend._ext.sel_forward(
        int(u.dtype == torch.float64), int(cplx), int(kidx is not None), torch.get_num_threads(), nb, L,
        E, K, bchan.shape[0], S, chunk, _ptr(bchan), _ptr(boff), _ptr(kidx), _ptr(u), _ptr(dl), _ptr(alr),
        _ptr(ali), _ptr(Br), _ptr(Bi), _ptr(Cr), _ptr(Ci), _ptr(y), _ptr(ck), _ptr(ds),
    )
    return y, ck, ds


def _check_sel_forward(u, dl, alr, ali, Br, Bi, Cr, Ci, bchan, boff, kidx, K, chunk, save, want_decay):
    _check_op("selective_forward", u, dl, alr, ali, Br, Bi, Cr, Ci, bchan, boff, kidx, K, chunk)


_sel_forward = torch.library.custom_op("shrinkssm::selective_forward", checked(_check_sel_forward, _sel_forward_impl),
                                      mutates_args=(), device_types="cpu")


@_sel_forward.register_fake
def _(u, dl, alr, ali, Br, Bi, Cr, Ci, bchan, boff, kidx, K, chunk, save, want_decay):
    nb, L, E = u.shape
    width = (1 + (ali is not None)) * alr.shape[0]
    return (u.new_empty(nb, L, E), u.new_empty((nb, (L + chunk - 1) // chunk, width) if save else (0,)),
            u.new_empty((nb, width) if want_decay else (0,)))


def _sel_backward_impl(
    gy: Tensor, u: Tensor, dl: Tensor, alr: Tensor, ali: Tensor | None, Br: Tensor, Bi: Tensor | None,
    Cr: Tensor, Ci: Tensor | None, bchan: Tensor, boff: Tensor, kidx: Tensor | None, ck: Tensor, K: int,
    chunk: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Backward of ``selective_forward`` from the gradient of y (B, L, E) and its checkpoints.

    Returns the gradients of u, dl, Br, Bi, Cr, Ci (their shapes; Bi, Ci empty for real states)
    and the per-row gradient of alpha, (B, W) (W as for the checkpoints), summed by the caller in
    a fixed order.
    """
    _native_backend._require()
    gy = _flat(gy)
    u, dl, alr, Br, Cr, bchan, boff, ck = (t.contiguous() for t in (u, dl, alr, Br, Cr, bchan, boff, ck))
    ali, Bi, Ci, kidx = _opt(ali), _opt(Bi), _opt(Ci), _opt(kidx)
    nb, L, E = u.shape
    S = alr.shape[0]
    cplx = ali is not None
    gu, gdl = torch.empty_like(u), torch.empty_like(u)
    gBr, gCr = torch.empty_like(Br), torch.empty_like(Cr)
    gBi = torch.empty_like(Bi) if cplx else u.new_empty(0)
    gCi = torch.empty_like(Ci) if cplx else u.new_empty(0)
    gal = u.new_empty(nb, (1 + cplx) * S)
    _native_backend._ext.sel_backward(
        int(u.dtype == torch.float64), int(cplx), int(kidx is not None), torch.get_num_threads(), nb, L,
        E, K, bchan.shape[0], S, chunk, _ptr(bchan), _ptr(boff), _ptr(kidx), _ptr(u), _ptr(dl),
        _ptr(alr), _ptr(ali), _ptr(Br), _ptr(Bi), _ptr(Cr), _ptr(Ci), _ptr(ck), _ptr(gy), _ptr(gu),
        _ptr(gdl), _ptr(gBr), _ptr(gBi), _ptr(gCr), _ptr(gCi), _ptr(gal),
    )
    return gu, gdl, gBr, gBi, gCr, gCi, gal


def _check_sel_backward(gy, u, dl, alr, ali, Br, Bi, Cr, Ci, bchan, boff, kidx, ck, K, chunk):
    _check_op("selective_backward", u, dl, alr, ali, Br, Bi, Cr, Ci, bchan, boff, kidx, K, chunk)
    nb, L, E = u.shape
    width = (1 + (ali is not None)) * alr.shape[0]
    _expect("selective_backward", u.dtype, gy=(gy, (nb, L, E)), ck=(ck, (nb, (L + chunk - 1) // chunk, width)))


_sel_backward = torch.library.custom_op("shrinkssm::selective_backward",
                                       checked(_check_sel_backward, _sel_backward_impl), mutates_args=(),
                                       device_types="cpu")
SELECTIVE_BACKWARD = OpSpec(_sel_backward, _sel_backward_impl)


@_sel_backward.register_fake
def _(gy, u, dl, alr, ali, Br, Bi, Cr, Ci, bchan, boff, kidx, ck, K, chunk):
    cplx = ali is not None
    return (torch.empty_like(u), torch.empty_like(u), torch.empty_like(Br),
            torch.empty_like(Bi) if cplx else u.new_empty(0), torch.empty_like(Cr),
            torch.empty_like(Ci) if cplx else u.new_empty(0), u.new_empty(u.shape[0], (1 + cplx) * alr.shape[0]))


def _sel_setup_context(ctx, inputs, output):
    u, dl, alr, ali, Br, Bi, Cr, Ci, bchan, boff, kidx, K, chunk, save, _want_decay = inputs
    if not save:
        return  # no_grad or no differentiable input: backward never runs
    ctx.set_materialize_grads(False)  # no zero gradients for the checkpoints and decay sums
    ctx.K, ctx.chunk = K, chunk
    ctx.save_for_backward(u, dl, alr, ali, Br, Bi, Cr, Ci, bchan, boff, kidx, output[1])


def _sel_backward_formula(ctx, gy, _gck, _gds):
    if not hasattr(ctx, "chunk"):
        raise RuntimeError("shrinkssm::selective_forward was called with save=False; it cannot be "
                           "differentiated (call selective_scan, which sets save when needed)")
    u, dl, alr, ali, Br, Bi, Cr, Ci, bchan, boff, kidx, ck = ctx.saved_tensors
    if gy is None:
        gy = torch.zeros_like(u)
    gu, gdl, gBr, gBi, gCr, gCi, gal = call(SELECTIVE_BACKWARD, gy, u, dl, alr, ali, Br, Bi, Cr, Ci, bchan,
                                            boff, kidx, ck, ctx.K, ctx.chunk)
    S = alr.shape[0]
    gal = gal.sum(0)                                                  # fixed order over rows
    cplx = ali is not None
    galr, gali = (gal[:S], gal[S:]) if cplx else (gal, None)
    if not cplx:
        gBi = gCi = None
    return gu, gdl, galr, gali, gBr, gBi, gCr, gCi, None, None, None, None, None, None, None


_sel_forward.register_autograd(_sel_backward_formula, setup_context=_sel_setup_context)
SELECTIVE_FORWARD = OpSpec(_sel_forward, _sel_forward_impl, _sel_setup_context, _sel_backward_formula)


def _flat(t: Tensor) -> Tensor:
    return t.resolve_conj().resolve_neg().contiguous()


def _selective_scan_native(u, delta, alpha, B, C, layout, return_decay, chunk=None):
    if layout.lanes != _LANES[u.dtype]:
        raise ValueError(f"the native kernel needs a layout with {_LANES[u.dtype]} lanes for {u.dtype} "
                         f"(build it with lanes_for(dtype)), got {layout.lanes}")
    cplx = alpha.is_complex()
    if cplx:
        alr, ali = _flat(alpha.real), _flat(alpha.imag)
        Br, Bi, Cr, Ci = _flat(B.real), _flat(B.imag), _flat(C.real), _flat(C.imag)
    else:
        alr, ali, Br, Bi, Cr, Ci = _flat(alpha), None, _flat(B), None, _flat(C), None
    u, delta = _flat(u), _flat(delta)
    bchan, boff = layout.bucket_chan.contiguous(), layout.offsets.contiguous()
    kidx = layout.slot_column.contiguous() if layout.is_shared else None
    save = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, alr, ali, Br, Bi, Cr, Ci))
    y, _, ds = call(SELECTIVE_FORWARD, u, delta, alr, ali, Br, Bi, Cr, Ci, bchan, boff, kidx,
                    max(layout.n_columns, 1), int(chunk or CHECKPOINT_CHUNK), save, bool(return_decay))
    if not return_decay:
        return y
    decay = ds.detach().sum(0)                                        # (W,), fixed order over rows
    if cplx:
        S = alpha.shape[0]
        decay = torch.complex(decay[:S], decay[S:])
    return y, decay


# ------------------------------------------------------------------------------------------------
# Public entry point
# ------------------------------------------------------------------------------------------------


def selective_scan(u: Tensor, delta: Tensor, alpha: Tensor, B: Tensor, C: Tensor, layout: ScanLayout,
                   backend: str = "auto", return_decay: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Selective scan ``h = exp(delta alpha) h + delta u B``, ``y = sum Re(C h)`` per channel.

    Parameters
    ----------
    u : (B, L, E) float32 or float64
        Input of every channel.
    delta : (B, L, E), dtype of ``u``
        Step sizes (positive in a layer; any real value is accepted).
    alpha : (S,) real (dtype of ``u``) or complex (complex64 with float32, complex128 with float64)
        Continuous-time eigenvalues of the states in the layout's order (padding entries unused).
        Complex states need a per-state layout.
    B, C : (B, L, K) real for a shared layout; (B, L, S), dtype of ``alpha``, for a per-state one
        Input and output projections of every step.
    layout : ScanLayout
        Where every state sits (module docstring). The native kernel needs
        ``layout.lanes == lanes_for(u.dtype)``.
    backend : {"auto", "ref", "chunked", "native"}
        See the module docstring; "auto" is "native" on a CPU with the extension and "chunked"
        off the CPU (:func:`resolve_backend`).
    return_decay : bool
        Also return ``sum over batch and time of exp(delta * alpha)``, (S,) with alpha's dtype,
        detached: the numerator of the mean transition that the layer's LTI surrogate tracks.

    Returns
    -------
    y : (B, L, E), dtype of ``u``
        Without the skip term.
    decay : (S,), only if ``return_decay``

    Raises
    ------
    ValueError
        Bad shapes, dtypes, devices or layout; unknown backend; "native" off the CPU.
    RuntimeError
        ``backend="native"`` without the compiled extension.

    Examples
    --------
    >>> layout = ScanLayout.shared(n_channels=1, n_columns=1, lanes=16)
    >>> u = torch.ones(1, 3, 1)
    >>> B = C = torch.ones(1, 3, 1)
    >>> alpha = layout.pack_shared(torch.full((1, 1), -math.log(2.0)))   # exp(alpha) = 1/2
    >>> selective_scan(u, torch.ones(1, 3, 1), alpha, B, C, layout, backend="ref").flatten()
    tensor([1.0000, 1.5000, 1.7500])
    """
    _check(u, delta, alpha, B, C, layout)
    chosen = resolve_backend(backend, u.device)
    if chosen == "native":
        return _selective_scan_native(u, delta, alpha, B, C, layout, return_decay)
    if chosen == "chunked":
        return selective_scan_chunked(u, delta, alpha, B, C, layout, return_decay)
    return selective_scan_ref(u, delta, alpha, B, C, layout, return_decay)
