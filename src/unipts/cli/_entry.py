"""What every entry point shares: the config location and the one-line error report."""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path

from .. import UniptsError

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")

log = logging.getLogger("unipts")


def launched_rank() -> int:
    """This process's rank as its launcher set it (Lightning's DDP children, torchrun, SLURM);
    0 for a process started by the user."""
    for var in ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK"):
        value = os.environ.get(var, "0")
        if value.isdigit() and int(value) != 0:
            return int(value)
    return 0


def quiet_nonzero_rank() -> None:
    """On a rank other than 0, log to the console only: no log file of its own in the run directory.

    Lightning re-runs the command for each extra DDP process with
    ``hydra.job.name=train_ddp_process_<rank>``, which would leave a ``train_ddp_process_<rank>.log``
    beside rank 0's log; other launchers give every rank the same log file, which rank 0 keeps.
    """
    if launched_rank() == 0:
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()
            path = Path(handler.baseFilename)
            if path.name.startswith("train_ddp_process_"):
                path.unlink(missing_ok=True)


def reports_errors(task):
    """Turn a :class:`UniptsError` into one line on stderr and exit status 2, not a traceback."""

    @functools.wraps(task)
    def wrapper(cfg):
        quiet_nonzero_rank()
        try:
            return task(cfg)
        except UniptsError as exc:
            log.error("%s", exc)
            print(f"error: {exc}", file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapper
