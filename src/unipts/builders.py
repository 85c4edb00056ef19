"""Objects from a composed configuration: data, networks, objectives, loggers and the trainer."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning.pytorch as pl
from hydra.utils import instantiate
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from omegaconf import DictConfig, OmegaConf
import torch
from torch import nn

from . import data as datasets
from .atomic import atomic_path
from .data import Splits
from .data.augment import MixImages
from .lightning import OptimConfig
from .models import build_model
from .objectives import BaseDecayedKL, PlainKD

log = logging.getLogger(__name__)


def build_splits(cfg: DictConfig) -> Splits:
    d = cfg.data
    if d.name == "digits":
        return datasets.digits(test_fraction=d.test_fraction, augment=d.augment)
    if d.name == "cifar10":
        return datasets.cifar10(d.root, cfg.paths.data_dir, download=d.download, augment=d.augment,
                                skip_bad_images=d.get("skip_bad_images", False))
    return datasets.imagefolder(d.root, d.train_dir, d.eval_dir, d.image_size, d.resize, augment=d.augment,
                                skip_bad_images=d.get("skip_bad_images", False))


def build_network(cfg: DictConfig, splits: Splits) -> nn.Module:
    model = build_model(OmegaConf.to_container(cfg.model, resolve=True), splits.num_classes, splits.in_channels)
    # Only 4-D tensors (convolution weights) change layout; loading a state_dict keeps it.
    return model.to(memory_format=torch.channels_last) if cfg.get("channels_last", False) else model


def build_objective(cfg: DictConfig) -> nn.Module:
    o = cfg.objective
    if o.name == "kd":
        return PlainKD(o.temperature)
    return BaseDecayedKL(o.teacher_temperature, o.student_temperature, o.tau0, o.gamma)


def build_mix(cfg: DictConfig) -> MixImages | None:
    """The distillation-time image mixing of ``finetune.mix`` (None when off)."""
    mode = cfg.finetune.get("mix", "none")
    return None if mode == "none" else MixImages(mode, cfg.finetune.get("mix_alpha", 1.0))


def optim_config(node: DictConfig) -> OptimConfig:
    return OptimConfig(lr=node.lr, momentum=node.momentum, weight_decay=node.weight_decay,
                       warmup_epochs=node.warmup_epochs)


def build_loggers(cfg: DictConfig) -> list:
    return [instantiate(node) for node in (cfg.get("logger") or {}).values() if node is not None]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written to a temporary name and renamed into place: a run killed
    while saving never leaves a half-written ``last.ckpt``."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)


def build_extra_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    """Callbacks named under ``extra_callbacks`` (``name: {_target_: ..., ...}``), appended last."""
    return [instantiate(node) for node in (cfg.get("extra_callbacks") or {}).values() if node is not None]


def build_trainer(cfg: DictConfig, max_epochs: int, callbacks: list[pl.Callback], save_top_k: int = -1) -> pl.Trainer:
    """A Trainer writing checkpoints to ``<run dir>/checkpoints`` (every epoch and ``last.ckpt``)."""
    ckpt_dir = Path(cfg.paths.output_dir) / "checkpoints"
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="epoch{epoch:03d}", auto_insert_metric_name=False,
                                 every_n_epochs=cfg.checkpoint.every_n_epochs, save_top_k=save_top_k,
                                 save_last=True, save_on_train_epoch_end=True)
    # save_on_train_epoch_end: Lightning otherwise saves only after a validation run, i.e. every
    # trainer.check_val_every_n_epoch epochs, and a pre-empted run would lose up to that many.
    trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    callbacks = [*callbacks, checkpoint]
    if trainer_kwargs.get("enable_progress_bar", True):
        callbacks.append(RichProgressBar())
    return pl.Trainer(max_epochs=max_epochs, logger=build_loggers(cfg) or False, callbacks=callbacks,
                      default_root_dir=cfg.paths.output_dir, plugins=[AtomicCheckpointIO()], **trainer_kwargs)
