"""Sweeps (``-m``) with a bad job: the job's failure is recorded and the sweep goes on to the
next job; at its end the sweep names every failed job and exits with status 2."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from ..jobs import FAILURE_FILE, clear_failure, describe, read_failure, write_failure


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


class SweepStatus(Callback):
    """Registered in ``conf/runtime/default.yaml`` (``hydra.callbacks``)."""

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
