"""What a sweep set out to run, from its own record: Hydra's ``<sweep dir>/multirun.yaml``.

Hydra's basic sweeper writes ``multirun.yaml`` (the sweep's configuration, its command-line
overrides under ``hydra.overrides.task``) before it launches the first job, so the file is there
even when the sweep was stopped with Ctrl-C before some jobs started, and nothing but a new sweep
in the same folder rewrites it (a job resumed by hand rewrites only its own ``.hydra/``). Its
jobs are the cartesian product of the sweep lists, numbered in the order the sweeper launches
them; :func:`expected_jobs` recomputes that list with the sweeper's own code, so ``unipts-collect``
can name every job that never ran.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..safe_read import UnreadableFile, read_regular

MULTIRUN_FILE = "multirun.yaml"
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
JOB_NUM_SUBDIR = "${hydra.job.num}"  # unipts's hydra.sweep.subdir (conf/runtime/default.yaml)


class UnknownJobs(ValueError):
    """The sweep's record does not say which jobs it runs (another sweeper, a sweep Hydra can
    expand only with its config loader); the message says why."""


@dataclass(frozen=True)
class ExpectedJob:
    num: int
    overrides: list[str] | None  # None: shuffled sweep values, so which job got which is only known once it ran
    dir: Path | None             # None: hydra.sweep.subdir is not the job number alone


@dataclass(frozen=True)
class Sweep:
    """A sweep folder and the jobs its ``multirun.yaml`` says it launches."""
    dir: Path
    task: str | None
    jobs: list[ExpectedJob]

    def command(self, job: ExpectedJob) -> str | None:
        """The command that runs ``job`` on its own, in its sweep folder; None if not known."""
        if self.task is None or job.overrides is None or job.dir is None:
            return None
        return shlex.join([f"unipts-{self.task}", *job.overrides, f"hydra.run.dir={job.dir}"])


def expected_jobs(hydra_node: dict) -> list[list[str] | None]:
    """Each job's overrides, in job-number order, for the sweep whose ``hydra`` config node is
    ``hydra_node`` (a composed config's, or ``multirun.yaml``'s as plain data); an entry is None
    where values are shuffled. :class:`UnknownJobs` where the sweep does not fix its jobs."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    sweeper = hydra_node.get("sweeper") or {}
    if sweeper.get("_target_") != BASIC_SWEEPER:
        raise UnknownJobs(f"hydra.sweeper is {sweeper.get('_target_')}, which chooses its jobs as it runs")
    # as BasicSweeper.sweep: its params first, then the command line's overrides
    arguments = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    arguments += list((hydra_node.get("overrides") or {}).get("task") or [])
    try:
        parsed = OverridesParser.create().parse_overrides(arguments)
        jobs = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    except HydraException as exc:  # glob() needs Hydra's config loader; interval() is not for this sweeper
        raise UnknownJobs(f"hydra.overrides.task cannot be expanded here ({str(exc).splitlines()[0]})") from exc
    shuffled = any(getattr(o.value(), "shuffle", False) for o in parsed if o.is_sweep_override())
    return [None if shuffled else job for job in jobs]


def read_sweep(multirun_file: Path) -> Sweep:
    """The sweep recorded in ``multirun_file``; :class:`~unipts.safe_read.UnreadableFile` or
    :class:`UnknownJobs` (both ValueErrors, their messages one line) when it cannot say."""
    try:
        config = yaml.safe_load(read_regular(multirun_file))
    except yaml.YAMLError as exc:
        raise UnreadableFile(f"{multirun_file.name} is not a YAML file ({str(exc).splitlines()[0]})") from exc
    hydra_node = config.get("hydra") if isinstance(config, dict) else None
    if not isinstance(hydra_node, dict):
        raise UnreadableFile(f"{multirun_file.name} holds no Hydra sweep record (no hydra: node)")
    sweep_dir = multirun_file.parent
    by_num = ((hydra_node.get("sweep") or {}).get("subdir")) == JOB_NUM_SUBDIR
    task = config.get("task") if isinstance(config.get("task"), str) else None
    jobs = [ExpectedJob(num, overrides, sweep_dir / str(num) if by_num else None)
            for num, overrides in enumerate(expected_jobs(hydra_node))]
    return Sweep(sweep_dir, task, jobs)
