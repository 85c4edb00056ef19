"""What every entry point shares: the config location and the one-line error report."""

from __future__ import annotations

import functools
import logging
import os
import shlex
import sys
from pathlib import Path

from ..common import CONFIG_DIR, UniptsError  # noqa: F401 (CONFIG_DIR: the entry points' config_path)
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
    if type(exc).__module__.startswith("wandb."):  # W&B online: its server unreachable, a run refused
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"logger.wandb: W&B stopped the run ({first}); check the network and `wandb login`, or log offline: " \
               "logger.wandb.offline=true"
    return None


def reports_errors(task):
    """Turn a :class:`UniptsError` (or an OSError naming its path) into one line on stderr and exit
    status 2, not a traceback (``HYDRA_FULL_ERROR=1`` shows it). In a sweep the job's failure is
    recorded instead and the sweep goes on (:mod:`unipts.cli._hooks`). SIGINT and SIGTERM, in any
    phase, end in one line with the command that continues the work, and the shell's status for
    the signal (130, 143); a resume of a finished run is one line and status 0."""
    from ..runs.record import RunFinished
    from ..signals import exit_status, stop_on_signals
    from ._hooks import check_output_dir, in_sweep, record_job_success

    @functools.wraps(task)
    def wrapper(cfg):
        quiet_nonzero_rank()
        try:
            with stop_on_signals():
                check_output_dir(cfg)
                result = task(cfg)
        except (KeyboardInterrupt, SystemExit) as exc:
            signum = _stopped_by(exc)
            if signum is None:
                raise
            _report(stopped_line(cfg, signum), sweep_goes_on=False, status=exit_status(signum))
        except RunFinished as exc:  # nothing done, nothing changed: not a failure, and not logged
            if launched_rank() == 0:
                print(f"note: {exc}", file=sys.stderr, flush=True)
            result = None
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


def _stopped_by(exc: BaseException) -> int | None:
    """The signal that stopped the work, or None for an exit that is not a stop: the one our
    handler received (Lightning turns its exception into ``sys.exit(1)`` inside a fit), or
    Lightning's SIGTERMException (a SystemExit with status 0, raised at a batch boundary where its
    own handler ran alone). Lightning is looked up only if it was imported (``unipts-export``
    does not import it)."""
    import signal

    from ..signals import received

    if received() is not None:
        return received()
    module = sys.modules.get("lightning.pytorch.utilities.exceptions")
    return signal.SIGTERM if module is not None and isinstance(exc, module.SIGTERMException) else None


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


def stopped_line(cfg, signum: int) -> str:
    """What to tell the user when ``signum`` stopped the work: the shell-quoted command that
    continues it (resumes from the last checkpoint; starts a run stopped before its first
    checkpoint over in its own directory; runs an export or evaluation again)."""
    from ..runs.record import RECORD_DIR, IDENTITY_FILE
    from ..signals import name
    from ._hooks import RESUMABLE

    run_dir = Path(cfg.paths.output_dir)
    stopped, command = f"{run_dir}: stopped by {name(signum)}", _command(cfg)
    if cfg.task not in RESUMABLE:
        return f"{stopped}; nothing was left half-written; run it again with: {shlex.join(command)}"
    if not (run_dir / RECORD_DIR / IDENTITY_FILE).is_file():  # before the run was accepted and recorded
        return f"{stopped} before it started; start it again with: {shlex.join([*command, f'hydra.run.dir={run_dir}'])}"
    resume = shlex.join([*command, "ckpt_path=last", f"hydra.run.dir={run_dir}"])
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        return f"{stopped}; {last} holds the last complete epoch; resume with: {resume}"
    return f"{stopped} before its first checkpoint; start it over in the same directory with: {resume}"


def _command(cfg) -> list[str]:
    """The entry point and the command line's overrides, less where to write and what to resume."""
    from hydra.core.hydra_config import HydraConfig

    kept = [o for o in (HydraConfig.get().overrides.task if HydraConfig.initialized() else [])
            if not o.startswith(("ckpt_path=", "hydra.run.dir="))]
    return [f"unipts-{cfg.task}", *kept]
