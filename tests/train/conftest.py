"""Shared fixtures of the trainer tests: a tiny, fast run config on sklearn digits."""

import pytest

from shrinkssm.train.config import RunConfig, apply_overrides

TINY = [
    "data.name=digits", "model.d_model=8", "model.d_state=24", "model.norm=layer",
    "train.steps=40", "train.batch_size=32", "train.lr=0.004", "train.warmup_steps=5",
    "train.eval_every=20", "train.log_every=10", "train.checkpoint_every=15",
    "train.progress=false", "compress.steps=[10, 20]", "compress.tol=0.05",
]


@pytest.fixture
def tiny_config() -> RunConfig:
    return apply_overrides(RunConfig(), TINY)
