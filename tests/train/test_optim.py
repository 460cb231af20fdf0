"""Tests of shrinkssm.train.optim: parameter groups and the fused optimizer."""

import copy

import pytest
import torch
import torch.nn.functional as F

from shrinkssm.nn import ModelConfig, SSMModel
from shrinkssm.train.config import TrainConfig
from shrinkssm.train.optim import build_optimizer


def _model():
    torch.manual_seed(0)
    return SSMModel(ModelConfig(d_model=8, d_state=10), d_input=2, d_output=3)


def test_groups_follow_the_tags():
    opt = build_optimizer(_model(), TrainConfig(lr=0.01, ssm_lr_factor=0.5, weight_decay=0.05))
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["ssm"]["lr"] == pytest.approx(0.005) and groups["ssm"]["weight_decay"] == 0.0
    assert groups["decay"]["weight_decay"] == 0.05 and groups["no_decay"]["weight_decay"] == 0.0
    assert all(getattr(p, "_lr_group", None) == "ssm" for p in groups["ssm"]["params"])


@pytest.mark.parametrize("name", ["adamw", "adam"])
def test_fused_optimizer_makes_the_updates_of_the_per_parameter_loop(name):
    cfg = TrainConfig(optimizer=name, lr=0.01, weight_decay=0.05)
    model = _model()
    reference = copy.deepcopy(model)
    opt = build_optimizer(model, cfg)
    assert opt.defaults.get("fused") is True                # CPU float32: supported
    ref_opt = type(opt)([{k: v for k, v in g.items() if k != "params"} | {"params": list(r.parameters())}
                         for g, r in zip(opt.param_groups, _regroup(reference, opt, model))],
                        betas=cfg.betas, foreach=False)
    torch.manual_seed(1)
    x, y = torch.randn(6, 20, 2), torch.randint(0, 3, (6,))
    for _ in range(5):
        for m, o in ((model, opt), (reference, ref_opt)):
            F.cross_entropy(m(x), y).backward()
            o.step()
            o.zero_grad()
    for (name_, p), q in zip(model.named_parameters(), reference.parameters()):
        assert not torch.equal(p, _model().state_dict()[name_]), name_    # it moved
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-6), name_


class _Group(torch.nn.Module):
    def __init__(self, params):
        super().__init__()
        self.ps = torch.nn.ParameterList(params)


def _regroup(reference, opt, model):
    """The reference model's parameters, grouped as the optimizer grouped the model's."""
    index = {id(p): i for i, p in enumerate(model.parameters())}
    ref_params = list(reference.parameters())
    return [_Group([ref_params[index[id(p)]] for p in g["params"]]) for g in opt.param_groups]


def test_constant_schedule_without_warmup_keeps_the_learning_rate_of_every_group():
    from shrinkssm.train.optim import WarmupCosine, build_scheduler

    rule = WarmupCosine(total_steps=100, warmup_steps=0, schedule="constant")
    assert [rule(s) for s in (0, 1, 50, 99, 100, 500)] == [1.0] * 6
    cfg = TrainConfig(steps=100, lr=4e-4, ssm_lr_factor=1.0, weight_decay=0.0, lr_schedule="constant",
                      warmup_steps=0)
    opt = build_optimizer(_model(), cfg)
    sched = build_scheduler(opt, cfg)
    seen = []
    for _ in range(100):
        opt.step()
        sched.step()
        seen.append(sorted({g["lr"] for g in opt.param_groups}))
    assert seen == [[4e-4]] * 100
    # cosine, for contrast, has decayed to 0 at the end
    cos = WarmupCosine(total_steps=100, warmup_steps=0, schedule="cosine")
    assert cos(0) == 1.0 and cos(50) == pytest.approx(0.5) and cos(100) == pytest.approx(0.0)
