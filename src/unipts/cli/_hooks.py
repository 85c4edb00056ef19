"""Hydra callbacks (registered in ``conf/runtime/default.yaml``) and the sweep job record.

* :class:`OutputFolderCheck`: a run or sweep directory that cannot be a writable folder is one
  line before Hydra tries to create it (Hydra's own failure there is a traceback).
* :class:`SweepStatus`: a sweep (``-m``) with a bad job records the job's failure and goes on to
  the next job; at its end it names every failed job and exits with status 2.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from ..checks import folder_problem
from ..runs.jobs import FAILURE_FILE, clear_failure, describe, read_failure, write_failure
from ..runs.ranks import launched_rank
from ..runs.sweep import MULTIRUN_FILE


def in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _job() -> tuple[str, str, list[str]]:
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    return hc.runtime.output_dir, str(hc.job.num), list(hc.overrides.task)


def record_job_failure(error: str) -> None:
    job_dir, num, overrides = _job()
    write_failure(job_dir, num, overrides, error)


def record_job_success() -> None:
    clear_failure(_job()[0])


def check_output_dir(cfg: DictConfig) -> None:
    """``paths.output_dir`` (the run directory unless overridden) must be a writable folder; for a
    command that cannot resume (an evaluation, an export), one that holds no earlier results."""
    from ..common import UniptsError
    from ..runs.record import earlier_results, keeps_record_on_refusal, recorded_config

    out = Path(cfg.paths.output_dir)
    problem = folder_problem(out)
    if problem:
        raise UniptsError(f"paths.output_dir: {problem}; give a writable folder")
    if cfg.task in RESUMABLE:  # their start decides (unipts.runs.record.check_start): a resume may reuse it
        return
    held = earlier_results(out) + ([".unipts/"] if recorded_config(out) is not None else [])
    if held:
        with keeps_record_on_refusal(out):  # Hydra has rewritten a run's .hydra/: put it back
            raise UniptsError(f"hydra.run.dir: {out} already holds results ({', '.join(held)}), which unipts-{cfg.task} "
                              "would overwrite; leave hydra.run.dir out: it writes into a directory of its own")


RESUMABLE = ("prune", "pretrain")  # the tasks that keep a run directory a command can continue


def _refuse_folder(key: str, path: str) -> None:
    problem = folder_problem(Path(path))
    if problem:
        _refuse(f"{key}: {problem}; give a writable folder")


def used_sweep_dir(path: Path) -> str | None:
    """What ``path`` already holds, if anything: a new sweep there would rewrite the earlier
    sweep's ``multirun.yaml`` and run its jobs in the earlier jobs' folders (refused there, each
    refusal recorded as a ``failure.json`` in a good job)."""
    try:
        entries = sorted(entry.name for entry in path.iterdir()) if path.is_dir() else []
    except OSError:
        return None  # folder_problem names an unreadable folder
    if not entries:
        return None
    shown = ", ".join(entries[:4]) + (f" and {len(entries) - 4} more" if len(entries) > 4 else "")
    what = "an earlier sweep" if MULTIRUN_FILE in entries else "other files"
    return f"{path} already holds {what} ({shown})"


def _refuse_used_sweep_dir(path: str) -> None:
    """A sweep starts only in a new or empty folder, refused before Hydra writes anything there."""
    used = used_sweep_dir(Path(path))
    if used and launched_rank() == 0:  # a DDP child re-runs its parent's command in the parent's folder
        _refuse(f"hydra.sweep.dir: {used}; a sweep never writes into an earlier one: leave hydra.sweep.dir out "
                f"for a new folder (unipts-collect {shlex.quote(path)} lists the earlier sweep's results and names "
                "each unfinished job with the command that runs it)")


def _refuse(line: str) -> None:
    print(f"error: {line}", file=sys.stderr, flush=True)
    sys.exit(2)  # a SystemExit passes Hydra's error report, which would print a traceback


class OutputFolderCheck(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _refuse_folder("hydra.run.dir", config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _refuse_folder("hydra.sweep.dir", config.hydra.sweep.dir)
        _refuse_used_sweep_dir(config.hydra.sweep.dir)


class SweepStatus(Callback):
    """At the end of a sweep: one line per failed job (read from the jobs' ``failure.json``, so
    it works for launchers that run jobs in other processes too), then exit status 2."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        failures = [read_failure(p) for p in sorted(sweep_dir.glob(f"*/{FAILURE_FILE}"))]
        if not failures:
            return
        for record in failures:
            print(f"error: sweep: {describe(record)}", file=sys.stderr)
        print(f"error: sweep: {len(failures)} job(s) failed; the others' results are in {sweep_dir} "
              "(unipts-collect lists both)", file=sys.stderr, flush=True)
        sys.exit(2)
