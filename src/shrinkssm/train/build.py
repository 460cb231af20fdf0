"""What a run is made of, built from its config: the data, the model, the compressor.

Pure construction, no process-wide settings (those are :func:`shrinkssm.train.configure_process`)
and no files: the :class:`~shrinkssm.train.Trainer`, ``shrinkssm eval`` / ``analyze`` /
``generate`` (:mod:`shrinkssm.train.loading`) and a user's own loop build the same objects from the
same config.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from shrinkssm.compress import Compressor
from shrinkssm.data import DataFileError, DataSplits, load_dataset
from shrinkssm.data.wording import for_train
from shrinkssm.nn import SSMModel
from shrinkssm.train.config import ConfigError, RunConfig

__all__ = ["load_data", "build_model", "build_compressor"]


def load_data(config: RunConfig) -> DataSplits:
    """The data set of ``config.data`` (validation carved with ``train.seed``); an unknown name or
    option is a :class:`ConfigError` in the config's words (``data.options.X``, ``data.root``),
    missing or broken files a :class:`~shrinkssm.data.DataFileError`."""
    try:
        return load_dataset(config.data.name, root=config.data.root,
                            val_fraction=config.data.val_fraction, seed=config.train.seed,
                            **config.data.options)
    except DataFileError:
        raise
    except ValueError as exc:
        raise ConfigError(for_train(str(exc), config.data.name)) from None


def build_model(config: RunConfig, splits: DataSplits) -> SSMModel:
    """The model of ``config.model``, sized for the data set's task (inputs, outputs, tokens,
    per-step outputs, document pairs). Initialised from torch's global RNG: seed it first for a
    reproducible model (the Trainer seeds it with ``train.seed``)."""
    spec = splits.spec
    return SSMModel(config.model, d_input=spec.vocab_size if spec.tokens else spec.d_input,
                    d_output=spec.output_dim, task=spec.kind, tokens=spec.tokens,
                    per_step=spec.per_step, n_segments=spec.n_segments)


def build_compressor(config: RunConfig, evaluate: Callable[[nn.Module], float] | None = None,
                     agree: Callable[[list[int]], list[int]] | None = None) -> Compressor:
    """The compressor of the ``compress`` section, scheduled over ``train.steps`` and seeded with
    ``train.seed`` (:meth:`Compressor.from_config`); ``evaluate`` and ``agree`` as there."""
    return Compressor.from_config(config.compress, config.train.steps, seed=config.train.seed,
                                  evaluate=evaluate, agree=agree)
