"""Tests of shrinkssm.compress.optim_state: optimizer surgery on live torch optimizers."""

import pytest
import torch
from torch import nn

from shrinkssm.compress import slice_to_shape, swap_parameters


def _trained(opt_cls=torch.optim.Adam, **kw):
    torch.manual_seed(0)
    big = nn.Parameter(torch.randn(6, 4))
    other = nn.Parameter(torch.randn(3))
    opt = opt_cls([{"params": [big], "lr": 0.1}, {"params": [other], "lr": 0.01}], **kw)
    for _ in range(3):
        (big.square().sum() + other.sum()).backward()
        opt.step()
        opt.zero_grad()
    return big, other, opt


def test_slice_to_shape_takes_the_leading_block():
    x = torch.arange(24.0).reshape(6, 4)
    assert torch.equal(slice_to_shape(x, torch.Size([2, 4])), x[:2])
    assert slice_to_shape(x, torch.Size([7, 4])) is None
    assert slice_to_shape(x, torch.Size([6])) is None


@pytest.mark.parametrize("policy", ["reset", "slice", "restart"])
def test_swap_keeps_group_position_and_transforms_state(policy):
    big, other, opt = _trained()
    old_state = {k: v.clone() for k, v in opt.state[big].items()}
    small = nn.Parameter(big.detach()[:2].clone())
    assert swap_parameters(opt, [(big, small)], policy) == 1
    assert opt.param_groups[0]["params"] == [small]
    assert opt.param_groups[0]["lr"] == 0.1 and opt.param_groups[1]["lr"] == 0.01
    assert big not in opt.state
    state = opt.state[small]
    assert state["exp_avg"].shape == small.shape
    if policy == "slice":
        assert torch.equal(state["exp_avg"], old_state["exp_avg"][:2])
        assert torch.equal(state["exp_avg_sq"], old_state["exp_avg_sq"][:2])
    else:
        assert not state["exp_avg"].any() and not state["exp_avg_sq"].any()
    assert float(state["step"]) == (0.0 if policy == "restart" else 3.0)


def test_optimizer_keeps_working_after_swap():
    big, other, opt = _trained(torch.optim.AdamW, weight_decay=0.1)
    small = nn.Parameter(big.detach()[:2].clone())
    swap_parameters(opt, [(big, small)], "reset")
    before = small.detach().clone()
    (small.square().sum() + other.sum()).backward()
    opt.step()
    assert not torch.equal(before, small.detach())          # the new parameter is trained
    # and the optimizer's state dict round-trips
    sd = opt.state_dict()
    opt.load_state_dict(sd)


@pytest.mark.parametrize("rows, cols", [(3, 4), (6, 2), (2, 3)])
def test_sgd_momentum_buffers_follow(rows, cols):
    """"slice" keeps exactly the leading block of the momentum, along every dimension that shrank;
    the untouched parameter's buffer is the same tensor with the same values."""
    big, other, opt = _trained(torch.optim.SGD, momentum=0.9)
    old = opt.state[big]["momentum_buffer"].clone()
    other_buffer = opt.state[other]["momentum_buffer"]
    other_values = other_buffer.clone()
    assert old.abs().min() > 0                      # every entry is informative
    small = nn.Parameter(big.detach()[:rows, :cols].clone())
    swap_parameters(opt, [(big, small)], "slice")
    kept = opt.state[small]["momentum_buffer"]
    assert kept.shape == (rows, cols)
    for i in range(rows):                           # entry by entry against the old buffer
        for j in range(cols):
            assert kept[i, j].item() == old[i, j].item(), (i, j)
    assert opt.state[other]["momentum_buffer"] is other_buffer
    assert torch.equal(other_buffer, other_values)


def test_a_parameter_the_optimizer_does_not_hold_is_an_error():
    _, _, opt = _trained()
    stranger = nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="does not hold"):
        swap_parameters(opt, [(stranger, nn.Parameter(torch.zeros(1)))])


def test_unknown_policy_lists_the_valid_ones():
    big, _, opt = _trained()
    with pytest.raises(ValueError, match="reset, slice, restart"):
        swap_parameters(opt, [(big, big)], "keep")
