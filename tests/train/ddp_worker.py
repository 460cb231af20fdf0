"""A worker for the data-parallel tests, launched by torchrun (not a test module itself).

    torchrun --nproc_per_node=2 ddp_worker.py RUN_DIR [--stop-after K] [--die-at K] [--resume] KEY=VALUE ...

Each rank writes ``RUN_DIR/params-rank<r>-step<s>.pt`` after every reduction point and at the end,
so the test can check that all ranks hold identical parameters.
"""

import argparse
import faulthandler
import json
import os
import sys
from pathlib import Path

import torch

from shrinkssm.train import Trainer, apply_overrides
from shrinkssm.train.config import RunConfig
from shrinkssm.train.distributed import shutdown_distributed


class RecordingTrainer(Trainer):
    die_at: int | None = None

    def _dump(self) -> None:
        state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        torch.save(state, self.run_dir / f"params-rank{self.dist.rank}-step{self.step}.pt")

    def _on_reduction(self, event) -> None:
        super()._on_reduction(event)
        self._dump()

    def _train_step(self, batch):
        if self.die_at is not None and self.step + 1 == self.die_at and self.dist.rank == 1:
            os._exit(3)                                   # a process dies without a word
        return super()._train_step(batch)


def main() -> None:
    faulthandler.enable(all_threads=True)          # a crash in C++ still names its thread
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("--stop-after", type=int)
    parser.add_argument("--die-at", type=int)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    RecordingTrainer.die_at = args.die_at
    config = None if args.resume else apply_overrides(RunConfig(), args.overrides)
    trainer = RecordingTrainer(config, run_dir, resume=args.resume, stop_after=args.stop_after)
    summary = trainer.fit()
    if "run_dir" in summary:                      # finished (not stopped early): what it could see
        seen = {"summary": (run_dir / "summary.json").exists(),
                "plots": any((run_dir / "plots").glob("*.png"))}
        (run_dir / f"left-rank{trainer.dist.rank}.json").write_text(json.dumps(seen))
    trainer._dump()
    shutdown_distributed()


if __name__ == "__main__":
    sys.exit(main())
