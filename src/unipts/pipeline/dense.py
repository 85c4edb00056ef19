"""The dense model: read from a checkpoint, or pre-trained (and cached) where the data set allows."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from dataclasses import asdict

import lightning.pytorch as pl
import torch
from torch import nn

from ..common import UniptsError
from ..atomic import save_torch_atomic
from ..checks import folder_problem
from ..data import Splits
from ..lightning import CalibrationDataModule, Classifier, OptimConfig
from ..models import load_weights, read_state_dict
from ..spec import RunSpec
from .builders import build_network, progress_callbacks

log = logging.getLogger(__name__)


def pretrain_module(spec: RunSpec, splits: Splits, model: nn.Module) -> tuple[Classifier, CalibrationDataModule]:
    recipe = spec.data.pretrain
    module = Classifier(model, splits.num_classes, OptimConfig.of(recipe), recipe.label_smoothing or 0.0)
    data = CalibrationDataModule(splits, None, recipe.batch_size, spec.data.eval_batch_size, spec.data.num_workers,
                                 seed=spec.seed)
    return module, data


def _cache_key(spec: RunSpec) -> str:
    relevant = {"model": spec.model.as_config(), "data": {**asdict(spec.data), "pretrain": asdict(spec.data.pretrain)}}
    relevant["seed"] = spec.seed
    relevant["torch"] = torch.__version__.split("+")[0]
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def pretrain_on_the_fly(spec: RunSpec, splits: Splits) -> nn.Module:
    """Train the dense model on the full training split, with no checkpoints or loggers; its
    progress is a bar in a terminal, else a log line every few epochs."""
    model = build_network(spec, splits)
    module, data = pretrain_module(spec, splits, model)
    progress, bar = progress_callbacks("pretrain", spec.trainer.progress_bar)
    trainer = pl.Trainer(max_epochs=spec.data.pretrain.epochs, accelerator=spec.trainer.accelerator, devices=1,
                         logger=False, enable_checkpointing=False, enable_progress_bar=bar, callbacks=progress,
                         enable_model_summary=False)
    trainer.fit(module, datamodule=data)
    return model


def _check_writable(folder: Path) -> None:
    """The cache folder must take a file: found before the pre-training, not when its result cannot
    be kept."""
    problem = folder_problem(folder)
    if problem:
        raise UniptsError(f"paths.cache_dir: {problem}, and the pre-trained dense model is kept there; set "
                          "UNIPTS_CACHE_DIR (or paths.cache_dir) to a writable folder, or give dense_ckpt")


def obtain_dense(spec, splits: Splits) -> tuple[nn.Module, str]:
    """The dense network and where it came from (a file, the cache, or a fresh pre-training)."""
    model = build_network(spec, splits)
    if spec.dense_ckpt is not None:
        load_weights(model, read_state_dict(spec.dense_ckpt), spec.dense_ckpt)
        return model, str(spec.dense_ckpt)
    cache = Path(spec.paths.cache_dir) / f"dense_{spec.model.name}_{spec.data.name}_{_cache_key(spec)}.pt"
    if cache.is_file():
        log.info("dense model: reusing the cached pre-trained model %s", cache)
        load_weights(model, read_state_dict(cache, "cache"), cache, "cache")
        return model, str(cache)
    _check_writable(cache.parent)
    log.info("dense model: none given (dense_ckpt=null); pre-training %s on %s for %d epochs, cached at %s",
             spec.model.name, spec.data.name, spec.data.pretrain.epochs, cache)
    model = pretrain_on_the_fly(spec, splits)
    save_torch_atomic(model.state_dict(), cache)
    return model, str(cache)
