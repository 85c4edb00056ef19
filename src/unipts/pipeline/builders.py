"""Objects from a run spec: data, networks, loggers and the trainer."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning.pytorch as pl
from hydra.utils import instantiate
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.utilities import rank_zero_only
import torch
from torch import nn

from ..common import UniptsError
from ..atomic import atomic_path
from ..data import Splits
from ..lightning import EpochLog, FitClock, ValidateFirstAndLast
from ..models import build_model
from ..signals import signals_held
from ..spec import RunSpec
from ..spec.sections import Data

log = logging.getLogger(__name__)


def build_splits(data: Data) -> Splits:
    """The data set's splits: ``data._target_`` called with the data set's own options."""
    from hydra.utils import get_object

    factory = get_object(data.target)
    try:
        splits = factory(**data.options)
    except TypeError as exc:  # an option the factory does not take
        raise UniptsError(f"data: {exc}") from exc
    if not isinstance(splits, Splits):
        raise UniptsError(f"data._target_: {data.target} returned {type(splits).__name__}, not unipts.data.Splits")
    return splits


def build_network(spec: RunSpec, splits: Splits) -> nn.Module:
    model = build_model(spec.model.as_config(), splits.num_classes, splits.in_channels)
    # Only 4-D tensors (convolution weights) change layout; loading a state_dict keeps it.
    return model.to(memory_format=torch.channels_last) if spec.runtime.channels_last else model


def build_loggers(spec: RunSpec) -> list:
    loggers = [instantiate(node) for node in spec.logger.values() if node is not None]
    for logger in loggers:
        init = getattr(logger, "_wandb_init", None)  # WandbLogger's arguments to wandb.init, used lazily
        if not isinstance(init, dict):
            continue
        # Lightning always passes `anonymous`, which W&B deprecated ("The anonymous setting has no
        # effect"); leaving it out is the same run without the warning.
        if init.get("anonymous") is None:
            init.pop("anonymous", None)
        settings = init.setdefault("settings", {})
        if isinstance(settings, dict):
            if not spec.runtime.verbose:
                settings.setdefault("silent", True)  # no W&B banner; the end-of-run block lists wandb/
            settings.setdefault("init_timeout", WANDB_INIT_TIMEOUT_S)
    return loggers


# How long W&B online may wait for its server before the run stops (W&B's own default, 90 s, was
# a minute and a half of silence without a network).
WANDB_INIT_TIMEOUT_S = 30


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written to a temporary name and renamed into place: a run killed
    while saving never leaves a half-written ``last.ckpt``."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)


class EpochCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint whose saves of one moment (``epochNNN.ckpt``, then the ``last.ckpt`` a
    resume reads) are written whole: a SIGINT or SIGTERM arriving between them stops the run
    once both are on disk (:func:`unipts.signals.signals_held`)."""

    @property
    def state_key(self) -> str:
        # Lightning keys a callback's state in a checkpoint by its class name: keep ModelCheckpoint's,
        # so checkpoints written before this class existed resume with their checkpoint state
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def on_train_batch_end(self, *args, **kwargs) -> None:
        with signals_held():
            super().on_train_batch_end(*args, **kwargs)

    def on_train_epoch_end(self, *args, **kwargs) -> None:
        with signals_held():
            super().on_train_epoch_end(*args, **kwargs)

    def on_validation_end(self, *args, **kwargs) -> None:
        with signals_held():
            super().on_validation_end(*args, **kwargs)


def build_extra_callbacks(extra: dict) -> list[pl.Callback]:
    """Callbacks named under ``extra_callbacks`` (``name: {_target_: ..., ...}``), appended last."""
    return [instantiate(node) for node in extra.values() if node is not None]


def checkpoint_callbacks(spec: RunSpec, save_top_k: int = 0) -> list[ModelCheckpoint]:
    """``last.ckpt`` every ``checkpoint.every_n_epochs`` epochs (what a resume reads), the
    ``epochNNN.ckpt`` files ``save_top_k`` asks for (0: none, 1: the latest, -1: every epoch), and
    with ``checkpoint.monitor`` set, ``best.ckpt``: the best validated epoch by that metric."""
    ckpt_dir = spec.run_dir / "checkpoints"
    # save_on_train_epoch_end: Lightning otherwise saves only after a validation run, i.e. every
    # trainer.check_val_every_n_epoch epochs, and a pre-empted run would lose up to that many.
    # No version counter: a resumed run rewrites an epoch's file instead of adding epochNNN-v1.ckpt.
    common = dict(dirpath=ckpt_dir, auto_insert_metric_name=False, every_n_epochs=spec.checkpoint.every_n_epochs,
                  save_on_train_epoch_end=True, enable_version_counter=False)
    if save_top_k == 0:
        # Lightning refreshes last.ckpt only after it saved a top-k file: here last.ckpt is that file.
        callbacks = [EpochCheckpoint(filename="last", save_top_k=1, **common)]
    else:
        callbacks = [EpochCheckpoint(filename="epoch{epoch:03d}", save_top_k=save_top_k, save_last=True, **common)]
    monitor = spec.checkpoint.monitor
    if monitor:
        callbacks.append(EpochCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor, save_top_k=1,
                                         mode=spec.checkpoint.mode, save_on_train_epoch_end=False,
                                         enable_version_counter=False))
    return callbacks


def progress_callbacks(phase: str, wanted: bool = True) -> tuple[list[pl.Callback], bool]:
    """How a training phase shows progress, and whether the Trainer's progress bar is on: a
    progress bar in a terminal (when ``wanted``), else one log line per few epochs."""
    from ..console import interactive

    if wanted and interactive():
        return [RichProgressBar()], True
    return [EpochLog(phase)], False


def cpu_lacks_bf16(trainer_cfg: dict) -> bool:
    """bfloat16 autocast asked for on a CPU that has no bfloat16 instructions (AVX-512 BF16 or AMX):
    torch then emulates it, slower than float32 (with them, a CIFAR-10 fine-tune epoch is about 1.3x
    faster: benchmarks/bench_epoch.py)."""
    if trainer_cfg.get("accelerator") != "cpu" or not str(trainer_cfg.get("precision")).startswith("bf16"):
        return False
    return not (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def build_trainer(spec: RunSpec, max_epochs: int, callbacks: list[pl.Callback], identity: dict, save_top_k: int = 0,
                  phase: str = "fine-tune", loggers: list = (), validates: bool = True,
                  resume: Path | None = None) -> pl.Trainer:
    """A Trainer writing checkpoints to ``<run dir>/checkpoints`` (:func:`checkpoint_callbacks`)
    with the run's ``identity`` record in each (:class:`~unipts.lightning.callbacks.RunIdentity`),
    logging to the spec's loggers and ``loggers``; ``validates`` False: no evaluation images, so
    no validation passes. ``resume`` (the checkpoint the fit continues from): the interrupted
    run's leftovers are tidied first (:func:`~unipts.runs.record.tidy_for_resume`), so its
    metrics are kept."""
    from ..lightning.callbacks import RunIdentity
    from ..runs.record import tidy_for_resume

    trainer_kwargs = dict(spec.trainer.kwargs)
    if not validates:
        trainer_kwargs["limit_val_batches"] = 0
    if cpu_lacks_bf16(trainer_kwargs) and rank_zero_only.rank == 0:  # once, not from every DDP process
        log.warning("trainer.precision=%s: this CPU has no bfloat16 instructions (AVX-512 BF16 or AMX), so torch "
                    "emulates them and an epoch can take ten times as long; trainer.precision=32-true is faster here",
                    trainer_kwargs["precision"])
    wanted = trainer_kwargs.get("enable_progress_bar", True)
    progress, trainer_kwargs["enable_progress_bar"] = progress_callbacks(phase, wanted)
    loggers = [*build_loggers(spec), *loggers]
    checkpoints = checkpoint_callbacks(spec, save_top_k)
    callbacks = [*callbacks, RunIdentity(identity), ValidateFirstAndLast(), FitClock(), *checkpoints, *progress]
    try:
        trainer = pl.Trainer(max_epochs=max_epochs, logger=loggers or False, callbacks=callbacks,
                             default_root_dir=spec.paths.output_dir, plugins=[AtomicCheckpointIO()], **trainer_kwargs)
    except (MisconfigurationException, ValueError, TypeError, ImportError) as exc:
        # what the early check (unipts.trainer_checks) does not foresee, e.g. a strategy's needs
        raise UniptsError(f"trainer: {exc}") from exc
    if resume is not None and trainer.is_global_zero:
        tidy_for_resume(spec.run_dir)  # before the loggers write (they create their files on first use)
    return trainer
