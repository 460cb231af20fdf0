"""Checkpoints: checksummed, written atomically, checked fully before anything is loaded.

A checkpoint is one ``torch.save`` file (a zip archive) holding a dict:

=================  =========================================================================
``format``         ``"shrinkssm-checkpoint"`` and ``version`` (for a clear error on a stranger)
``step``           optimizer steps done; ``epoch``/``batch`` locate the data iterator
``config``         the resolved run config (dict); ``model_io`` the data-derived sizes
``layout``         per-layer shapes (``SSMModel.layout``), applied before the weights load
``model``          ``model.state_dict()``; ``optimizer`` and ``scheduler`` likewise
``compressor``     reduction history and progress
``rng``            torch (and CUDA) RNG states, so dropout continues as if uninterrupted
``extra``          run bookkeeping (elapsed train seconds, the open metrics window, ...)
``checksum``       SHA-256 of every tensor (by its place in the dict) and of the whole payload
=================  =========================================================================

**Integrity.** torch does not check the zip container's CRCs when it reads, so a flipped byte
inside a tensor would load as a wrong number. :func:`save_checkpoint` therefore stores a SHA-256
digest of each tensor's bytes (with its dtype and shape) and one of the whole payload (every key,
number and string, in order), and :func:`load_checkpoint` recomputes both: any difference is a
:class:`CheckpointError` naming the file and the tensor (or "the other fields") that changed.
Then every field is checked for its type and range, and the weights (``model``) and optimizer
state for finiteness: a checkpoint holding NaN or infinite values is refused unless the caller
passes ``allow_nonfinite=True`` (the CLI's ``--allow-nonfinite``).

**Atomicity.** The payload is serialised in memory, then written to ``.last.pt.tmp-<pid>`` in the
same directory, ``fsync``-ed and ``os.replace``-d over the target (:func:`~.rundir.atomic_write`):
an interruption or a full disk leaves the previous checkpoint intact and the failure is a
:class:`~.rundir.RunDirError` naming the file.

Version 1 files (no checksum) still load, with a warning that they could not be verified.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch

from shrinkssm.train.rundir import atomic_write, os_errors

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "checksum",
           "non_finite_tensors", "FORMAT", "VERSION"]

log = logging.getLogger("shrinkssm")

FORMAT = "shrinkssm-checkpoint"
VERSION = 2
_READABLE = (1, 2)
_REQUIRED = ("step", "epoch", "batch", "config", "model_io", "layout", "model", "optimizer",
             "scheduler", "compressor", "rng", "extra")
_ALGORITHM = "sha256"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt, truncated, malformed or incompatible."""


# -- checksums --------------------------------------------------------------------------------------
def _tensor_digest(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes (any dtype, any device, any strides)."""
    h = hashlib.new(_ALGORITHM)
    h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
    flat = t.detach().to("cpu").resolve_conj().resolve_neg().contiguous().reshape(-1)
    if flat.numel():
        h.update(flat.view(torch.uint8).numpy())
    return h.hexdigest()


def _walk(obj: Any, where: str, h, tensors: dict[str, str]) -> None:
    """Feed a canonical encoding of ``obj`` into ``h``; tensors by their digest, also recorded
    in ``tensors[where]``."""
    if isinstance(obj, torch.Tensor):
        digest = _tensor_digest(obj)
        tensors[where] = digest
        h.update(b"t" + digest.encode())
    elif isinstance(obj, dict):
        h.update(f"{{{len(obj)}".encode())
        for key, value in obj.items():
            _walk(key, where + "{key}", h, tensors)
            _walk(value, f"{where}[{key!r}]" if where else str(key), h, tensors)
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'[' if isinstance(obj, list) else '('}{len(obj)}".encode())
        for index, value in enumerate(obj):
            _walk(value, f"{where}[{index}]", h, tensors)
        h.update(b"]")
    elif isinstance(obj, bool) or obj is None:
        h.update(repr(obj).encode())
    elif isinstance(obj, int):
        h.update(f"i{obj};".encode())
    elif isinstance(obj, float):
        h.update(f"f{obj.hex()};".encode())
    elif isinstance(obj, str):
        data = obj.encode("utf-8", "surrogatepass")
        h.update(f"s{len(data)}:".encode() + data)
    elif isinstance(obj, bytes):
        h.update(f"b{len(obj)}:".encode() + obj)
    else:                                   # torch.dtype, torch.device, ...: their repr is exact
        h.update(f"o{type(obj).__name__}:{obj!r};".encode())


def checksum(payload: dict) -> dict:
    """``{"algorithm", "payload", "tensors"}``: digests of ``payload`` (without its own
    ``checksum`` entry) and of each tensor in it, keyed by place (``model['layer.B_re']``)."""
    h = hashlib.new(_ALGORITHM)
    tensors: dict[str, str] = {}
    _walk({k: v for k, v in payload.items() if k != "checksum"}, "", h, tensors)
    return {"algorithm": _ALGORITHM, "payload": h.hexdigest(), "tensors": tensors}


def _verify(data: dict, path: Path) -> None:
    stored = data.get("checksum")
    if data["version"] < 2:
        log.warning("checkpoint %s was written by an older shrinkssm without a checksum; its "
                    "contents cannot be verified", path)
        return
    if not (isinstance(stored, dict) and stored.get("algorithm") == _ALGORITHM
            and isinstance(stored.get("tensors"), dict) and isinstance(stored.get("payload"), str)):
        raise CheckpointError(f"checkpoint {path} has no valid checksum record; it cannot be "
                              "verified and is refused")
    fresh = checksum(data)
    changed = [k for k, v in fresh["tensors"].items() if stored["tensors"].get(k) != v]
    if changed:
        more = f" and {len(changed) - 1} more" if len(changed) > 1 else ""
        raise CheckpointError(f"checkpoint {path} is corrupt: checksum mismatch in tensor "
                              f"{changed[0]}{more} (the file changed after it was "
                              "written)")
    if fresh["payload"] != stored["payload"]:
        raise CheckpointError(f"checkpoint {path} is corrupt: checksum mismatch in its "
                              "non-tensor fields (step, config, layout, ...)")


# -- field checks -----------------------------------------------------------------------------------
def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_fields(data: dict) -> str | None:
    """The first malformed field, described; None if every field has the type it must have."""
    for key in ("step", "epoch", "batch"):
        if not _is_int(data[key]) or data[key] < 0:
            return f"{key} must be a non-negative integer, got {data[key]!r}"
    for key in ("config", "model_io", "layout", "model", "optimizer", "scheduler", "compressor",
                "rng", "extra"):
        if not isinstance(data[key], dict):
            return f"{key} must be a dict, got {type(data[key]).__name__}"
    io_ = data["model_io"]
    if not (_is_int(io_.get("d_input")) and _is_int(io_.get("d_output"))
            and isinstance(io_.get("task"), str)):
        return f"model_io must hold integers d_input, d_output and a string task, got {io_!r}"
    layout = data["layout"]
    dims, dense = layout.get("state_dims"), layout.get("dense_skip")
    if not (isinstance(dims, list) and dims and all(_is_int(n) and n >= 1 for n in dims)):
        return f"layout.state_dims must be a list of positive integers, got {dims!r}"
    if "layers" in layout:                  # one layout per layer (SSMModel.layout)
        layers = layout["layers"]
        if not (isinstance(layers, list) and len(layers) == len(dims)
                and all(isinstance(entry, dict) for entry in layers)):
            return f"layout.layers must be a list of {len(dims)} layer layouts (dicts), got {layers!r}"
    elif not (isinstance(dense, list) and len(dense) == len(dims)
              and all(isinstance(d, bool) for d in dense)):   # written before per-layer layouts
        return f"layout.dense_skip must be a list of {len(dims)} booleans, got {dense!r}"
    bad = [k for k, v in data["model"].items() if not isinstance(k, str)
           or not isinstance(v, torch.Tensor)]
    if bad:
        return f"model must map parameter names to tensors (entry {bad[0]!r} does not)"
    opt = data["optimizer"]
    if not (isinstance(opt.get("state"), dict) and isinstance(opt.get("param_groups"), list)):
        return "optimizer must hold 'state' (dict) and 'param_groups' (list)"
    comp = data["compressor"]
    if not (isinstance(comp.get("history"), dict) and isinstance(comp.get("stopped"), bool)):
        return "compressor must hold 'history' (dict) and 'stopped' (bool)"
    try:
        from shrinkssm.compress import ReductionHistory
        ReductionHistory.from_dict(comp["history"])
    except (TypeError, KeyError, ValueError, AttributeError) as exc:
        return f"compressor.history is malformed ({type(exc).__name__}: {exc})"
    rng = data["rng"]
    states = rng.get("torch_per_rank")
    size = torch.get_rng_state().numel()
    if not (isinstance(states, list) and states and all(
            isinstance(s, torch.Tensor) and s.dtype == torch.uint8 and s.numel() == size
            for s in states)):
        return f"rng.torch_per_rank must be a list of torch RNG states ({size} bytes each)"
    cuda = rng.get("cuda")
    if cuda is not None and not (isinstance(cuda, list)
                                 and all(isinstance(s, torch.Tensor) for s in cuda)):
        return "rng.cuda must be None or a list of CUDA RNG states"
    extra = data["extra"]
    initial = extra.get("initial_dims")
    if not (isinstance(initial, list) and len(initial) == len(dims)
            and all(_is_int(n) and n >= 1 for n in initial)):
        return f"extra.initial_dims must be a list of {len(dims)} positive integers, got {initial!r}"
    if not _is_number(extra.get("train_seconds")) or extra["train_seconds"] < 0:
        return f"extra.train_seconds must be a non-negative number, got {extra.get('train_seconds')!r}"
    per_rank = extra.get("windows_per_rank", [])
    windows = [extra.get("window")] + (per_rank if isinstance(per_rank, list) else [])
    if not isinstance(per_rank, list) or not all(
            w is None or (isinstance(w, dict) and _is_int(w.get("steps"))
                          and _is_number(w.get("loss")) and _is_number(w.get("seconds"))
                          and isinstance(w.get("stats"), dict)
                          and all(_is_number(v) for v in w["stats"].values()))
            for w in windows):
        return "extra.window(s_per_rank) must hold steps (int), loss, seconds (numbers) and stats"
    return None


def non_finite_tensors(data: dict) -> list[str]:
    """``"model['x'] (3 of 64 values)"`` for each weight or optimizer tensor with NaN/inf."""
    found = []

    def visit(obj, where):
        if isinstance(obj, torch.Tensor):
            # a finite sum proves every entry finite (NaN and inf propagate): one cheap
            # reduction; only a non-finite sum (or an overflow) needs the count
            if (obj.is_floating_point() or obj.is_complex()) and obj.numel() \
                    and not bool(torch.isfinite(obj.sum())):
                bad = int((~torch.isfinite(obj)).sum())
                if bad:
                    found.append(f"{where} ({bad} of {obj.numel()} values)")
        elif isinstance(obj, dict):
            for key, value in obj.items():
                visit(value, f"{where}[{key!r}]")
        elif isinstance(obj, (list, tuple)):
            for index, value in enumerate(obj):
                visit(value, f"{where}[{index}]")

    visit(data["model"], "model")
    visit(data["optimizer"].get("state", {}), "optimizer.state")
    return found


# -- the two entry points -----------------------------------------------------------------------------
def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Atomically write ``payload`` (see the module docstring) with its checksum to ``path``.

    Raises ``ValueError`` for a payload without the required keys and
    :class:`~.rundir.RunDirError` (naming ``path``) if the OS refuses the write; in both cases
    the file at ``path`` is what it was.
    """
    missing = [key for key in _REQUIRED if key not in payload]
    if missing:
        raise ValueError(f"checkpoint payload lacks {missing}")
    path = Path(path)
    body = {"format": FORMAT, "version": VERSION,
            **{k: v for k, v in payload.items() if k != "checksum"}}
    body["checksum"] = checksum(body)
    buffer = io.BytesIO()
    torch.save(body, buffer)
    with os_errors(path.parent, "create the checkpoint directory"):
        path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, buffer.getbuffer())


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu", *,
                    allow_nonfinite: bool = False) -> dict:
    """Read, verify and check a checkpoint; raises :class:`CheckpointError` with the reason.

    The checksum is verified first, then the type of every field, then (unless
    ``allow_nonfinite``) that the weights and optimizer state are finite.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # zip/pickle errors of all kinds mean the same thing to a user
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated and cannot be read "
                              f"({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a shrinkssm checkpoint")
    if data.get("version") not in _READABLE:
        raise CheckpointError(f"{path} has checkpoint format version {data.get('version')}; "
                              f"this shrinkssm reads versions {', '.join(map(str, _READABLE))}")
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: missing {', '.join(missing)}")
    _verify(data, path)
    problem = _check_fields(data)
    if problem is not None:
        raise CheckpointError(f"checkpoint {path} is malformed: {problem}")
    if not allow_nonfinite:
        bad = non_finite_tensors(data)
        if bad:
            more = f" and {len(bad) - 1} more tensor(s)" if len(bad) > 1 else ""
            raise CheckpointError(f"checkpoint {path} holds non-finite values: {bad[0]}{more}; "
                                  "refused (shrinkssm eval/analyze/generate --allow-nonfinite "
                                  "load it anyway)")
    return data
