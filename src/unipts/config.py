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
    if not _get(cfg, "model._target_") and _get(cfg, "model.name") not in MODELS:
        raise UniptsError(f"model.name: unknown model {_get(cfg, 'model.name')!r}; valid: {sorted(MODELS)} or a model._target_")


def validate_prune(cfg: DictConfig) -> None:
    _common(cfg)
    _number(cfg, "sparsity.target", low=0.0, high=1.0, high_open=True)
    if _get(cfg, "sparsity.pattern") != "unstructured":
        raise UniptsError(f"sparsity.pattern: {_get(cfg, 'sparsity.pattern')!r} is not supported; valid: 'unstructured'")
    _number(cfg, "calib.size", low=1, integer=True)
    _number(cfg, "calib.seed", low=0, integer=True)
    _existing_path(cfg, "dense_ckpt")
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
    objective = _get(cfg, "objective.name")
    if objective not in ("dkl", "kd"):
        raise UniptsError(f"objective.name: unknown objective {objective!r}; valid: dkl, kd")


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
