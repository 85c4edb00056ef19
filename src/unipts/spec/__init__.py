"""The run spec: a composed Hydra configuration read once, at the entry point, into typed sections
(:mod:`.sections`), every key known and every value checked beside its definition, with one-line
errors. This module is the boundary: it alone (with ``cli/``) sees a ``DictConfig``."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..common import UniptsError
from .fields import number, random_seed
from .runs import EvalSpec, PretrainSpec, PruneSpec, RunSpec, eval_spec, pretrain_spec, prune_spec
from .sections import Calib, Data, Finetune, Model, Objective, Sparsity, Trainer

__all__ = ["RunSpec", "PruneSpec", "PretrainSpec", "EvalSpec", "build_prune_spec", "build_pretrain_spec",
           "build_eval_spec", "resolved", "build_method", "check_export", "Calib", "Data", "Finetune",
           "Model", "Objective", "Sparsity", "Trainer"]


def resolved(cfg: DictConfig) -> dict:
    """The configuration as plain data, interpolations resolved, without Hydra's own node."""
    _finite_numbers(cfg)
    out = {}
    for key in cfg:
        if key == "hydra" or OmegaConf.is_missing(cfg, key):  # a mandatory value not given: absent
            continue
        value = cfg[key]
        out[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return out


def _finite_numbers(cfg: DictConfig) -> None:
    """No NaN or infinity anywhere: they pass range checks (every comparison with NaN is false)."""
    from ..atomic import non_finite_fields

    values = OmegaConf.to_container(cfg, resolve=False)  # a literal is what a user types
    values.pop("hydra", None)
    bad = non_finite_fields(values)
    if bad:
        raise UniptsError(f"{bad[0]}: {OmegaConf.select(cfg, bad[0])} is not a finite number")


def build_prune_spec(cfg: DictConfig, dense_given: bool = False, labelled: bool = True) -> PruneSpec:
    return prune_spec(resolved(cfg), build_method, dense_given, labelled)


def build_pretrain_spec(cfg: DictConfig) -> PretrainSpec:
    return pretrain_spec(resolved(cfg))


def build_eval_spec(cfg: DictConfig) -> EvalSpec:
    return eval_spec(resolved(cfg))


def build_method(node):
    """The run's method, instantiated from its ``method`` node (``_target_`` and the class's own
    options); an option it refuses is one :class:`~unipts.UniptsError` naming the key."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from ..methods import PRESETS, Method

    target = node.get("_target_") if isinstance(node, dict) else None
    if not target:
        presets = "|".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
        raise UniptsError(f"method._target_: {target!r} is not a method class; valid: method=<{presets}>, or a "
                          "conf/method/<name>.yaml of your own whose method._target_ names a unipts.methods.Method")
    try:
        method = instantiate(node, _convert_="all")
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, UniptsError):
            raise cause from exc
        if isinstance(cause, ValueError):  # the method's words name the option under the node
            raise UniptsError(f"method.{cause}") from exc
        if isinstance(cause, TypeError):  # an option the class does not take
            raise UniptsError(f"method: {cause}") from exc
        raise UniptsError(f"method._target_: cannot make {target!r} ({str(exc).splitlines()[0]})") from exc
    if not isinstance(method, Method):
        raise UniptsError(f"method._target_: {target} is a {type(method).__name__}, not a unipts.methods.Method")
    return method


def check_export(config: dict) -> Path:
    """The checked ``checkpoint`` path of a ``unipts-export`` configuration."""
    from ..export import EXPORTERS

    value = config.get("checkpoint")
    if value is None:
        raise UniptsError("checkpoint: required (checkpoint=PATH to the final.ckpt written by unipts-prune)")
    path = Path(str(value)).expanduser()
    if not path.exists():
        raise UniptsError(f"checkpoint: no file at {value}")
    if path.is_dir():
        raise UniptsError(f"checkpoint: {value} is a folder; give a checkpoint file (e.g. <run dir>/checkpoints/final.ckpt)")
    random_seed(config.get("seed"), "seed")
    for key in ("num_classes", "in_channels", "input_size"):
        number(config.get(key), key, low=1, integer=True, allow_none=True)
    onnx = config.get("onnx") or {}
    if onnx.get("exporter") not in EXPORTERS:
        raise UniptsError(f"onnx.exporter: unknown exporter {onnx.get('exporter')!r}; valid: {list(EXPORTERS)}")
    number(onnx.get("opset"), "onnx.opset", low=7, integer=True, allow_none=True)
    number(onnx.get("check_batch"), "onnx.check_batch", low=2, integer=True)
    number(onnx.get("tolerance"), "onnx.tolerance", low=0.0)
    if not isinstance(onnx.get("enabled"), bool):
        raise UniptsError(f"onnx.enabled: {onnx.get('enabled')!r} is not a boolean (true or false)")
    return path
