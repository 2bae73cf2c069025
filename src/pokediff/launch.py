"""`pokediff train` on several processes of this machine without changing its command line.

POKEDIFF_TRAIN_PROCESSES=N (N > 1) makes `pokediff train ...` start itself again under torchrun:
`python -m torch.distributed.run --standalone --nproc-per-node N -m pokediff train ...`, N processes
on this machine (gloo on CPUs, nccl on GPUs; see training/distributed.py; this module stays free of torch so that
`pokediff train` checks its params before loading it). The DVC stage's command stays
`pokediff train --auto-resume`, and its result does not depend on N: every rank draws the same global
batch and DDP averages the gradients, so N processes train the same model as one (a 2-process test
checks losses and weights). A Prefect flow sets the variable for a run (the team flow's train_processes).
"""

from __future__ import annotations

import os
import subprocess
import sys

from pokediff.errors import UsageError

PROCESSES_VAR = "POKEDIFF_TRAIN_PROCESSES"
MAX_PROCESSES = 64


def requested_processes() -> int:
    """N from POKEDIFF_TRAIN_PROCESSES (1 when unset, or inside a torchrun process already)."""
    if "RANK" in os.environ:  # a torchrun child: it is one of the N
        return 1
    raw = os.environ.get(PROCESSES_VAR, "").strip()
    if not raw:
        return 1
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_PROCESSES:
        raise UsageError(f"{PROCESSES_VAR}={raw!r}: expected a whole number of processes from 1 to {MAX_PROCESSES}")
    return n


def run_under_torchrun(processes: int, argv: list[str] | None = None) -> int:
    """Run this `pokediff train` command line again as ``processes`` torchrun processes; their exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "train" not in argv:
        raise UsageError(f"{PROCESSES_VAR} applies to the `pokediff train` command line only")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
           "-m", "pokediff", *argv]
    print(f"pokediff train: {PROCESSES_VAR}={processes}: running on {processes} processes (torchrun)", flush=True)
    return subprocess.call(cmd)
