"""The ``logger`` section: every logger's destination checked before any work.

Lightning's loggers open their folders and services lazily, at the first metric: a TensorBoard
folder that cannot be written was a traceback after the dense model and the search, and W&B
online without credentials a traceback there too. Here each logger's ``save_dir`` must take a file
and an online W&B logger must find its credentials, when the run starts.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

from ..common import UniptsError
from ..checks import folder_problem

WANDB_TARGET = "lightning.pytorch.loggers.WandbLogger"
WANDB_OFFLINE_MODES = ("offline", "dryrun", "disabled")  # WANDB_MODE values that never reach a server


def read_loggers(node: dict) -> dict:
    """The ``logger`` nodes, each one's destination checked (:class:`~unipts.UniptsError`)."""
    for name, logger in node.items():
        if not isinstance(logger, dict):
            continue
        if logger.get("save_dir") is not None:
            _check_writable(Path(str(logger["save_dir"])).expanduser(), f"logger.{name}.save_dir")
        if logger.get("_target_") == WANDB_TARGET and wandb_online(logger):
            _check_wandb_login(name)
    return node


def _check_writable(folder: Path, key: str) -> None:
    """``folder`` must take files (the logger creates it if need be)."""
    problem = folder_problem(folder)
    if problem:
        raise UniptsError(f"{key}: {problem}; give a writable folder")


def wandb_online(logger: dict) -> bool:
    """Whether a W&B logger node would talk to a server."""
    return not logger.get("offline") and os.environ.get("WANDB_MODE", "") not in WANDB_OFFLINE_MODES


def _check_wandb_login(name: str) -> None:
    """W&B's own login check, which reads its credentials (WANDB_API_KEY, ``wandb login``'s file)
    without reaching the server; without a terminal to ask for a key it refuses at once."""
    import wandb

    try:
        with contextlib.redirect_stderr(io.StringIO()):  # its "Loaded credentials..." lines: the run says what it does
            wandb.login(verify=False)
    except Exception as exc:  # noqa: BLE001 - W&B's errors have no common base here: any failure is the same to the user
        raise UniptsError(f"logger.{name}: W&B logs online (logger.{name}.offline=false) but cannot log in "
                          f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); run `wandb login` or "
                          f"set WANDB_API_KEY, or log offline: logger.{name}.offline=true") from exc
