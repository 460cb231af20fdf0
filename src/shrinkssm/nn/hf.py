"""Layers from Hugging Face Mamba and Mamba-2 checkpoints on local disk (no download, no
``transformers`` needed).

:func:`from_hf` reads a checkpoint directory as ``save_pretrained`` writes it (``config.json`` and
``model.safetensors``, ``pytorch_model.bin`` or their sharded forms with an ``*.index.json``) of a
``MambaModel`` / ``MambaForCausalLM`` (``model_type: "mamba"``) or ``Mamba2Model`` /
``Mamba2ForCausalLM`` (``model_type: "mamba2"``) and returns the mixers of its blocks as this
package's layers, weights copied: :class:`~shrinkssm.nn.SelectiveSSM` for Mamba,
:class:`~shrinkssm.nn.Mamba2SSM` for Mamba-2. The embedding, the blocks' RMS norms and residuals
and the LM head are not layers of this package and are not returned.

:func:`layer_from_hf` does the same for one mixer from its configuration (a ``config.json`` dict)
and its state dict (the keys of ``MambaMixer`` / ``Mamba2Mixer``).

Parameter correspondence (``E`` inner channels)::

    Mamba-2 (Mamba2Mixer -> Mamba2SSM): every key the same (in_proj, conv1d, dt_bias, A_log, D,
        norm.weight, out_proj); the gated norm over all E channels (norm_group_size = E, as in
        transformers' Mamba2Mixer)
    Mamba (MambaMixer -> SelectiveSSM): in_proj.weight, conv1d.{weight,bias} -> conv.{weight,bias},
        x_proj.weight -> x_proj_weight, dt_proj.{weight,bias}, A_log (E, N), D, out_proj.weight

What is refused, by name: configurations this package's layers do not have (biases on the
projections of a Mamba layer, a convolution without bias, an activation other than SiLU, a
clamp of the Mamba-2 step sizes other than ``(0, inf)``, a non-integer ``expand``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["from_hf", "layer_from_hf", "HF_MODEL_TYPES"]

HF_MODEL_TYPES = ("mamba", "mamba2")
"""The ``model_type`` values of ``config.json`` that :func:`from_hf` reads."""

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


def _expand(cfg: dict, where: str) -> int:
    expand = cfg.get("expand", 2)
    if float(expand) != int(expand):
        raise ValueError(f"{where}: expand={expand} is not an integer; this package's layers need "
                         "an integer expand")
    return int(expand)


def _common_checks(cfg: dict, where: str) -> None:
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"{where}: hidden_act={act!r}; this package's layers use silu")


def _build_mamba2(cfg: dict, where: str) -> nn.Module:
    from shrinkssm.nn.mamba2 import Mamba2SSM

    _common_checks(cfg, where)
    d_model, expand = int(cfg["hidden_size"]), _expand(cfg, where)
    heads, headdim = int(cfg["num_heads"]), int(cfg["head_dim"])
    if heads * headdim != expand * d_model:
        raise ValueError(f"{where}: num_heads * head_dim = {heads * headdim} differs from "
                         f"expand * hidden_size = {expand * d_model}")
    limit = tuple(float(v) for v in cfg.get("time_step_limit", (0.0, math.inf)))
    if limit != (0.0, math.inf):
        raise ValueError(f"{where}: time_step_limit={list(limit)}; this package's Mamba-2 layer "
                         "does not clamp its step sizes (only (0, inf) is read)")
    return Mamba2SSM(d_model, int(cfg["state_size"]), expand=expand, headdim=headdim,
                     ngroups=int(cfg.get("n_groups", 1)), d_conv=int(cfg.get("conv_kernel", 4)),
                     chunk_size=int(cfg.get("chunk_size", 64)),
                     norm_eps=float(cfg.get("layer_norm_epsilon", 1e-5)),
                     norm_group_size=expand * d_model, bias=bool(cfg.get("use_bias", False)),
                     conv_bias=bool(cfg.get("use_conv_bias", True)))


def _build_mamba(cfg: dict, where: str) -> nn.Module:
    from shrinkssm.nn.selective import SelectiveSSM

    _common_checks(cfg, where)
    if cfg.get("use_bias", False):
        raise ValueError(f"{where}: use_bias=true; this package's selective layer has no biases on "
                         "in_proj and out_proj")
    if not cfg.get("use_conv_bias", True):
        raise ValueError(f"{where}: use_conv_bias=false; this package's selective layer's "
                         "convolution has a bias")
    d_model = int(cfg["hidden_size"])
    rank = cfg.get("time_step_rank", "auto")
    rank = math.ceil(d_model / 16) if rank == "auto" else int(rank)
    return SelectiveSSM(d_model, int(cfg["state_size"]), expand=_expand(cfg, where),
                        d_conv=int(cfg.get("conv_kernel", 4)), dt_rank=rank)


_MAMBA_KEYS = {"in_proj.weight": "in_proj.weight", "conv1d.weight": "conv.weight",
               "conv1d.bias": "conv.bias", "x_proj.weight": "x_proj_weight",
               "dt_proj.weight": "dt_proj.weight", "dt_proj.bias": "dt_proj.bias",
               "A_log": "A_log", "D": "D", "out_proj.weight": "out_proj.weight"}


def layer_from_hf(config: dict, mixer_state: dict[str, Tensor], *, dtype: torch.dtype = torch.float32,
                  where: str = "config.json") -> nn.Module:
    """One mixer as this package's layer.

    Parameters
    ----------
    config : dict
        A Hugging Face ``config.json`` (``model_type`` "mamba" or "mamba2").
    mixer_state : dict
        The mixer's tensors under the keys of ``MambaMixer`` / ``Mamba2Mixer`` (module docstring).
    dtype : torch.dtype
        Of the returned layer's parameters.
    where : str
        Named in error messages (the file the config came from).

    Returns
    -------
    :class:`~shrinkssm.nn.SelectiveSSM` ("mamba") or :class:`~shrinkssm.nn.Mamba2SSM` ("mamba2"),
    in eval mode's weights (the caller chooses train or eval).
    """
    kind = config.get("model_type")
    if kind not in HF_MODEL_TYPES:
        raise ValueError(f"{where}: model_type={kind!r}; readable: {', '.join(HF_MODEL_TYPES)}")
    if kind == "mamba2":
        layer = _build_mamba2(config, where)
        mapping = {k: k for k, _ in layer.named_parameters()}   # not the Gramian statistics
    else:
        layer = _build_mamba(config, where)
        mapping = {theirs: ours for theirs, ours in _MAMBA_KEYS.items()}
    missing = sorted(set(mapping) - set(mixer_state))
    extra = sorted(set(mixer_state) - set(mapping))
    if missing or extra:
        raise ValueError(f"{where}: the {kind} mixer's tensors do not match this package's layer "
                         f"(missing {missing}, unexpected {extra})")
    own = layer.state_dict()
    with torch.no_grad():
        for theirs, ours in mapping.items():
            value = mixer_state[theirs]
            if tuple(value.shape) != tuple(own[ours].shape):
                raise ValueError(f"{where}: {theirs} has shape {tuple(value.shape)}, the layer "
                                 f"built from the config expects {tuple(own[ours].shape)}")
            own[ours].copy_(value.to(own[ours].dtype))
    return layer.to(dtype)


def _load_weights(root: Path) -> dict[str, Tensor]:
    """Every tensor of the checkpoint directory ``root`` (single file or shards)."""
    present = [name for name in _WEIGHT_FILES if (root / name).is_file()]
    if not present:
        raise FileNotFoundError(f"{root}: no weights found; expected one of {', '.join(_WEIGHT_FILES)}")
    name = present[0]
    if name.endswith(".index.json"):
        index = json.loads((root / name).read_text())
        files = sorted(set(index["weight_map"].values()))
    else:
        files = [name]
    tensors: dict[str, Tensor] = {}
    for file in files:
        path = root / file
        if file.endswith(".safetensors"):
            try:
                from safetensors.torch import load_file
            except ImportError as err:  # pragma: no cover - depends on the environment
                raise ImportError(f"{path}: reading .safetensors needs the safetensors package "
                                  "(pip install 'shrinkssm[hf]')") from err
            tensors.update(load_file(str(path)))
        else:
            tensors.update(torch.load(path, map_location="cpu", weights_only=True))
    return tensors


def from_hf(path: str | Path, *, dtype: torch.dtype = torch.float32) -> list[nn.Module]:
    """The mixers of a local Hugging Face Mamba / Mamba-2 checkpoint, as this package's layers.

    Parameters
    ----------
    path : str or Path
        A directory with ``config.json`` and the weights (module docstring). Nothing is downloaded.
    dtype : torch.dtype
        Of the returned layers' parameters (float32 or float64).

    Returns
    -------
    list of :class:`~shrinkssm.nn.Mamba2SSM` or :class:`~shrinkssm.nn.SelectiveSSM`, block 0 first.
    """
    root = Path(path)
    cfg_path = root / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path}: not found; from_hf reads a checkpoint directory with "
                                "config.json (as save_pretrained writes it)")
    config = json.loads(cfg_path.read_text())
    if config.get("model_type") not in HF_MODEL_TYPES:
        raise ValueError(f"{cfg_path}: model_type={config.get('model_type')!r}; readable: "
                         f"{', '.join(HF_MODEL_TYPES)}")
    tensors = _load_weights(root)
    n_layers = int(config["num_hidden_layers"])
    layers = []
    for i in range(n_layers):
        prefixes = [f"backbone.layers.{i}.mixer.", f"layers.{i}.mixer."]
        prefix = next((p for p in prefixes if any(k.startswith(p) for k in tensors)), None)
        if prefix is None:
            raise ValueError(f"{root}: no tensors of block {i}'s mixer (looked for "
                             f"{' or '.join(repr(p + '*') for p in prefixes)})")
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        layers.append(layer_from_hf(config, state, dtype=dtype, where=str(cfg_path)))
    return layers
