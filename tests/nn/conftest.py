"""Fixtures of the layer tests."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F


@pytest.fixture
def short_trained_mamba2():
    """``f(N, reduction) -> (model, held)``: an ``SSMModel`` with one Mamba-2 block (d_model 8,
    d_state N, head width 4, chunks of 16, ``mamba2_reduction=reduction``) trained for 40 Adam
    steps on sklearn digits (seed 0), in eval mode, and a batch of 128 validation sequences."""
    from shrinkssm.data import load_dataset
    from shrinkssm.nn import ModelConfig, SSMModel

    def train(n: int, reduction: str = "exact"):
        data = load_dataset("digits", seed=0)
        torch.manual_seed(0)
        cfg = ModelConfig(layer="mamba2", d_model=8, d_state=n, headdim=4, chunk_size=16,
                          mamba2_reduction=reduction)
        model = SSMModel(cfg, d_input=1, d_output=10)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        model.train()
        rng = np.random.default_rng(0)
        for _ in range(40):
            batch = data.train.batch(rng.choice(len(data.train), 64, replace=False))
            loss = F.cross_entropy(model(batch.x), batch.y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return model.eval(), data.val.batch(np.arange(128))
    return train


@pytest.fixture
def make_layer():
    """``f(d_model=8, N=5, headdim=4, ngroups=2, seed=0, **kw) -> Mamba2SSM``: a float64 Mamba-2
    layer (chunks of 4) with a random skip term and conv bias, and steps made larger
    (``dt_bias + 1``) so that decays matter over a short sequence."""
    from shrinkssm.nn.mamba2 import Mamba2SSM

    def make(d_model=8, N=5, headdim=4, ngroups=2, seed=0, **kw):
        torch.manual_seed(seed)
        layer = Mamba2SSM(d_model, N, headdim=headdim, ngroups=ngroups, chunk_size=4, **kw).double()
        with torch.no_grad():
            layer.D.uniform_(-1, 1)
            layer.conv1d.bias.uniform_(-0.5, 0.5)
            layer.dt_bias.add_(1.0)
        return layer
    return make
