"""Tests of shrinkssm.train.optim: parameter groups and the fused optimizer."""

import copy

import pytest
import torch
import torch.nn.functional as F

from shrinkssm.nn import ModelConfig, SSMModel
from shrinkssm.train.config import TrainConfig
from shrinkssm.train.optim import FusedAdam, FusedAdamW, build_optimizer


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
    ref_cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    ref_opt = ref_cls([{k: v for k, v in g.items() if k not in ("params", "fused")} | {"params": list(r.parameters())}
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


@pytest.mark.parametrize("set_to_none", [True, False])
def test_lean_zero_grad_leaves_what_torchs_leaves(set_to_none):
    # the same gradients through FusedAdamW and torch's AdamW(fused=True): after zero_grad every
    # .grad is None (default) or a zero tensor (set_to_none=False) that is the same object as before
    torch.manual_seed(3)
    ps = [torch.randn(4, 3, requires_grad=True), torch.randn(5, requires_grad=True), torch.randn(2, requires_grad=True)]
    qs = [p.detach().clone().requires_grad_() for p in ps]
    opt, ref = FusedAdamW(ps), torch.optim.AdamW(qs, fused=True)
    for t in (ps, qs):
        (t[0].sum() * 2 + t[1].square().sum()).backward()       # t[2] gets no gradient
    before = [p.grad for p in ps]
    opt.zero_grad(set_to_none=set_to_none)
    ref.zero_grad(set_to_none=set_to_none)
    for p, q, g in zip(ps, qs, before):
        if q.grad is None:
            assert p.grad is None
        else:
            assert torch.equal(p.grad, q.grad) and not p.grad.any() and p.grad is g
    assert set_to_none == all(p.grad is None for p in ps)


@pytest.mark.parametrize("cls, torch_cls", [(FusedAdamW, torch.optim.AdamW), (FusedAdam, torch.optim.Adam)])
def test_lean_fused_step_is_bit_identical_to_torchs_fused_optimizer(cls, torch_cls):
    # two groups, float32 and float64 parameters in one group, a parameter without a gradient in
    # some steps: parameters and the whole state dict must equal torch's fused=True bit for bit
    torch.manual_seed(2)
    shapes = [((5, 3), torch.float32), ((7,), torch.float32), ((4,), torch.float64)]
    ps = [torch.randn(*s, dtype=d, requires_grad=True) for s, d in shapes]
    qs = [p.detach().clone().requires_grad_() for p in ps]

    def groups(t):
        return [{"params": t[:2], "lr": 1e-2, "weight_decay": 0.1}, {"params": t[2:], "lr": 3e-3}]
    opt, ref = cls(groups(ps), betas=(0.9, 0.99)), torch_cls(groups(qs), betas=(0.9, 0.99), fused=True)
    calls = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
    for k in range(12):
        for p, q in zip(ps, qs):
            g = torch.randn_like(p)
            p.grad, q.grad = g.clone(), g.clone()
        if k in (3, 4):
            ps[1].grad = qs[1].grad = None
        opt.step()
        ref.step()
    assert all(torch.equal(p, q) for p, q in zip(ps, qs))
    assert str(opt.state_dict()) == str(ref.state_dict())
    assert calls == ["pre", "post"] * 12
    assert all(p._version >= 12 - (i == 1) * 2 for i, p in enumerate(ps))   # each update bumps it
    # its state dict continues in torch's optimizer exactly where it left off
    ref2 = torch_cls(groups([p.detach().clone().requires_grad_() for p in ps]), fused=True)
    ref2.load_state_dict(copy.deepcopy(opt.state_dict()))   # state_dict() hands out the tensors
    for p, q in zip(ps, ref2.param_groups[0]["params"] + ref2.param_groups[1]["params"]):
        p.grad = torch.ones_like(p)
        q.grad = torch.ones_like(q)
    opt.step()
    ref2.step()
    assert all(torch.equal(p, q) for p, q in zip(ps, ref2.param_groups[0]["params"] + ref2.param_groups[1]["params"]))


def test_lean_fused_optimizer_is_what_build_optimizer_gives_on_cpu_and_refuses_what_it_cannot_do():
    opt = build_optimizer(_model(), TrainConfig(optimizer="adamw"))
    assert isinstance(opt, FusedAdamW) and isinstance(opt, torch.optim.AdamW)
    with pytest.raises(ValueError, match="amsgrad"):
        FusedAdamW([torch.zeros(2, requires_grad=True)], amsgrad=True)


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
