"""The run specs of the entry points: a resolved configuration read into typed sections, every key
known, every value checked, before any work. Everything below ``cli/`` takes one of these."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..common import UniptsError
from .fields import existing_path, number, random_seed, read_section
from .loggers import read_loggers
from .sections import (Calib, Checkpoint, Data, Dynamic, Finetune, Model, Objective, Paths, Runtime, Sparsity,
                       Trainer, Validation)

if TYPE_CHECKING:
    from ..methods import Method
    from ..methods.allocators import Allocator


@dataclass(frozen=True)
class RunSpec:
    """What every entry point has: the data set, the network, the trainer, where and how it runs.
    ``config``: the resolved configuration as composed, recorded with the run and its loggers."""

    task: str
    seed: int
    paths: Paths
    runtime: Runtime
    data: Data | None
    model: Model | None
    trainer: Trainer | None
    logger: dict
    config: dict = field(repr=False)

    @property
    def run_dir(self) -> Path:
        return Path(self.paths.output_dir)


@dataclass(frozen=True)
class PruneSpec(RunSpec):
    dense_ckpt: str | None = None
    ckpt_path: str | None = None
    eval_split: str = "test"
    validation: Validation | None = None
    sparsity: Sparsity | None = None
    calib: Calib | None = None
    finetune: Finetune | None = None
    dynamic: Dynamic | None = None
    checkpoint: Checkpoint | None = None
    allocation: Allocator | None = None
    objective: Objective | None = None
    method: Method | None = None
    extra_callbacks: dict = field(default_factory=dict)
    #: what leaves the calibration images without labels: ``"calib.root"``, ``"calibration"`` (images
    #: given to :func:`unipts.prune` without labels) or None (labelled)
    unlabeled: str | None = None


@dataclass(frozen=True)
class PretrainSpec(RunSpec):
    ckpt_path: str | None = None
    checkpoint: Checkpoint | None = None
    method_name: str = "dense"


@dataclass(frozen=True)
class EvalSpec(RunSpec):
    checkpoint: str | None = None
    method_name: str = "eval"


def _common(config: dict) -> dict[str, Any]:
    """The sections every entry point reads, in the order a user meets them."""
    random_seed(config.get("seed"), "seed")
    return dict(task=config.get("task"), seed=config["seed"], paths=read_section(Paths, config["paths"], "paths"),
                runtime=read_section(Runtime, config.get("runtime") or {}, "runtime"),
                data=Data.read(config.get("data") or {}), trainer=Trainer.read(config.get("trainer")),
                model=Model.read(config.get("model")), logger=read_loggers(dict(config.get("logger") or {})),
                config=config)


def _refuse_unknown(config: dict, known: tuple[str, ...]) -> None:
    unknown = [k for k in config if k not in known]
    if unknown:
        raise UniptsError(f"{unknown[0]}: unknown key; valid top-level keys: {', '.join(known)}")


PRUNE_KEYS = ("task", "seed", "paths", "runtime", "data", "model", "trainer", "logger", "dense_ckpt", "ckpt_path",
              "extra_callbacks", "eval_split", "validation", "sparsity", "calib", "finetune", "dynamic", "checkpoint",
              "allocation", "objective", "method")


def prune_spec(config: dict, method_builder, dense_given: bool = False, labelled: bool = True) -> PruneSpec:
    """A ``unipts-prune`` spec from its resolved configuration; ``method_builder`` makes the method
    from its node (the spec's boundary does, with Hydra). From a Python caller
    (:func:`unipts.prune`): ``dense_given``, the dense network is its own, not ``dense_ckpt``'s;
    ``labelled``, whether its calibration images have labels."""
    _refuse_unknown(config, PRUNE_KEYS)
    common = _common(config)
    sparsity = read_section(Sparsity, config["sparsity"], "sparsity")
    calib = read_section(Calib, config["calib"], "calib")
    eval_split = config.get("eval_split")
    if eval_split not in ("test", "val"):
        raise UniptsError(f"eval_split: {eval_split!r} is not one of 'test', 'val'")
    validation = read_section(Validation, config["validation"], "validation")
    if eval_split == "val":
        number(validation.size, "validation.size", low=1, integer=True)
        random_seed(validation.seed, "validation.seed")
    dense_ckpt = _dense_ckpt(config.get("dense_ckpt"), common["data"], dense_given)
    ckpt_path = config.get("ckpt_path")
    if ckpt_path not in (None, "last"):
        existing_path(ckpt_path, "ckpt_path")
    method = method_builder(config.get("method"))
    finetune = read_section(Finetune, config["finetune"], "finetune")  # checked by the trainer that reads it
    dynamic = read_section(Dynamic, config["dynamic"], "dynamic")
    checkpoint = read_section(Checkpoint, config["checkpoint"], "checkpoint")
    from ..methods.allocators import build_allocator

    allocation = build_allocator(config["allocation"])
    objective = Objective.read(config["objective"])
    spec = PruneSpec(**common, dense_ckpt=dense_ckpt, ckpt_path=ckpt_path, eval_split=eval_split,
                     validation=validation, sparsity=sparsity, calib=calib, finetune=finetune, dynamic=dynamic,
                     checkpoint=checkpoint, allocation=allocation, objective=objective, method=method,
                     extra_callbacks=dict(config.get("extra_callbacks") or {}),
                     unlabeled="calib.root" if calib.root is not None else None if labelled else "calibration")
    allocation.check(spec)
    method.configure(spec)  # what the method itself cannot run is refused; its parts keep what they read
    return spec


def _dense_ckpt(value, data: Data, dense_given: bool) -> str | None:
    if dense_given and value is not None:
        raise UniptsError(f"dense_ckpt: {value!r} given beside the dense model passed to unipts.prune; leave it out")
    if value is not None and not isinstance(value, str):
        raise UniptsError(f"dense_ckpt: {value!r} is not a path")
    existing_path(value, "dense_ckpt")
    if value is not None and Path(value).expanduser().is_dir():
        raise UniptsError(f"dense_ckpt: {value} is a folder; give a checkpoint file (.pt/.pth/.ckpt)")
    if value is None and not (data.pretrain_on_the_fly or dense_given):
        raise UniptsError(f"dense_ckpt: required for data={data.name} (a dense checkpoint file; only data=digits "
                          "pretrains one on the fly)")
    return value


PRETRAIN_KEYS = ("task", "seed", "paths", "runtime", "data", "model", "trainer", "logger", "ckpt_path", "method",
                 "checkpoint")


def pretrain_spec(config: dict) -> PretrainSpec:
    _refuse_unknown(config, PRETRAIN_KEYS)
    common = _common(config)
    if common["data"].pretrain is None:
        raise UniptsError(f"data.pretrain: data={common['data'].name} has no dense recipe to train with (give "
                          "data.pretrain: epochs, batch_size, lr, momentum, weight_decay, warmup_epochs)")
    checkpoint = read_section(Checkpoint, config["checkpoint"], "checkpoint")
    ckpt_path = config.get("ckpt_path")
    if ckpt_path not in (None, "last"):
        existing_path(ckpt_path, "ckpt_path")
    return PretrainSpec(**common, ckpt_path=ckpt_path, checkpoint=checkpoint,
                        method_name=(config.get("method") or {}).get("name", "dense"))


def eval_spec(config: dict) -> EvalSpec:
    common = _common(config)
    checkpoint = config.get("checkpoint")
    if checkpoint is None:
        raise UniptsError("checkpoint: required (checkpoint=PATH to a state_dict or unipts checkpoint)")
    existing_path(checkpoint, "checkpoint")
    return EvalSpec(**common, checkpoint=checkpoint, method_name=(config.get("method") or {}).get("name", "eval"))
