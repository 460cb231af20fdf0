"""Tests of shrinkssm.train.process: importing the library changes nothing global, and
configure_process makes the process-wide settings a run asks for."""

import json
import subprocess
import sys
import textwrap

import torch

from shrinkssm.train import apply_overrides, configure_process
from shrinkssm.train.config import RunConfig

_PROBE = textwrap.dedent("""
    import json, sys
    import torch
    torch.manual_seed(123)
    import matplotlib
    before = {"threads": torch.get_num_threads(), "backend": matplotlib.get_backend(),
              "rng": torch.get_rng_state().tolist()}
    import shrinkssm, shrinkssm.train, shrinkssm.cli, shrinkssm.plots, shrinkssm.compress
    after = {"threads": torch.get_num_threads(), "backend": matplotlib.get_backend(),
             "rng": torch.get_rng_state().tolist()}
    print(json.dumps({"before": before, "after": after, "pyplot": "matplotlib.pyplot" in sys.modules}))
""")


def test_importing_the_library_changes_nothing_global():
    """In a fresh process with a non-default thread count and backend: import everything, then
    compare threads, matplotlib backend and the global RNG state with what they were."""
    env = {"OMP_NUM_THREADS": "1", "MPLBACKEND": "svg", "PATH": ""}
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env,
                         timeout=120, check=True)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["before"]["backend"] == "svg"
    assert seen["after"] == seen["before"]
    assert not seen["pyplot"]                     # nothing imports pyplot (its global figure state)


def test_configure_process_sets_threads_backend_and_a_world_of_one():
    import matplotlib

    threads, backend = torch.get_num_threads(), matplotlib.get_backend()
    try:
        dist = configure_process(apply_overrides(RunConfig(), ["train.threads=3"]))
        assert torch.get_num_threads() == 3
        assert matplotlib.get_backend().lower() == "agg"
        assert dist.world_size == 1 and dist.rank == 0 and not dist.enabled
    finally:
        torch.set_num_threads(threads)
        matplotlib.use(backend)
