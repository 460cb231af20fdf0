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
in ``benchmarks/step_cost.py``). On CPU it is :class:`FusedAdamW` / :class:`FusedAdam`: torch's
optimizer with a shorter ``step`` that calls the same fused kernel (bit-identical updates and
state, the same ``state_dict``), without the per-call bookkeeping that costs as much as the update
itself for a model of a few thousand parameters (0.27 -> 0.12 ms a step for the sMNIST model).

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

__all__ = ["FusedAdam", "FusedAdamW", "build_optimizer", "build_scheduler", "WarmupCosine"]


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
    flat = [p for group in groups for p in group["params"]]
    fused = _fused_supported(flat)
    if fused and all(p.device.type == "cpu" for p in flat) and _lean_kernels_present():
        cls = FusedAdamW if cfg.optimizer == "adamw" else FusedAdam
        return cls(groups, betas=tuple(cfg.betas))
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, betas=tuple(cfg.betas), **({"fused": True} if fused else {}))


def _lean_kernels_present() -> bool:
    return hasattr(torch, "_fused_adamw_") and hasattr(torch, "_fused_adam_")


class _LeanFusedStep:
    """``step()`` of torch's fused Adam / AdamW for CPU parameters, straight into the fused kernel.

    The same state (``step`` as a float32 scalar tensor, ``exp_avg``, ``exp_avg_sq``), the same
    kernel calls and arguments as ``torch.optim.Adam(fused=True).step``, hence bit-identical
    parameters and ``state_dict``; what it leaves out is bookkeeping: grouping the tensors by
    device (all are on the CPU), the profiler scope around every call and per-parameter checks
    that the constructor has made. Step pre- and post-hooks (``register_step_pre_hook``, global
    ones) run as in torch. Groups that ask for amsgrad, maximize, capturable, differentiable or a
    tensor learning rate are not taken: the constructor rejects them. Unlike torch's fused step
    it bumps the parameters' version counters, as an in-place update should.
    """

    def __init__(self, params, **kwargs) -> None:
        kwargs["fused"] = True
        super().__init__(params, **kwargs)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        self._check_group(self.param_groups[-1])

    @staticmethod
    def _check_group(group: dict) -> None:
        for key in ("amsgrad", "maximize", "capturable", "differentiable"):
            if group.get(key):
                raise ValueError(f"{key}=True is not supported by this optimizer; use torch.optim")
        if torch.is_tensor(group["lr"]):
            raise ValueError("a tensor learning rate is not supported by this optimizer; use torch.optim")
        if any(p.device.type != "cpu" for p in group["params"]):
            raise ValueError("this optimizer runs on CPU parameters only; use torch.optim")

    def step(self, closure=None):
        from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks
        args, kwargs = (self,), {}
        for hook in (*_global_optimizer_pre_hooks.values(), *self._optimizer_step_pre_hooks.values()):
            result = hook(self, args, kwargs)
            if result is not None:
                raise RuntimeError("step pre-hooks that change the arguments are not supported here")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            for group in self.param_groups:
                kernel = torch._fused_adamw_ if group.get("decoupled_weight_decay") else torch._fused_adam_
                by_dtype: dict = {}
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    if p.grad.is_sparse:
                        raise RuntimeError("Adam does not support sparse gradients")
                    state = self.state[p]
                    if not state:                                 # as torch initialises it
                        state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    lists = by_dtype.setdefault(p.dtype, ([], [], [], [], []))
                    for lst, t in zip(lists, (p, p.grad, state["exp_avg"], state["exp_avg_sq"], state["step"])):
                        lst.append(t)
                beta1, beta2 = group["betas"]
                for params, grads, exp_avgs, exp_avg_sqs, steps in by_dtype.values():
                    torch._foreach_add_(steps, 1)
                    kernel(params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False,
                           lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"],
                           eps=group["eps"], maximize=False, grad_scale=None, found_inf=None)
                    _bump_versions(params)
        for hook in (*self._optimizer_step_post_hooks.values(), *_global_optimizer_post_hooks.values()):
            hook(self, args, kwargs)
        return loss

    step.hooked = True  # tells torch.optim.Optimizer not to wrap step in its profiler scope

    def zero_grad(self, set_to_none: bool = True) -> None:
        """As torch's ``zero_grad``: drop every gradient (``set_to_none``, the default), or detach
        and zero them in place; the default path without torch's profiler scope and dynamo guard
        (about 50 microseconds a step of a small model on a CPU)."""
        if not set_to_none:
            super().zero_grad(set_to_none=False)
            return
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None


_bump = getattr(torch.autograd.graph, "increment_version", None)


def _bump_versions(params: list) -> None:
    """Mark ``params`` as changed in place: torch's fused kernel writes them without bumping
    their version counters (a per-parameter AdamW's in-place ops do), and caches keyed on the
    version (``LRU.system()``, ``lti``'s factorisations) must see the update."""
    if _bump is not None:
        _bump(params)


class FusedAdam(_LeanFusedStep, torch.optim.Adam):
    """``torch.optim.Adam(fused=True)`` for CPU parameters with a shorter step (see
    :class:`_LeanFusedStep`): bit-identical updates and state dict."""


class FusedAdamW(_LeanFusedStep, torch.optim.AdamW):
    """``torch.optim.AdamW(fused=True)`` for CPU parameters with a shorter step (see
    :class:`_LeanFusedStep`): bit-identical updates and state dict."""


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
