"""The dense model: read from a checkpoint, or pre-trained (and cached) where the data set allows."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from .atomic import save_torch_atomic
from .builders import build_network, optim_config, progress_callbacks
from .data import Splits
from .lightning import CalibrationDataModule, Classifier
from .models import load_weights, read_state_dict

log = logging.getLogger(__name__)


def pretrain_module(cfg: DictConfig, splits: Splits, model: nn.Module) -> tuple[Classifier, CalibrationDataModule]:
    recipe = cfg.data.pretrain
    module = Classifier(model, splits.num_classes, optim_config(recipe), recipe.get("label_smoothing", 0.0))
    data = CalibrationDataModule(splits, None, recipe.batch_size, cfg.data.eval_batch_size, cfg.data.num_workers,
                                 seed=cfg.seed)
    return module, data


def _cache_key(cfg: DictConfig) -> str:
    relevant = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("model", "data")}
    relevant["seed"] = cfg.seed
    relevant["torch"] = torch.__version__.split("+")[0]
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def pretrain_on_the_fly(cfg: DictConfig, splits: Splits) -> nn.Module:
    """Train the dense model on the full training split, with no checkpoints or loggers; its
    progress is a bar in a terminal, else a log line every few epochs."""
    model = build_network(cfg, splits)
    module, data = pretrain_module(cfg, splits, model)
    progress, bar = progress_callbacks("pretrain", cfg.trainer.get("enable_progress_bar", True))
    trainer = pl.Trainer(max_epochs=cfg.data.pretrain.epochs, accelerator=cfg.trainer.accelerator, devices=1,
                         logger=False, enable_checkpointing=False, enable_progress_bar=bar, callbacks=progress,
                         enable_model_summary=False)
    trainer.fit(module, datamodule=data)
    return model


def obtain_dense(cfg: DictConfig, splits: Splits) -> tuple[nn.Module, str]:
    """The dense network and where it came from (a file, the cache, or a fresh pre-training)."""
    model = build_network(cfg, splits)
    if cfg.dense_ckpt is not None:
        load_weights(model, read_state_dict(cfg.dense_ckpt), cfg.dense_ckpt)
        return model, str(cfg.dense_ckpt)
    cache = Path(cfg.paths.cache_dir) / f"dense_{cfg.model.name}_{cfg.data.name}_{_cache_key(cfg)}.pt"
    if cache.is_file():
        log.info("dense model: reusing the cached pre-trained model %s", cache)
        load_weights(model, read_state_dict(cache, "cache"), cache, "cache")
        return model, str(cache)
    log.info("dense model: none given (dense_ckpt=null); pre-training %s on %s for %d epochs, cached at %s",
             cfg.model.name, cfg.data.name, cfg.data.pretrain.epochs, cache)
    model = pretrain_on_the_fly(cfg, splits)
    save_torch_atomic(model.state_dict(), cache)
    return model, str(cache)
