"""Checks of a composed run configuration, before any work is done.

Each failure raises :class:`unipts.UniptsError` naming the key, the value and what is valid.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from . import UniptsError
from .models import MODELS

DATA_SETS = ("digits", "cifar10", "imagefolder", "imagenet")


def _get(cfg: DictConfig, key: str):
    return OmegaConf.select(cfg, key, throw_on_missing=False, default=None)


def _number(cfg: DictConfig, key: str, *, low=None, high=None, high_open=False, integer=False, allow_none=False):
    value = _get(cfg, key)
    if value is None and allow_none:
        return None
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise UniptsError(f"{key}: {value!r} is not {kind}")
    if low is not None and value < low:
        raise UniptsError(f"{key}: {value} is below the minimum {low}")
    if high is not None and (value >= high if high_open else value > high):
        interval = f"[{low}, {high})" if high_open else f"[{low}, {high}]"
        raise UniptsError(f"{key}: {value} is outside {interval}")
    return value


def _existing_path(cfg: DictConfig, key: str) -> None:
    value = _get(cfg, key)
    if value is not None and not Path(str(value)).expanduser().exists():
        raise UniptsError(f"{key}: no such file or folder: {value}")


def _common(cfg: DictConfig) -> None:
    _number(cfg, "seed", low=0, integer=True)
    name = _get(cfg, "data.name")
    if name not in DATA_SETS:
        raise UniptsError(f"data.name: unknown data set {name!r}; valid: {list(DATA_SETS)}")
    if not _get(cfg, "data.download"):
        _existing_path(cfg, "data.root")
    for key in ("data.batch_size", "data.eval_batch_size"):
        _number(cfg, key, low=1, integer=True)
    _number(cfg, "data.num_workers", low=0, integer=True)
    skip = _get(cfg, "data.skip_bad_images")
    if skip is not None and not isinstance(skip, bool):
        raise UniptsError(f"data.skip_bad_images: {skip!r} is not a boolean (true or false)")
    root = _get(cfg, "data.root")
    if root is not None and not isinstance(root, str):
        raise UniptsError(f"data.root: {root!r} is not a path")
    model = _get(cfg, "model")
    if not isinstance(model, DictConfig):
        raise UniptsError(f"model: {model!r} is not a model config; valid: model=<{'|'.join(sorted(MODELS))}|custom>")
    if not _get(cfg, "model._target_") and _get(cfg, "model.name") not in MODELS:
        raise UniptsError(f"model.name: unknown model {_get(cfg, 'model.name')!r}; valid: {sorted(MODELS)} or a model._target_")


def validate_prune(cfg: DictConfig) -> None:
    _common(cfg)
    _number(cfg, "sparsity.target", low=0.0, high=1.0, high_open=True)
    if _get(cfg, "sparsity.pattern") != "unstructured":
        raise UniptsError(f"sparsity.pattern: {_get(cfg, 'sparsity.pattern')!r} is not supported; valid: 'unstructured'")
    _number(cfg, "calib.size", low=1, integer=True)
    _number(cfg, "calib.seed", low=0, integer=True)
    dense_ckpt = _get(cfg, "dense_ckpt")
    if dense_ckpt is not None and not isinstance(dense_ckpt, str):
        raise UniptsError(f"dense_ckpt: {dense_ckpt!r} is not a path")
    _existing_path(cfg, "dense_ckpt")
    if dense_ckpt is not None and Path(dense_ckpt).expanduser().is_dir():
        raise UniptsError(f"dense_ckpt: {dense_ckpt} is a folder; give a checkpoint file (.pt/.pth/.ckpt)")
    if _get(cfg, "dense_ckpt") is None and not _get(cfg, "data.pretrain_on_the_fly"):
        raise UniptsError(f"dense_ckpt: required for data={_get(cfg, 'data.name')} (a dense checkpoint file; "
                          "only data=digits pretrains one on the fly)")
    ckpt_path = _get(cfg, "ckpt_path")
    if ckpt_path not in (None, "last"):
        _existing_path(cfg, "ckpt_path")
    _number(cfg, "finetune.epochs", low=0, integer=True, allow_none=not _get(cfg, "method.finetune"))
    if _get(cfg, "method.finetune"):
        _number(cfg, "finetune.lr", low=0.0)
        _number(cfg, "finetune.weight_decay", low=0.0)
        _number(cfg, "finetune.warmup_epochs", low=0.0)
    _number(cfg, "dynamic.interval", low=0, integer=True)
    _number(cfg, "dynamic.srste_decay", low=0.0)
    if _get(cfg, "method.finetune"):
        _number(cfg, "finetune.momentum", low=0.0, high=1.0, high_open=True)
    for key in ("checkpoint.every_n_epochs", "trainer.num_nodes"):
        if _get(cfg, key) is not None:
            _number(cfg, key, low=1, integer=True)
    rule = _get(cfg, "allocation.rule")
    from .sparse import RULES

    if rule not in RULES and rule != "search":
        raise UniptsError(f"allocation.rule: unknown rule {rule!r}; valid: {sorted([*RULES, 'search'])}")
    if rule == "table":
        path = _get(cfg, "allocation.path")
        if path is None:
            raise UniptsError("allocation.path: required with allocation=table (a YAML file of layer: sparsity)")
        _existing_path(cfg, "allocation.path")
    if rule in ("regrow", "search"):
        _number(cfg, "allocation.delta", low=0.0, high=1.0, high_open=True)
    if rule == "search":
        _validate_search(cfg)
    objective = _get(cfg, "objective.name")
    if objective not in ("dkl", "kd"):
        raise UniptsError(f"objective.name: unknown objective {objective!r}; valid: dkl, kd")


def _validate_search(cfg: DictConfig) -> None:
    population = _number(cfg, "allocation.population", low=2, integer=True)
    _number(cfg, "allocation.generations", low=1, integer=True)
    _number(cfg, "allocation.parents", low=1, high=population, integer=True)
    _number(cfg, "allocation.mutation_rate", low=0.0, high=1.0)
    _number(cfg, "allocation.noise_std", low=0.0)
    _number(cfg, "allocation.batch_size", low=1, integer=True)
    bn = _number(cfg, "allocation.bn_images", low=1, integer=True, allow_none=True)
    fit = _number(cfg, "allocation.fitness_images", low=1, integer=True, allow_none=True)
    used = (bn or 0) + (0 if _get(cfg, "allocation.fitness_on_bn_images") else (fit or 0))
    size = _get(cfg, "calib.size")
    if used > size:
        raise UniptsError(f"allocation.bn_images + allocation.fitness_images: {used} images, but calib.size is {size}; "
                          "the search draws both from the calibration set")
    if bn is not None and fit is None and not _get(cfg, "allocation.fitness_on_bn_images") and bn >= size:
        raise UniptsError(f"allocation.bn_images: {bn} leaves no calibration image to score (calib.size is {size})")


def validate_pretrain(cfg: DictConfig) -> None:
    _common(cfg)
    for key in ("data.pretrain.epochs", "data.pretrain.batch_size"):
        _number(cfg, key, low=1, integer=True)
    _number(cfg, "data.pretrain.lr", low=0.0)


def validate_eval(cfg: DictConfig) -> None:
    _common(cfg)
    if _get(cfg, "checkpoint") is None:
        raise UniptsError("checkpoint: required (checkpoint=PATH to a state_dict or unipts checkpoint)")
    _existing_path(cfg, "checkpoint")
