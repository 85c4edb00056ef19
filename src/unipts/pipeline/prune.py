"""The prune pipeline, behind both ``unipts-prune`` and :func:`unipts.prune`.

:func:`run` is the job: inputs (data, dense network, calibration subset, student; assembled once
from the spec by :mod:`.inputs`) -> the method's masks -> fit -> summary. What is particular to a
method (its masks, what trains the student, its summary fields) is the
:class:`~unipts.methods.Method` the run spec names, and its parts see a
:class:`~unipts.methods.Job` of objects, not the spec.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import engine_errors
from .inputs import UNSCORED, FromSpec, Given, assemble

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from torch import nn

    from ..methods import Job
    from ..spec import PruneSpec
    from ..summary import RunSummary
    from .inputs import Inputs

# torch, Lightning and the engine are imported where they are used: a refused configuration is
# reported before Lightning is loaded.

__all__ = ["Given", "Outcome", "run", "start"]


def start(spec: PruneSpec, held: ExitStack) -> Path | None:
    """Lock the run directory for as long as ``held`` is open and refuse, before any work, a start
    that would mix two runs; the checkpoint to resume from, or None for a new run."""
    from ..runs.lock import hold_run_lock
    from ..runs.record import check_start

    held.enter_context(hold_run_lock(spec.run_dir))  # one process in a run directory, until it ends
    method = spec.method
    why = f"finetune.epochs={spec.finetune.epochs}" if method.trainer else f"method={method.name}"
    return check_start(spec, method.finetunes(), refusal=why)


@dataclass
class Outcome:
    """What a run leaves its caller: the summary (on global rank zero; None on the others), the
    sparse network (its masks folded into its weights, still masked layers) and the shape of one
    of its input images."""

    summary: RunSummary | None
    network: nn.Module
    input_shape: tuple[int, ...]


def run(spec: PruneSpec, resume: Path | None = None, given: Given | None = None) -> Outcome:
    """The whole job; ``resume``: the checkpoint to continue the fine-tune from (checked by
    :func:`start`); ``given``: the dense network and data from a Python caller."""
    import lightning.pytorch as pl

    from ..methods import Job
    from ..runs.identity import fingerprint, identity_record

    clock = Clock()
    method, source = spec.method, given or FromSpec()
    pl.seed_everything(spec.seed, workers=True, verbose=False)
    with clock("dense"):
        inputs = assemble(spec, source, resume)
    # what the run is: its settings and the data it starts from, inside every checkpoint it writes
    identity = identity_record(spec.config, fingerprint(inputs.dense.state_dict(), inputs.indices))
    job = Job(spec.run_dir, inputs.dense, inputs.student, inputs.data, inputs.splits.num_classes,
              spec.sparsity.target, spec.trainer)
    with clock("search"), engine_errors():
        allocating = method.allocate_(job)  # a callback when the allocation is decided during the fit
    module, callbacks = method.training(job)
    trainer = _trainer(spec, [*([allocating] if allocating else []), *callbacks], identity, inputs, resume,
                       list(source.loggers))
    with clock("finetune"):
        method.fit_(job, module, trainer, allocating, resume)
    return _finish(spec, job, module, trainer, inputs, allocating, resume, clock, identity)


class Clock:
    """Wall seconds of a run's phases, in the order they ran, and of the whole run; a resumed run
    adds its fit's seconds in the sessions before (``earlier_sessions``, which ``total`` leaves out)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.phases: dict[str, float] = {}
        self.earlier_sessions = 0.0

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.phases[phase] = self.phases.get(phase, 0.0) + time.perf_counter() - t

    def move(self, seconds: float, source: str, target: str) -> None:
        """Count ``seconds`` spent inside ``source`` as ``target``'s (the search runs inside the fit)."""
        self.phases[source] -= seconds
        self.phases[target] = self.phases.get(target, 0.0) + seconds

    def wall_s(self) -> dict[str, float]:
        earlier = {"earlier_sessions": self.earlier_sessions} if self.earlier_sessions else {}
        return {**self.phases, "total": time.perf_counter() - self.started, **earlier}


# -- the fit ----------------------------------------------------------------------------------
def _trainer(spec: PruneSpec, callbacks: list[pl.Callback], identity: dict, inputs: Inputs, resume: Path | None,
             loggers: list) -> pl.Trainer:
    """The trainer with the run's callbacks (the user's ``extra_callbacks`` after the method's) and
    loggers (the spec's, then ``loggers``), its loggers told the configuration, and the calibration
    indices saved beside its checkpoints."""
    from ..atomic import write_json_atomic
    from ..lightning import SparsityMonitor
    from .builders import build_extra_callbacks, build_trainer

    callbacks = [*callbacks, SparsityMonitor(), *build_extra_callbacks(spec.extra_callbacks)]
    trainer = build_trainer(spec, spec.method.fit_epochs(), callbacks, identity, spec.checkpoint.save_top_k,
                            loggers=loggers, validates=inputs.splits.eval is not None, resume=resume)
    for logger in trainer.loggers:
        logger.log_hyperparams(spec.config)
    if trainer.is_global_zero:
        write_json_atomic(spec.run_dir / "calib_indices.json", inputs.indices)
    return trainer


# -- the end ----------------------------------------------------------------------------------
def _finish(spec: PruneSpec, job: Job, module: pl.LightningModule, trainer: pl.Trainer, inputs: Inputs,
            allocating: pl.Callback | None, resume: Path | None, clock: Clock, identity: dict) -> Outcome:
    """Fold the masks into the weights, score the sparse network, and on global rank zero save
    the final checkpoint and write, log and show the run's summary."""
    from ..lightning import earlier_session_seconds, validation_seconds
    from ..sparse import fold_masks_
    from .steps import evaluate

    if allocating is not None and resume is None:  # a resumed fit restores the allocation, it does not rerun it
        clock.move(allocating.seconds, "finetune", "search")
    clock.move(validation_seconds(trainer), "finetune", "validation")  # the fit's validation passes
    clock.earlier_sessions = earlier_session_seconds(trainer)
    fold_masks_(job.student)
    metrics = evaluate(spec, module, job.data, trainer) if inputs.splits.eval is not None else UNSCORED
    shape = tuple(job.data.calibration_set(plain=True)[0][0].shape)
    summary = _summarise(spec, job, trainer, metrics, inputs, allocating, resume, clock, identity) \
        if trainer.is_global_zero else None
    return Outcome(summary, job.student, shape)


def _summarise(spec: PruneSpec, job: Job, trainer: pl.Trainer, metrics: dict, inputs: Inputs,
               allocating: pl.Callback | None, resume: Path | None, clock: Clock, identity: dict) -> RunSummary:
    """Save the final checkpoint, then write, log and show the run's summary."""
    from ..sparse.nm import describe as describe_pattern
    from ..summary import RunSummary
    from .steps import log_layer_table, report_run, save_final, write_summary

    method, dense_metrics = spec.method, inputs.dense_metrics
    checkpoint, sparsity = save_final(spec, job.student, job.run_dir, "final.ckpt", identity)
    pattern = describe_pattern(job.student)  # N:M: the pattern, its layer sparsity, the layers it leaves dense
    summary = RunSummary(
        "prune", method.name, spec.model.name, spec.data.name, target_sparsity=spec.sparsity.target,
        achieved_sparsity=sparsity["achieved_sparsity"], calib_size=len(inputs.indices), top1=metrics["top1"],
        top5=metrics["top5"], dense_top1=dense_metrics["top1"], wall_s=clock.wall_s(), layers=sparsity["layers"],
        checkpoint=checkpoint, config=spec.config,
        extra={"allocation": spec.allocation.rule, "seed": spec.seed, "eval_split": spec.eval_split,
               "resumed_from": str(resume) if resume else None, "skipped_images": len(inputs.splits.skipped_images),
               "dense_top5": dense_metrics["top5"], "dense_ckpt": inputs.dense_source, **method.summary(job),
               **({"sparsity_pattern": pattern} if pattern else {}), **(allocating.summary() if allocating else {})})
    log_layer_table(trainer, summary.layers, summary.achieved_sparsity)
    write_summary(job.run_dir, summary)
    report_run(summary, job.run_dir)
    return summary
