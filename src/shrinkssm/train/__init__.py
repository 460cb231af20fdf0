"""Training: the run config, the loop, checkpoints, metrics.

* :func:`load_config` / :class:`RunConfig` -- YAML + dotted overrides, validated.
* :func:`configure_process` -- the process-wide settings of a run (threads, malloc, plotting
  backend, data-parallel group), in one explicit call; importing changes nothing global.
* :func:`load_data` / :func:`build_model` / :func:`build_compressor` -- a run's parts from its
  config (:mod:`shrinkssm.train.build`).
* :class:`Trainer` -- one run in one run directory (``shrinkssm train``).
* :func:`save_checkpoint` / :func:`load_checkpoint` -- atomic, checked checkpoints.
"""

from shrinkssm.train.build import (
    build_compressor as build_compressor,
    build_model as build_model,
    load_data as load_data,
)
from shrinkssm.train.checkpoint import (
    CheckpointError as CheckpointError,
    load_checkpoint as load_checkpoint,
    save_checkpoint as save_checkpoint,
)
from shrinkssm.train.config import (
    CompressConfig as CompressConfig,
    ConfigError as ConfigError,
    DataConfig as DataConfig,
    RunConfig as RunConfig,
    TrainConfig as TrainConfig,
    apply_overrides as apply_overrides,
    load_config as load_config,
)
from shrinkssm.train.objective import Objective as Objective, evaluate as evaluate
from shrinkssm.train.optim import (
    FusedAdam as FusedAdam,
    FusedAdamW as FusedAdamW,
    build_optimizer as build_optimizer,
)
from shrinkssm.train.process import configure_process as configure_process
from shrinkssm.train.trainer import (
    Trainer as Trainer,
    TrainingDiverged as TrainingDiverged,
)

__all__ = ["CheckpointError", "load_checkpoint", "save_checkpoint", "CompressConfig",
           "ConfigError", "DataConfig", "RunConfig", "TrainConfig", "apply_overrides",
           "load_config", "Objective", "evaluate", "Trainer", "TrainingDiverged",
           "build_compressor", "build_model", "load_data", "configure_process", "FusedAdam",
           "FusedAdamW", "build_optimizer"]
