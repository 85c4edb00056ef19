"""``unipts-prune``: post-training sparsity of a dense network with a small calibration subset.

The command composes the configuration, reads it into a run spec and runs the pipeline
(:mod:`unipts.pipeline.prune`), the same one :func:`unipts.prune` runs from Python.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import hydra
from omegaconf import DictConfig

from ..console import verbose_flag
from ._entry import CONFIG_DIR, reports_errors

# torch, Lightning and the engine are imported where they are used: `--help` loads none of them,
# and a refused configuration is reported before Lightning is loaded.


@verbose_flag
@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="prune")
@reports_errors
def main(cfg: DictConfig) -> None:
    from ..console import apply_runtime
    from ..pipeline.prune import run, start
    from ..runs.record import keeps_record_on_refusal, record_start
    from ..spec import build_prune_spec

    run_dir = Path(cfg.paths.output_dir)
    with ExitStack() as held:
        with keeps_record_on_refusal(run_dir):  # a refused start leaves the run's .hydra/ as it was
            spec = build_prune_spec(cfg)
            resume = start(spec, held)
        apply_runtime(spec.runtime)
        record_start(spec)
        run(spec, resume)


if __name__ == "__main__":
    main()
