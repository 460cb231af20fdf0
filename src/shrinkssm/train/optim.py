"""The optimizer and learning-rate schedule of a run.

Parameter groups follow the tags that layers put on their parameters (``shrinkssm.nn.lru``):

* ``"ssm"``      -- ``_lr_group == "ssm"`` (nu, theta, gamma, B of every LRU): learning rate
  ``lr * ssm_lr_factor``, no weight decay (as in the published LRU/CompreSSM optimizer);
* ``"no_decay"`` -- tagged ``_no_weight_decay`` or one-dimensional (biases, norms, D): full
  learning rate, no weight decay;
* ``"decay"``    -- everything else: full learning rate and ``weight_decay``.

The update runs as torch's fused (multi-tensor, one kernel per group) Adam/AdamW where the
parameters' device supports it (CPU and the common accelerators): the same update as the
per-parameter loop to float rounding, at a fraction of its fixed cost on small models (measured
in ``benchmarks/step_cost.py``).

The schedule is linear warm-up then cosine decay (or constant), one multiplier applied to every
group, so the ratio between groups survives. Groups are filled in ``model.named_parameters()``
order, which a reduction does not change (new parameters take the old ones' places): rebuilding
the optimizer of a resumed run gives the same positions, so ``load_state_dict`` maps correctly.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from shrinkssm.nn.lru import SSM_LR_GROUP
from shrinkssm.train.config import TrainConfig

__all__ = ["build_optimizer", "build_scheduler", "WarmupCosine"]


def _group_of(param: nn.Parameter) -> str:
    if getattr(param, "_lr_group", None) == SSM_LR_GROUP:
        return "ssm"
    if getattr(param, "_no_weight_decay", False) or param.ndim < 2:
        return "no_decay"
    return "decay"


def _fused_supported(params: list[nn.Parameter]) -> bool:
    """True if torch's fused Adam/AdamW takes these parameters (floating point, supported device)."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
        devices = set(_get_fused_kernels_supported_devices())
    except ImportError:  # an older torch: fall back to its default implementation
        return False
    return bool(params) and all(p.is_floating_point() and p.device.type in devices for p in params)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (or Adam) with the three groups above; each group carries its ``"name"``.

    Fused (``fused=True``) where :func:`_fused_supported`, torch's default implementation
    otherwise; both give the same updates to float rounding.
    """
    settings = {
        "ssm": dict(lr=cfg.lr * cfg.ssm_lr_factor, weight_decay=0.0),
        "no_decay": dict(lr=cfg.lr, weight_decay=0.0),
        "decay": dict(lr=cfg.lr, weight_decay=cfg.weight_decay),
    }
    params: dict[str, list] = {name: [] for name in settings}
    for param in model.parameters():
        if param.requires_grad:
            params[_group_of(param)].append(param)
    groups = [dict(name=name, params=params[name], **settings[name])
              for name in settings if params[name]]
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    fused = _fused_supported([p for group in groups for p in group["params"]])
    return cls(groups, betas=tuple(cfg.betas), **({"fused": True} if fused else {}))


class WarmupCosine:
    """Multiplier of the peak learning rate at a step: linear warm-up, then cosine to 0 (or 1)."""

    def __init__(self, total_steps: int, warmup_steps: int, schedule: str = "cosine") -> None:
        self.total, self.warmup, self.schedule = total_steps, warmup_steps, schedule

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupCosine(cfg.steps, cfg.warmup_steps, cfg.lr_schedule))
