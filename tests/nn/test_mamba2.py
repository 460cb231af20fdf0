"""Tests of shrinkssm.nn.mamba2: the layer against Mamba-2's block written out with explicit
loops, the recurrent step against forward, padding, backends, the wiring into SSMModel
(model.layer=mamba2) and the bad-argument messages. The comparison with Hugging Face's mixer is
in tests/nn/test_hf.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from shrinkssm.nn import ModelConfig, SSMModel
from shrinkssm.nn.mamba2 import Mamba2SSM

pytestmark = pytest.mark.usefixtures("one_torch_thread")   # see tests/conftest.py


def make_layer(d_model=8, N=5, headdim=4, ngroups=2, seed=0, dtype=torch.float64, **kw):
    torch.manual_seed(seed)
    layer = Mamba2SSM(d_model, N, headdim=headdim, ngroups=ngroups, **kw).to(dtype)
    with torch.no_grad():   # non-trivial values where the initialisation is constant
        layer.D.uniform_(-1, 1)
        layer.norm.weight.uniform_(0.5, 1.5)
        if layer.conv1d.bias is not None:
            layer.conv1d.bias.uniform_(-0.5, 0.5)
    return layer


def inputs(nb=2, L=11, H=8, seed=1, dtype=torch.float64):
    return torch.randn(nb, L, H, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def mamba2_reference(layer: Mamba2SSM, u: torch.Tensor) -> torch.Tensor:
    """Mamba-2's block written out with explicit loops over time, heads and convolution taps."""
    E, H, P, G, N, K = layer.d_inner, layer.nheads, layer.headdim, layer.ngroups, layer.n, layer.d_conv
    nb, L, _ = u.shape
    proj = u @ layer.in_proj.weight.T
    z, xbc, dt = proj[..., :E], proj[..., E:E + E + 2 * G * N], proj[..., 2 * E + 2 * G * N:]
    w = layer.conv1d.weight[:, 0, :]                                        # (conv_dim, K)
    conv = torch.zeros_like(xbc)
    for t in range(L):
        for k in range(K):
            s = t - (K - 1) + k
            if s >= 0:
                conv[:, t] += w[:, k] * xbc[:, s]
    xbc = F.silu(conv + layer.conv1d.bias)
    x, B, C = xbc[..., :E], xbc[..., E:E + G * N], xbc[..., E + G * N:]
    dt = F.softplus(dt + layer.dt_bias)
    A = -torch.exp(layer.A_log)
    y = torch.zeros(nb, L, E, dtype=u.dtype)
    for h in range(H):
        g = h // (H // G)
        S = torch.zeros(nb, P, N, dtype=u.dtype)
        for t in range(L):
            xt = x[:, t, h * P:(h + 1) * P]
            Bt, Ct = B[:, t, g * N:(g + 1) * N], C[:, t, g * N:(g + 1) * N]
            S = torch.exp(dt[:, t, h] * A[h])[:, None, None] * S + \
                dt[:, t, h][:, None, None] * xt[:, :, None] * Bt[:, None, :]
            y[:, t, h * P:(h + 1) * P] = (S @ Ct[:, :, None])[..., 0] + layer.D[h] * xt
    y = y * F.silu(z)
    gs = layer.norm.group_size
    yg = y.reshape(nb, L, E // gs, gs)
    y = (yg / torch.sqrt(yg.pow(2).mean(-1, keepdim=True) + layer.norm.eps)).reshape(nb, L, E)
    return (y * layer.norm.weight) @ layer.out_proj.weight.T


@pytest.mark.parametrize("ngroups,norm_group_size", [(1, None), (2, None), (2, 16), (4, 2)])
@pytest.mark.parametrize("chunk", [3, 64])
def test_forward_matches_written_out_block(ngroups, norm_group_size, chunk):
    layer = make_layer(ngroups=ngroups, norm_group_size=norm_group_size, chunk_size=chunk)
    u = inputs()
    torch.testing.assert_close(layer(u), mamba2_reference(layer, u), rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("ngroups", [1, 2])
def test_step_by_step_equals_forward(ngroups):
    layer = make_layer(ngroups=ngroups, chunk_size=4)
    u = inputs(L=13)
    y = layer(u)
    state, outs = None, []
    for t in range(u.shape[1]):
        out, state = layer.step(u[:, t], state)
        outs.append(out)
    torch.testing.assert_close(torch.stack(outs, 1), y, rtol=1e-11, atol=1e-12)
    conv_state, S = state
    assert conv_state.shape == (2, layer.conv_dim, layer.d_conv - 1)
    assert S.shape == (2, layer.nheads, layer.headdim, layer.n)
    assert S.numel() // 2 == layer.state_size


def test_backends_agree_in_values_and_gradients():
    u = inputs(L=10).requires_grad_(True)
    grads = {}
    for scan in ("ref", "chunked"):
        layer = make_layer(scan=scan, chunk_size=4)
        y = layer(u)
        loss = (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum()
        grads[scan] = (y.detach(), *torch.autograd.grad(loss, [u, *layer.parameters()]))
    for a, b in zip(grads["ref"], grads["chunked"]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11)


def test_padding_leaves_valid_positions_unchanged():
    """Right padding: outputs at valid positions equal those of the unpadded, shorter sequence."""
    layer = make_layer(chunk_size=4)
    u = inputs(nb=2, L=9)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 6:] = False
    y = layer(u, mask)
    torch.testing.assert_close(y[1, :6], layer(u[1:, :6])[0], rtol=1e-11, atol=1e-12)
    torch.testing.assert_close(y[0], layer(u[:1])[0], rtol=1e-11, atol=1e-12)


def test_sizes_and_layout():
    layer = make_layer(d_model=8, N=5, headdim=4, expand=2)
    assert (layer.nheads, layer.d_inner, layer.d_state) == (4, 16, 5)
    assert layer.state_size == 4 * 4 * 5
    assert layer.layout() == {"d_state": 5, "ranks": None}
    layer.apply_layout_({"d_state": 5, "ranks": None})
    with pytest.raises(ValueError, match="width 7"):                   # a reduction only shrinks
        layer.apply_layout_({"d_state": 7, "ranks": None})
    with pytest.raises(ValueError, match="one order in"):
        layer.apply_layout_({"d_state": 5, "ranks": [6, 2]})
    with pytest.raises(ValueError, match="keys"):
        layer.apply_layout_({"n": 5})
    layer.apply_layout_({"d_state": 5, "ranks": [3, 2]})              # two groups
    assert layer.group_ranks == [3, 2] and layer.state_size == 2 * 4 * 5 and layer.d_state == 3
    assert layer.red_in.shape == layer.red_out.shape == (5, 5) and layer.gram_P.shape == (2, 3, 3)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="multiple of headdim"):
        Mamba2SSM(8, 4, headdim=3)
    with pytest.raises(ValueError, match="multiple of ngroups"):
        Mamba2SSM(8, 4, headdim=4, ngroups=3)
    with pytest.raises(ValueError, match="backend"):
        Mamba2SSM(8, 4, headdim=4, scan="parallel")
    with pytest.raises(ValueError, match="norm_group_size"):
        Mamba2SSM(8, 4, headdim=4, norm_group_size=5)
    with pytest.raises(ValueError, match="chunk_size"):
        Mamba2SSM(8, 4, headdim=4, chunk_size=0)


def test_model_layer_mamba2_language_model_steps_like_forward():
    torch.manual_seed(0)
    cfg = ModelConfig(layer="mamba2", n_layers=2, d_model=8, d_state=4, headdim=4, ngroups=2,
                      chunk_size=4, norm="batch")
    model = SSMModel(cfg, d_input=7, d_output=7, task="lm").double().eval()
    assert all(isinstance(m, Mamba2SSM) for m in model.ssm_layers())
    assert model.state_dims() == [4, 4] and model.state_sizes() == [16 * 4, 16 * 4]
    assert model.state_unit() == Mamba2SSM.D_STATE_UNIT
    x = torch.randint(0, 7, (2, 9))
    states, outs = model.init_states(2), []
    for t in range(9):
        out, states = model.step(x[:, t], states)
        outs.append(out)
    torch.testing.assert_close(torch.stack(outs, 1), model(x), rtol=1e-10, atol=1e-12)
    model.apply_layout_(model.layout())


def test_model_config_checks_mamba2_settings():
    assert ModelConfig(layer="mamba2", d_model=8, headdim=4, scan="native").scan == "native"
    with pytest.raises(ValueError, match="multiple of headdim"):
        ModelConfig(layer="mamba2", d_model=8, headdim=5)
    cfg = ModelConfig(layer="mamba2", d_model=8, headdim=4, d_state=[3, 5], n_layers=2)
    model = SSMModel(cfg, d_input=2, d_output=3)
    assert model.state_dims() == [3, 5]
    assert model(torch.randn(2, 6, 2)).shape == (2, 3)


def test_run_config_accepts_compression_of_mamba2_layers_and_names_the_method_it_lacks():
    from shrinkssm.train.config import RunConfig
    with pytest.raises(ValueError, match="compress.method: model.layer=mamba2 reduces by balanced "
                                         "truncation only"):
        RunConfig.model_validate({"model": {"layer": "mamba2", "d_model": 8, "headdim": 4},
                                  "compress": {"method": "random"}})
    cfg = RunConfig.model_validate({"model": {"layer": "mamba2", "d_model": 8, "headdim": 4},
                                    "compress": {"mode": "tolerance"}})
    assert cfg.model.layer == "mamba2" and cfg.compress.mode == "tolerance"


def test_chunk_size_auto_is_the_default_and_bad_values_are_named():
    from shrinkssm.nn.model import ModelConfig
    assert Mamba2SSM(8, 4, headdim=4).chunk_size == "auto"
    assert ModelConfig(layer="mamba2", headdim=4).chunk_size == "auto"
    assert ModelConfig(layer="mamba2", headdim=4, chunk_size=16).chunk_size == 16
    torch.manual_seed(0)
    a = Mamba2SSM(8, 4, headdim=4).double()
    b = Mamba2SSM(8, 4, headdim=4, chunk_size=5).double()
    b.load_state_dict(a.state_dict())
    u = torch.randn(2, 23, 8, dtype=torch.float64)
    torch.testing.assert_close(a(u), b(u), rtol=1e-10, atol=1e-10)
    for bad in (0, "big", 2.5):
        with pytest.raises(ValueError, match=r"chunk_size must be a positive integer or 'auto'"):
            Mamba2SSM(8, 4, headdim=4, chunk_size=bad)
        with pytest.raises(ValueError, match=r"model.chunk_size: must be a positive integer or 'auto'"):
            ModelConfig(layer="mamba2", headdim=4, chunk_size=bad)
