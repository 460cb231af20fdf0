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
