"""What every entry point shares: the config location and the one-line error report."""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path

from .. import CONFIG_DIR, UniptsError  # noqa: F401 (CONFIG_DIR: the entry points' config_path)
from ..runs.ranks import launched_rank


log = logging.getLogger("unipts")


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


def one_line(exc: BaseException) -> str | None:
    """What to tell the user about ``exc`` in one line; None for an error that is a bug (its
    traceback is what helps)."""
    if isinstance(exc, UniptsError):
        return str(exc)
    if isinstance(exc, OSError) and exc.filename is not None:  # a folder not writable, a file in its place...
        return f"{exc.filename}: {exc.strerror or exc}"
    return None


def reports_errors(task):
    """Turn a :class:`UniptsError` (or an OSError naming its path) into one line on stderr and exit
    status 2, not a traceback (``HYDRA_FULL_ERROR=1`` shows it). In a sweep the job's failure is
    recorded instead and the sweep goes on (:mod:`unipts.cli._hooks`)."""
    from ._hooks import check_output_dir, in_sweep, record_job_success

    @functools.wraps(task)
    def wrapper(cfg):
        quiet_nonzero_rank()
        try:
            check_output_dir(cfg)
            result = task(cfg)
        except SystemExit as exc:
            if not _stopped_by_sigterm(exc):
                raise
            _report(stopped_line(cfg), sweep_goes_on=False, status=STOPPED_STATUS)
        except Exception as exc:
            line, sweep = one_line(exc), in_sweep()
            if os.environ.get("HYDRA_FULL_ERROR") == "1" or (line is None and not sweep):
                raise
            if line is None:  # a sweep's other jobs still run; the job's log keeps the traceback
                log.exception("job failed")
                line = f"{type(exc).__name__}: {exc} (HYDRA_FULL_ERROR=1 shows the traceback)"
            _report(line, sweep_goes_on=sweep, status=2)
            return None
        if in_sweep():
            record_job_success()
        return result

    return wrapper


STOPPED_STATUS = 128 + 15  # the shell's status for a process ended by SIGTERM


def _stopped_by_sigterm(exc: SystemExit) -> bool:
    """Lightning's SIGTERMException, raised at a batch boundary after a SIGTERM: a SystemExit with
    status 0. (Looked up only if Lightning was imported, so ``unipts-export`` does not import it.)"""
    module = sys.modules.get("lightning.pytorch.utilities.exceptions")
    return module is not None and isinstance(exc, module.SIGTERMException)


def _log_to_files(line: str) -> None:
    """``line`` as an ERROR record in the run's log file only: the terminal shows it once, as the
    ``error:`` line, and the log (a sweep job's record) still says why the run stopped."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s", (line,), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _report(line: str, sweep_goes_on: bool, status: int) -> None:
    """One line on stderr (once, not once per DDP rank), the job's failure recorded in a sweep;
    exits with ``status`` unless the sweep goes on to its next job."""
    from ._hooks import in_sweep, record_job_failure

    if launched_rank() == 0:  # under DDP every rank fails alike
        _log_to_files(line)
        print(f"error: {line}", file=sys.stderr, flush=True)
        if in_sweep():
            record_job_failure(line)
    if not sweep_goes_on:
        sys.exit(status)


def stopped_line(cfg) -> str:
    """What to tell the user when SIGTERM stopped the run: where its checkpoint is and the command
    that resumes it."""
    from hydra.core.hydra_config import HydraConfig

    run_dir = Path(cfg.paths.output_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        return f"{run_dir}: stopped by SIGTERM before the first checkpoint; there is nothing to resume: run it again"
    kept = [o for o in (HydraConfig.get().overrides.task if HydraConfig.initialized() else [])
            if not o.startswith(("ckpt_path=", "hydra.run.dir="))]
    command = " ".join([f"unipts-{cfg.task}", *kept, "ckpt_path=last", f"hydra.run.dir={run_dir}"])
    return f"{run_dir}: stopped by SIGTERM; {last} holds the last complete epoch; resume with: {command}"
