"""Tests of shrinkssm.nn.shrinkable: both layer kinds conform to the one protocol (plan, apply,
report, layout through a checkpoint), and a third layer written here, which the package has never
seen, is reduced, rolled back and resized by the unchanged Compressor."""

import copy
import math

import pytest
import torch
from torch import nn

from shrinkssm.compress import Compressor, swap_parameters
from shrinkssm.nn import LRU, LayerReduction, ReductionPlan, SelectiveSSM, ShrinkableLayer, shrinkable_layers
from shrinkssm.nn.shrinkable import set_param
from shrinkssm.train.checkpoint import load_checkpoint, save_checkpoint


def _lru():
    torch.manual_seed(0)
    return LRU(3, 10, scan="ref").double()


def _selective():
    torch.manual_seed(0)
    layer = SelectiveSSM(3, 6, expand=2, surrogate_momentum=None, scan="ref").double()
    layer.train()
    layer(torch.randn(4, 12, 3, dtype=torch.float64))       # surrogate statistics
    return layer


def _checkpoint_round_trip(layer, make, tmp_path):
    """Save layout and weights in a real checkpoint file, rebuild a fresh layer from it."""
    path = tmp_path / "layer.pt"
    save_checkpoint(path, {"step": 0, "epoch": 0, "batch": 0, "config": {},
                           "model_io": {"d_input": 3, "d_output": 3, "task": "classification"},
                           "layout": {"state_dims": [layer.d_state], "layers": [layer.layout()]},
                           "model": layer.state_dict(), "optimizer": {"state": {}, "param_groups": []},
                           "scheduler": {}, "compressor": {"history": {"events": []}, "stopped": False},
                           "rng": {"torch_per_rank": [torch.get_rng_state()], "cuda": None},
                           "extra": {"initial_dims": [layer.d_state], "train_seconds": 0.0}})
    ckpt = load_checkpoint(path)
    fresh = make()
    fresh.apply_layout_(ckpt["layout"]["layers"][0])
    fresh.load_state_dict(ckpt["model"])
    return fresh


@pytest.mark.parametrize("make", [_lru, _selective], ids=["lru", "selective"])
def test_both_layer_kinds_plan_apply_report_and_rebuild_from_a_checkpoint(make, tmp_path):
    layer = make()
    assert isinstance(layer, ShrinkableLayer)
    old_size, old_d = layer.state_size, layer.d_state
    params = {id(p) for p in layer.parameters()}
    plan = layer.plan_reduction(lambda hsv, size: max(1, size // 2))
    assert isinstance(plan, ReductionPlan) and plan.skipped is None
    assert plan.old_size == old_size and plan.old == old_d
    assert len(plan.hsv) > 0 and bool((plan.hsv[:-1] >= plan.hsv[1:]).all())     # descending
    assert plan.target_size < old_size
    assert {id(p) for p in layer.parameters()} == params                        # planning changes nothing
    report = layer.apply_reduction_(plan)
    assert isinstance(report, LayerReduction) and report.changed
    assert report.old_size == old_size and report.new_size == layer.state_size <= plan.target_size
    assert report.old_d_state == old_d and report.new_d_state == layer.d_state < old_d
    assert layer.last_replaced and all(old is not new for old, new in layer.last_replaced.values())
    x = torch.randn(2, 9, 3, dtype=torch.float64)
    layer.eval()
    fresh = _checkpoint_round_trip(layer, make, tmp_path).eval()
    assert fresh.layout() == layer.layout() and fresh.state_size == layer.state_size
    assert torch.equal(fresh(x), layer(x))
    with pytest.raises(ValueError, match="another layer"):
        make().apply_reduction_(plan)


def test_state_size_is_real_numbers_per_step_for_both_kinds():
    lru, sel = LRU(3, 10), SelectiveSSM(3, 6, expand=2)
    assert (lru.d_state, lru.state_size) == (10, 20)                 # 10 complex states
    assert lru.initial_state(1).numel() * 2 == lru.state_size        # complex entries, two reals each
    assert (sel.d_state, sel.state_size) == (6, 6 * 6)               # E = 6 channels of 6 real states
    assert sel.initial_state(1)[1].numel() == sel.state_size


class ToyDecay(nn.Module):
    """A layer the package does not know: ``n`` independent real decays ``x_i[k] = a_i x_i[k-1] +
    b_i . u[k]``, ``y[k] = sum_i c_i x_i[k]``. Its "HSVs" are each state's H2 energy
    ``|b_i| |c_i| / (1 - a_i^2)``; a reduction keeps the most energetic states."""

    D_STATE_UNIT = "real states"

    def __init__(self, d_model: int, n: int) -> None:
        super().__init__()
        self.d_model, self.last_replaced = d_model, {}
        self._allocate(n)
        with torch.no_grad():
            self.a_raw.uniform_(-2.0, 2.0)
            self.b.normal_()
            self.c.normal_()

    def _allocate(self, n: int) -> None:
        set_param(self, "a_raw", torch.zeros(n))
        set_param(self, "b", torch.zeros(n, self.d_model))
        set_param(self, "c", torch.zeros(self.d_model, n))

    @property
    def d_state(self) -> int:
        return int(self.a_raw.shape[0])

    @property
    def state_size(self) -> int:
        return self.d_state

    def forward(self, u):
        a = torch.sigmoid(self.a_raw)
        x, ys = torch.zeros(u.shape[0], self.d_state, dtype=u.dtype), []
        for k in range(u.shape[1]):
            x = a * x + u[:, k] @ self.b.T
            ys.append(x @ self.c.T)
        return torch.stack(ys, 1)

    def _energy(self):
        a = torch.sigmoid(self.a_raw.detach()).double()
        return self.b.detach().double().norm(dim=1) * self.c.detach().double().norm(dim=0) / (1 - a ** 2)

    def plan_reduction(self, rank_rule, *, method="balanced", output="complex"):
        energy = self._energy()
        rank = int(rank_rule(torch.sort(energy, descending=True).values, self.d_state))
        return ReductionPlan(id(self), method, output, torch.sort(energy, descending=True).values,
                             [rank], [1], self.state_size, 1)

    def apply_reduction_(self, plan, **options):
        old = self.d_state
        keep = torch.argsort(self._energy(), descending=True)[: plan.ranks[0]].sort().values
        self.last_replaced = {}
        if keep.numel() < old:
            for name, value in (("a_raw", self.a_raw[keep]), ("b", self.b[keep]), ("c", self.c[:, keep])):
                set_param(self, name, value)
        return LayerReduction(old, self.d_state, plan.method, plan.output, plan.hsv, None, 1.0, 0.0,
                              old_size=old, new_size=self.d_state, ranks=(self.d_state,))

    def layout(self):
        return {"n": self.d_state}

    def apply_layout_(self, layout):
        self._allocate(int(layout["n"]))
        self.last_replaced = {}


def test_the_compressor_reduces_a_layer_it_has_never_seen():
    torch.manual_seed(0)
    model = nn.Sequential(ToyDecay(2, 8), LRU(2, 6, scan="ref")).double()
    assert [type(m) for m in shrinkable_layers(model)] == [ToyDecay, LRU]
    energy = model[0]._energy()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    event = Compressor([1], mode="fixed", fraction=0.5, gate=1.0).step(1, model, opt)
    toy, lru = event.layers
    assert (toy.old, toy.new, toy.old_size, toy.new_size) == (8, 4, 8, 4)
    assert (lru.old, lru.new, lru.old_size, lru.new_size) == (6, 3, 12, 6)
    # the four most energetic states survive, in their order, with their values
    keep = torch.argsort(energy, descending=True)[:4].sort().values
    assert torch.equal(model[0]._energy(), energy[keep])
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    assert held == {id(p) for p in model.parameters()}                 # optimizer surgery done
    model(torch.randn(2, 5, 2, dtype=torch.float64)).sum().backward()
    opt.step()


def test_pragmatic_rollback_restores_a_layer_it_has_never_seen():
    torch.manual_seed(1)
    model = nn.Sequential(ToyDecay(2, 8)).double()
    before = copy.deepcopy(model.state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scores = iter([0.9, 0.1])
    compressor = Compressor([1], mode="pragmatic", fraction=0.5, evaluate=lambda m: next(scores))
    event = compressor.step(1, model, opt)
    assert event.rolled_back and model[0].d_state == 8
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in model.parameters()}


def test_set_param_records_the_replacement_and_keeps_tags():
    layer = ToyDecay(2, 4)
    old = layer.b
    old._lr_group = "ssm"
    new = set_param(layer, "b", torch.ones(2, 2), _no_weight_decay=True)
    assert layer.b is new and layer.last_replaced["b"] == (old, new)
    assert new._lr_group == "ssm" and new._no_weight_decay and torch.equal(new, torch.ones(2, 2))
    opt = torch.optim.SGD([old], lr=0.1)
    swap_parameters(opt, [layer.last_replaced["b"]], "reset")
    assert opt.param_groups[0]["params"][0] is new
    assert math.isclose(float(new.detach().sum()), 4.0)
