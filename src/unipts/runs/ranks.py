"""Which process of a launch this is: only the first one records, locks and reports."""

from __future__ import annotations

import os


def launched_rank() -> int:
    """This process's rank as its launcher set it (Lightning's DDP children, torchrun, SLURM);
    0 for a process started by the user."""
    for var in ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK"):
        value = os.environ.get(var, "0")
        if value.isdigit() and int(value) != 0:
            return int(value)
    return 0
