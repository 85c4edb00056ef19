"""The prune pipeline, behind both ``unipts-prune`` and :func:`unipts.prune`.

:func:`run` is the job: data -> dense model -> student -> method -> fit -> summary. What is
particular to a method (its masks, what trains the student, its summary fields) is the
:class:`~unipts.methods.Method` the run spec names; the rest is here. The command builds the data
and the dense model from the spec; a Python caller hands them over as :class:`Given`.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .. import OptionError, UniptsError

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from torch import nn

    from ..data import Splits
    from ..lightning import CalibrationDataModule
    from ..methods import Job, Method
    from ..spec import PruneSpec
    from ..summary import RunSummary

# torch, Lightning and the engine are imported where they are used: a refused configuration is
# reported before Lightning is loaded.

log = logging.getLogger("unipts")


@dataclass
class Given:
    """What a Python caller hands over instead of what the spec would build: the dense network
    (used as it is: the student is a copy), the data's splits (None: the spec's data set's;
    ``eval`` None: nothing to score top-1 on) and Lightning loggers added to the spec's."""

    dense: nn.Module
    splits: Splits | None = None
    loggers: list = field(default_factory=list)
    source: str = "given"  # where the dense network came from, as the summary's dense_ckpt


def start(spec: PruneSpec, held: ExitStack) -> Path | None:
    """Lock the run directory for as long as ``held`` is open and refuse, before any work, a start
    that would mix two runs; the checkpoint to resume from, or None for a new run."""
    from ..runs.lock import hold_run_lock
    from ..runs.record import check_start

    held.enter_context(hold_run_lock(spec.run_dir))  # one process in a run directory, until it ends
    method = spec.method
    why = f"finetune.epochs={spec.finetune.epochs}" if method.trainer else f"method={method.name}"
    return check_start(spec, method.finetunes(spec), refusal=why)


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

    from ..lightning import SparsityMonitor, validation_seconds
    from ..lightning.callbacks import RunIdentity
    from ..methods import Job
    from ..runs.identity import fingerprint, identity_record
    from ..sparse import fold_masks_
    from .steps import evaluate

    clock = Clock()
    method = spec.method
    pl.seed_everything(spec.seed, workers=True, verbose=False)
    splits = _labelled_splits(spec, given)
    with clock("dense"):
        dense, dense_source = _dense(spec, splits, given)  # trained on the labelled split where it pre-trains
        splits = _calibration_splits(spec, splits)
        indices = _calibration_subset(spec, splits, resume)
        data = method.datamodule(spec, splits, indices)
        dense_metrics = _score_dense(spec, dense, splits.num_classes, data, dense_source)
    # what the run is: its settings and the data it starts from, inside every checkpoint it writes
    identity = identity_record(spec.config, fingerprint(dense.state_dict(), indices))
    job = Job(spec, spec.run_dir, dense, _student(spec, dense), data, splits.num_classes)
    with clock("search"), _engine_errors():
        allocating = method.allocate_(job)  # a callback when the allocation is decided during the fit
    module, callbacks = method.training(job)
    trainer = _trainer(spec, method, [*([allocating] if allocating else []), SparsityMonitor(), RunIdentity(identity),
                                      *callbacks], indices, resume, given.loggers if given else [],
                       validates=splits.eval is not None)
    with clock("finetune"):
        _fit(method, job, module, trainer, allocating, resume)
    if allocating is not None and resume is None:  # a resumed fit restores the allocation, it does not rerun it
        clock.move(allocating.seconds, "finetune", "search")
    clock.move(validation_seconds(trainer), "finetune", "validation")  # the fit's validation passes
    fold_masks_(job.student)
    metrics = evaluate(spec, module, data, trainer) if splits.eval is not None else UNSCORED
    shape = tuple(data.calibration_set(plain=True)[0][0].shape)
    if not trainer.is_global_zero:
        return Outcome(None, job.student, shape)
    return Outcome(_summarise(method, job, trainer, metrics, dense_metrics, dense_source, splits, indices, allocating,
                              resume, clock, identity), job.student, shape)


class Clock:
    """Wall seconds of a run's phases, in the order they ran, and of the whole run."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.phases: dict[str, float] = {}

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
        return {**self.phases, "total": time.perf_counter() - self.started}


@contextmanager
def _engine_errors() -> Iterator[None]:
    """The engine's refusals (a table that does not fit, sizes out of range) as the user's one line:
    its messages name the configuration key."""
    try:
        yield
    except (ValueError, FileNotFoundError) as exc:
        raise UniptsError(str(exc)) from exc


# -- data -------------------------------------------------------------------------------------
def _labelled_splits(spec: PruneSpec, given: Given | None) -> Splits:
    """The data set's splits (or the caller's), with ``eval_split=val``'s held-out images as the
    evaluation split; ``calib.size`` and an ``allocation=table`` file are checked against them
    before the dense model is pre-trained, loaded or evaluated."""
    from ..builders import build_splits
    from ..data import hold_out_validation

    splits = given.splits if given is not None and given.splits is not None else build_splits(spec.data)
    if spec.eval_split == "val":
        with _engine_errors():
            splits = hold_out_validation(splits, spec.validation.size, spec.validation.seed)
        log.info("evaluating on %d held-out training images (eval_split=val), not on the test split",
                 spec.validation.size)
    if spec.calib.root is None:
        _check_calib_size(spec, len(splits.train_labels))
    _check_allocation(spec, splits, given)
    return splits


def _calibration_splits(spec: PruneSpec, splits: Splits) -> Splits:
    """With ``calib.root``, its unlabeled images take the training split's place for calibration."""
    if spec.calib.root is None:
        return splits
    from ..data import unlabeled_calibration

    splits = unlabeled_calibration(spec.calib.root, splits)
    _check_calib_size(spec, len(splits.train_labels))
    return splits


def _check_calib_size(spec: PruneSpec, available: int) -> None:
    size = spec.method.calibration_size(spec)
    if size is not None and size > available:
        where = "calib.root" if spec.calib.root is not None else "the training split"
        raise UniptsError(f"calib.size: {size} is larger than {where} ({available} images); valid: 1..{available}")


def _check_allocation(spec: PruneSpec, splits: Splits, given: Given | None) -> None:
    """The network must be maskable as ``model.exclude`` asks, its masks must reach its forward, and
    the allocation must fit it and ``sparsity.target`` (an ``allocation=table`` file names layers),
    before the dense model is loaded or trained."""
    import torch

    from ..builders import build_network

    with torch.random.fork_rng(devices=[]):  # the run draws the same random numbers with or without the check
        network = copy.deepcopy(given.dense) if given is not None else build_network(spec, splits)
        network = _masked_network(spec, network)
        _log_unmaskable(network)
        _check_masks_reach_forward(spec, network, splits)
        spec.allocation.check_network(network, spec.sparsity.target)
        if spec.method.pruner is not None:
            spec.method.pruner.check_network(network)


def _masked_network(spec: PruneSpec, network: nn.Module, srste_decay: float | None = None) -> nn.Module:
    """``network`` sparsified as the run asks (:func:`unipts.sparse.sparsify`)."""
    from ..sparse import sparsify

    kwargs = {} if srste_decay is None else {"srste_decay": srste_decay}
    try:
        return sparsify(network, exclude=list(spec.model.exclude), pattern=spec.sparsity.pattern, **kwargs)
    except OptionError:  # its message names the option already
        raise
    except ValueError as exc:  # an attention it cannot mask as asked
        raise UniptsError(f"model.exclude: {exc}") from exc


def _log_unmaskable(network: nn.Module) -> None:
    from ..sparse import unmaskable_layers

    skipped = unmaskable_layers(network)
    if skipped:
        log.warning("model: %d Conv2d/Linear layer(s) of a subclass with a forward of its own (%s) stay dense and are "
                    "not counted in the sparsity: unipts masks plain Conv2d, Linear and MultiheadAttention only",
                    len(skipped), ", ".join(sorted(set(skipped.values()))))


def _check_masks_reach_forward(spec: PruneSpec, network: nn.Module, splits: Splits) -> None:
    """One forward pass on a training image: a network that reads a masked weight itself (not
    through its layer) would compute with the dense weight; it is refused, naming the layers."""
    from ..sparse import exclude_patterns, unmasked_weight_reads
    from ..sparse.probe import describe_unmasked_reads

    image = splits.train_plain[0][0].unsqueeze(0)
    device = next(network.parameters()).device  # a caller's network may sit on its accelerator
    try:
        found = unmasked_weight_reads(network, image.to(device))
    except Exception as exc:  # noqa: BLE001 - whatever fails here fails on every batch of the run
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else "no detail"
        raise UniptsError(f"model: {spec.model.name} cannot run on data={spec.data.name}'s {tuple(image.shape[1:])} "
                          f"images ({type(exc).__name__}: {first})") from exc
    if found:
        patterns = [*spec.model.exclude, *exclude_patterns(sorted(found))]
        raise UniptsError(f"model: {describe_unmasked_reads(found)}; keep them dense with "
                          f"model.exclude='[{','.join(patterns)}]'")


def _calibration_subset(spec: PruneSpec, splits: Splits, resume: Path | None) -> list[int]:
    """The calibration indices; when resuming, the ones saved beside the checkpoint, which must
    be the ones this configuration draws."""
    from ..data import calibration_indices

    calib, size = spec.calib, spec.method.calibration_size(spec)
    size = len(splits.train_labels) if size is None else size
    indices = calibration_indices(splits.train_labels, size, calib.seed, calib.balanced)
    if resume is not None:
        saved_file = resume.parent.parent / "calib_indices.json"
        if saved_file.is_file():
            saved = json.loads(saved_file.read_text())
            if saved != indices:
                raise UniptsError(f"calib.size/calib.seed/calib.balanced: {saved_file} holds a different calibration "
                                  f"subset ({len(saved)} images) than this configuration draws ({len(indices)}); "
                                  "resume with the original run's calib settings")
            log.info("resume: reusing the calibration subset in %s", saved_file)
            indices = saved
    return indices


# -- networks ---------------------------------------------------------------------------------
#: the metrics of a run that has no evaluation images (a Python caller gave none)
UNSCORED = {"top1": None, "top5": None}


def _dense(spec: PruneSpec, splits: Splits, given: Given | None) -> tuple[nn.Module, str]:
    """The dense network and where it came from: the caller's, in the memory layout the command
    would give it, or read, cached or pre-trained as the spec says."""
    import torch

    from ..dense import obtain_dense

    if given is None:
        return obtain_dense(spec, splits)
    dense = given.dense.to(memory_format=torch.channels_last) if spec.runtime.channels_last else given.dense
    return dense, given.source


def _score_dense(spec: PruneSpec, dense: nn.Module, num_classes: int, data: CalibrationDataModule,
                 source: str) -> dict[str, float | None]:
    from .steps import evaluate_network

    if data.splits.eval is None:
        log.info("dense model (%s): no evaluation images given, top-1 not measured", source)
        return UNSCORED
    metrics = evaluate_network(spec, dense, num_classes, data)
    log.info("dense model (%s): top-1 %.4f", source, metrics["top1"])
    return metrics


def _student(spec: PruneSpec, dense: nn.Module) -> nn.Module:
    """A masked copy of ``dense``, all masks still ones."""
    from ..sparse.nm import log_pattern

    student = _masked_network(spec, copy.deepcopy(dense), spec.method.srste_decay(spec))
    log_pattern(student)
    return student


# -- the fit ----------------------------------------------------------------------------------
def _trainer(spec: PruneSpec, method: Method, callbacks: list[pl.Callback], indices: list[int],
             resume: Path | None, loggers: list, validates: bool) -> pl.Trainer:
    """The trainer with the run's callbacks (the user's ``extra_callbacks`` last) and loggers (the
    spec's, then ``loggers``), its loggers told the configuration, and the calibration indices
    saved beside its checkpoints."""
    from ..atomic import remove_leftovers, write_json_atomic
    from ..builders import build_extra_callbacks, build_trainer

    run_dir = spec.run_dir
    epochs = method.trainer.epochs_for(spec) if method.finetunes(spec) else 0
    trainer = build_trainer(spec, epochs, [*callbacks, *build_extra_callbacks(spec.extra_callbacks)],
                            spec.checkpoint.save_top_k, loggers=loggers,
                            validates=validates)
    if resume is not None and trainer.is_global_zero:
        _keep_earlier_metrics(run_dir)
        remove_leftovers(run_dir / "checkpoints")
    for logger in trainer.loggers:
        logger.log_hyperparams(spec.config)
    if trainer.is_global_zero:
        write_json_atomic(run_dir / "calib_indices.json", indices)
    return trainer


def _keep_earlier_metrics(run_dir: Path) -> None:
    """Lightning's CSV logger starts ``metrics.csv`` afresh; a resumed run keeps the interrupted
    run's rows as ``metrics.<n>.csv`` beside it."""
    current = run_dir / "csv" / "metrics.csv"
    if current.is_file():
        n = len(list(current.parent.glob("metrics.*.csv")))
        current.rename(current.with_name(f"metrics.{n}.csv"))


def _fit(method: Method, job: Job, module: pl.LightningModule, trainer: pl.Trainer, allocating: pl.Callback | None,
         resume: Path | None) -> None:
    """Train the student (without a fine-tune, an allocation decided during the fit runs on its
    own), then re-estimate its BatchNorm statistics if the method asks."""
    from ..console import with_progress
    from ..methods.placement import on_accelerator
    from ..sparse import reestimate_bn_

    if method.finetunes(job.spec):
        if resume is not None:
            log.info("resume: continuing the fine-tune from %s (masks, optimizer, schedule and allocation "
                     "come from the checkpoint)", resume)
        trainer.fit(module, datamodule=job.data, ckpt_path=str(resume) if resume is not None else None)
    elif allocating is not None:
        with on_accelerator(job.spec.trainer, job.student):
            allocating.allocate_alone(job.student, job.data.calibration_set(plain=True), trainer)
    if method.bn_recalibrate:
        batches = math.ceil(len(job.data.calibration_set(plain=True)) / job.data.batch_size)
        with on_accelerator(job.spec.trainer, job.student) as device:
            images = (x.to(device, non_blocking=True) for x in job.data.calibration_batches())
            reestimate_bn_(job.student, with_progress(images, "BN re-estimation", batches))


# -- the summary ------------------------------------------------------------------------------
def _summarise(method: Method, job: Job, trainer: pl.Trainer, metrics: dict, dense_metrics: dict, dense_source: str,
               splits: Splits, indices: list[int], allocating: pl.Callback | None, resume: Path | None,
               clock: Clock, identity: dict) -> RunSummary:
    """Save the final checkpoint, then write, log and show the run's summary."""
    from ..sparse.nm import describe as describe_pattern
    from ..summary import RunSummary
    from .steps import log_layer_table, report_run, save_final, write_summary

    spec = job.spec
    checkpoint, sparsity = save_final(spec, job.student, job.run_dir, "final.ckpt", identity)
    pattern = describe_pattern(job.student)  # N:M: the pattern, its layer sparsity, the layers it leaves dense
    summary = RunSummary(
        "prune", method.name, spec.model.name, spec.data.name, target_sparsity=spec.sparsity.target,
        achieved_sparsity=sparsity["achieved_sparsity"], calib_size=len(indices), top1=metrics["top1"],
        top5=metrics["top5"], dense_top1=dense_metrics["top1"], wall_s=clock.wall_s(), layers=sparsity["layers"],
        checkpoint=checkpoint, config=spec.config,
        extra={"allocation": spec.allocation.rule, "seed": spec.seed, "eval_split": spec.eval_split,
               "resumed_from": str(resume) if resume else None, "skipped_images": len(splits.skipped_images),
               "dense_top5": dense_metrics["top5"], "dense_ckpt": dense_source, **method.summary(job),
               **({"sparsity_pattern": pattern} if pattern else {}), **(allocating.summary() if allocating else {})})
    log_layer_table(trainer, summary.layers, summary.achieved_sparsity)
    write_summary(job.run_dir, summary)
    report_run(summary, job.run_dir)
    return summary
