"""Checks of a composed run configuration, before any work is done.

Each failure raises :class:`unipts.UniptsError` naming the key, the value and what is valid.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from . import UniptsError
from .checks import check_number

DATA_SETS = ("digits", "cifar10", "imagefolder", "imagenet")


def get_key(cfg: DictConfig, key: str):
    return OmegaConf.select(cfg, key, throw_on_missing=False, default=None)


def _number(cfg: DictConfig, key: str, **rule):
    """The value of ``key``, checked by :func:`unipts.checks.check_number` (``rule``: its range)."""
    try:
        return check_number(get_key(cfg, key), key, **rule)
    except ValueError as exc:
        raise UniptsError(str(exc)) from exc


def _existing_path(cfg: DictConfig, key: str) -> None:
    value = get_key(cfg, key)
    if value is not None and not Path(str(value)).expanduser().exists():
        raise UniptsError(f"{key}: no such file or folder: {value}")


def _finite_numbers(cfg: DictConfig) -> None:
    """No NaN or infinity anywhere: they pass range checks (every comparison with NaN is false)."""
    from .atomic import non_finite_fields

    values = OmegaConf.to_container(cfg, resolve=False)  # a literal is what a user types
    values.pop("hydra", None)
    bad = non_finite_fields(values)
    if bad:
        raise UniptsError(f"{bad[0]}: {OmegaConf.select(cfg, bad[0])} is not a finite number")


def _common(cfg: DictConfig) -> None:
    _finite_numbers(cfg)
    from .models import MODELS  # imports torch: here, not at import time, so `--help` stays fast

    _number(cfg, "seed", low=0, integer=True)
    name = get_key(cfg, "data.name")
    if name not in DATA_SETS:
        raise UniptsError(f"data.name: unknown data set {name!r}; valid: {list(DATA_SETS)}")
    if not get_key(cfg, "data.download"):
        _existing_path(cfg, "data.root")
    for key in ("data.batch_size", "data.eval_batch_size"):
        _number(cfg, key, low=1, integer=True)
    _num_workers(cfg)
    _classes(cfg)
    _validate_trainer(cfg)
    skip = get_key(cfg, "data.skip_bad_images")
    if skip is not None and not isinstance(skip, bool):
        raise UniptsError(f"data.skip_bad_images: {skip!r} is not a boolean (true or false)")
    root = get_key(cfg, "data.root")
    if root is not None and not isinstance(root, str):
        raise UniptsError(f"data.root: {root!r} is not a path")
    model = get_key(cfg, "model")
    if not isinstance(model, DictConfig):
        raise UniptsError(f"model: {model!r} is not a model config; valid: model=<{'|'.join(sorted(MODELS))}|custom>")
    if not get_key(cfg, "model._target_") and get_key(cfg, "model.name") not in MODELS:
        raise UniptsError(f"model.name: unknown model {get_key(cfg, 'model.name')!r}; valid: {sorted(MODELS)} or a model._target_")


def _validate_trainer(cfg: DictConfig) -> None:
    from .trainer_checks import trainer_problem

    trainer = get_key(cfg, "trainer")
    problem = trainer_problem(OmegaConf.to_container(trainer, resolve=True)) if trainer is not None else None
    if problem:
        raise UniptsError(problem)


#: Data sets whose labels are fixed: a network for them has exactly this many classes.
FIXED_CLASSES = {"digits": 10, "cifar10": 10}


def _classes(cfg: DictConfig) -> None:
    """``data.num_classes`` and ``data.class_index``; how they fit the class folders is checked
    when the folders are read (:func:`unipts.data.datasets.class_labels`)."""
    num_classes = _number(cfg, "data.num_classes", low=1, integer=True, allow_none=True)
    name = get_key(cfg, "data.name")
    if name in FIXED_CLASSES and num_classes not in (None, FIXED_CLASSES[name]):
        raise UniptsError(f"data.num_classes: {num_classes}, but data={name} has {FIXED_CLASSES[name]} classes; "
                          f"valid: {FIXED_CLASSES[name]}")
    index = get_key(cfg, "data.class_index")
    if index is None:
        return
    if not isinstance(index, str) or not Path(index).expanduser().is_file():
        raise UniptsError(f"data.class_index: {index!r} is not a file (give a text file with one class name per line: "
                          "line i names the network's class i)")


def _num_workers(cfg: DictConfig) -> None:
    from .data.workers import AUTO, AUTO_CAP, is_valid

    value = get_key(cfg, "data.num_workers")
    if not is_valid(value):
        raise UniptsError(f"data.num_workers: {value!r} is not a number of loader processes; valid: {AUTO} (the CPUs "
                          f"this process may use, less one, at most {AUTO_CAP}) or an integer >= 0 (0: load in the "
                          "main process)")


def validate_prune(cfg: DictConfig) -> None:
    _common(cfg)
    _number(cfg, "sparsity.target", low=0.0, high=1.0, high_open=True)
    _validate_pattern(cfg)
    _number(cfg, "calib.size", low=1, integer=True, allow_none=True)
    _number(cfg, "calib.seed", low=0, integer=True)
    _validate_unlabeled(cfg)
    if get_key(cfg, "eval_split") not in ("test", "val"):
        raise UniptsError(f"eval_split: {get_key(cfg, 'eval_split')!r} is not one of 'test', 'val'")
    if get_key(cfg, "eval_split") == "val":
        _number(cfg, "validation.size", low=1, integer=True)
        _number(cfg, "validation.seed", low=0, integer=True)
    dense_ckpt = get_key(cfg, "dense_ckpt")
    if dense_ckpt is not None and not isinstance(dense_ckpt, str):
        raise UniptsError(f"dense_ckpt: {dense_ckpt!r} is not a path")
    _existing_path(cfg, "dense_ckpt")
    if dense_ckpt is not None and Path(dense_ckpt).expanduser().is_dir():
        raise UniptsError(f"dense_ckpt: {dense_ckpt} is a folder; give a checkpoint file (.pt/.pth/.ckpt)")
    if get_key(cfg, "dense_ckpt") is None and not get_key(cfg, "data.pretrain_on_the_fly"):
        raise UniptsError(f"dense_ckpt: required for data={get_key(cfg, 'data.name')} (a dense checkpoint file; "
                          "only data=digits pretrains one on the fly)")
    ckpt_path = get_key(cfg, "ckpt_path")
    if ckpt_path not in (None, "last"):
        _existing_path(cfg, "ckpt_path")
    _number(cfg, "finetune.epochs", low=0, integer=True, allow_none=not get_key(cfg, "method.finetune"))
    if get_key(cfg, "method.finetune"):
        _validate_sgd(cfg, "finetune")
        _validate_distill_inputs(cfg)
    _number(cfg, "dynamic.interval", low=0, integer=True)
    _number(cfg, "dynamic.srste_decay", low=0.0)
    _number(cfg, "objective.feature_weight", low=0.0, allow_none=True)
    _number(cfg, "dynamic.ramp", low=0.0, high=1.0, high_open=True, allow_none=True)
    for key in ("checkpoint.every_n_epochs", "trainer.num_nodes"):
        if get_key(cfg, key) is not None:
            _number(cfg, key, low=1, integer=True)
    _validate_checkpoint(cfg)
    rule = get_key(cfg, "allocation.rule")
    from .sparse import RULES

    if rule not in RULES and rule != "search":
        raise UniptsError(f"allocation.rule: unknown rule {rule!r}; valid: {sorted([*RULES, 'search'])}")
    if rule == "table":
        path = get_key(cfg, "allocation.path")
        if path is None:
            raise UniptsError("allocation.path: required with allocation=table (a YAML file of layer: sparsity)")
        _existing_path(cfg, "allocation.path")
    if rule in ("regrow", "search"):
        _number(cfg, "allocation.delta", low=0.0, high=1.0, high_open=True)
    if rule == "search":
        _validate_search(cfg)
    objective = get_key(cfg, "objective.name")
    if objective not in ("dkl", "kd"):
        raise UniptsError(f"objective.name: unknown objective {objective!r}; valid: dkl, kd")
    _validate_objective(cfg, objective)
    from .methods import build_method

    build_method(cfg).check(cfg)  # what the method itself cannot run


def _validate_objective(cfg: DictConfig, name: str) -> None:
    """Temperatures and the base decay (a temperature of 0 divides by zero: a NaN loss at the first step)."""
    temperatures = ("temperature",) if name == "kd" else ("teacher_temperature", "student_temperature", "tau0")
    for key in temperatures:
        _number(cfg, f"objective.{key}", low=0.0, low_open=True)
    if name == "dkl":
        _number(cfg, "objective.gamma", low=0.0, low_open=True, high=1.0)
    decay_per = get_key(cfg, "objective.decay_per")
    if decay_per not in (None, "epoch", "step"):
        raise UniptsError(f"objective.decay_per: {decay_per!r} is not one of ['epoch', 'step']")


def _validate_unlabeled(cfg: DictConfig) -> None:
    """``calib.root``: a folder of images without labels, so nothing may ask for their labels."""
    root = get_key(cfg, "calib.root")
    if root is None:
        return
    if not isinstance(root, str) or not Path(root).expanduser().is_dir():
        raise UniptsError(f"calib.root: {root!r} is not a folder (give a folder of unlabeled calibration images)")
    if get_key(cfg, "calib.balanced"):
        raise UniptsError("calib.balanced: needs labels, and calib.root images have none; use calib.balanced=false")
    if get_key(cfg, "allocation.rule") == "search" and get_key(cfg, "allocation.fitness") in (None, "top1"):
        raise UniptsError("allocation.fitness: top1 scores against labels, and calib.root images have none; "
                          "valid here: agreement, kl")


def _validate_distill_inputs(cfg: DictConfig) -> None:
    from .data.augment import MIX_MODES

    _number(cfg, "finetune.crop_min_area", low=0.0, low_open=True, high=1.0, allow_none=True)
    mode = get_key(cfg, "finetune.mix")
    if mode is None:
        return
    if mode not in MIX_MODES:
        raise UniptsError(f"finetune.mix: {mode!r} is not one of {list(MIX_MODES)}")
    _number(cfg, "finetune.mix_alpha", low=1e-6)
    _number(cfg, "finetune.mix_prob", low=0.0, high=1.0)
    _number(cfg, "finetune.mix_until", low=0.0, high=1.0)
    holdout = _number(cfg, "finetune.holdout_images", low=0, integer=True, allow_none=True)
    size = get_key(cfg, "calib.size")
    if holdout and size is not None and holdout >= size:
        raise UniptsError(f"finetune.holdout_images: {holdout} leaves no calibration image to train on "
                          f"(calib.size is {size}); valid: 0..{size - 1}")


def _validate_pattern(cfg: DictConfig) -> None:
    """``sparsity.pattern``: 'unstructured' or N:M; N:M fixes ``sparsity.target`` at 1 - N/M."""
    from .sparse.pattern import check_target, parse_pattern

    try:
        pattern = parse_pattern(get_key(cfg, "sparsity.pattern"))
    except ValueError as exc:
        raise UniptsError(f"sparsity.pattern: {exc}") from exc
    if pattern is None:
        return
    try:
        check_target(get_key(cfg, "sparsity.target"), pattern)
    except ValueError as exc:
        raise UniptsError(str(exc)) from exc


def _validate_search(cfg: DictConfig) -> None:
    from .search import GAConfig

    try:  # the genetic algorithm's own rules, in its words (its settings' names) under `allocation.`
        GAConfig(**{key: get_key(cfg, f"allocation.{key}")
                    for key in ("population", "generations", "parents", "mutation_rate", "patience")})
    except ValueError as exc:
        raise UniptsError(f"allocation.{exc}") from exc
    # The algorithm would take all of a smaller population as parents; a user asking for more means something else.
    _number(cfg, "allocation.parents", low=1, high=get_key(cfg, "allocation.population"), integer=True)
    _number(cfg, "allocation.noise_std", low=0.0)
    _number(cfg, "allocation.batch_size", low=1, integer=True)
    from .search.fitness import FITNESS_METRICS

    if get_key(cfg, "allocation.fitness") not in (None, *FITNESS_METRICS):
        raise UniptsError(f"allocation.fitness: {get_key(cfg, 'allocation.fitness')!r} is not one of {list(FITNESS_METRICS)}")
    bn = _number(cfg, "allocation.bn_images", low=1, integer=True, allow_none=True)
    fit = _number(cfg, "allocation.fitness_images", low=1, integer=True, allow_none=True)
    used = (bn or 0) + (0 if get_key(cfg, "allocation.fitness_on_bn_images") else (fit or 0))
    cap = _number(cfg, "allocation.max_images", low=1, integer=True, allow_none=True)
    size = get_key(cfg, "calib.size")
    if size is None:  # the whole training split: its size is known only once the data is loaded
        return
    key = "allocation.max_images" if cap is not None and cap < size else "calib.size"
    size = min(size, cap or size)
    what = f"{key} is {size}"
    if size < 2 and not get_key(cfg, "allocation.fitness_on_bn_images"):
        raise UniptsError(f"{key}: 1 image is too few for allocation=search, which re-estimates BatchNorm on some "
                          "calibration images and scores others; valid: 2 or more")
    if used > size:
        raise UniptsError(f"allocation.bn_images + allocation.fitness_images: {used} images, but {what}; "
                          "the search draws both from the calibration set")
    if bn is not None and fit is None and not get_key(cfg, "allocation.fitness_on_bn_images") and bn >= size:
        raise UniptsError(f"allocation.bn_images: {bn} leaves no calibration image to score ({what})")


def _validate_checkpoint(cfg: DictConfig) -> None:
    """``checkpoint.save_top_k`` and ``checkpoint.monitor``/``mode`` (Lightning would refuse them mid-run)."""
    if get_key(cfg, "checkpoint.save_top_k") is not None:
        _number(cfg, "checkpoint.save_top_k", low=-1, high=1, integer=True)
    if get_key(cfg, "checkpoint.monitor") and get_key(cfg, "checkpoint.mode") not in ("max", "min"):
        raise UniptsError(f"checkpoint.mode: {get_key(cfg, 'checkpoint.mode')!r} is not one of 'max', 'min'")


def _validate_sgd(cfg: DictConfig, node: str) -> None:
    """The optimiser settings under ``node`` (``finetune``, ``data.pretrain``: :class:`OptimConfig`)."""
    _number(cfg, f"{node}.lr", low=0.0)
    _number(cfg, f"{node}.momentum", low=0.0, high=1.0, high_open=True)
    _number(cfg, f"{node}.weight_decay", low=0.0)
    _number(cfg, f"{node}.warmup_epochs", low=0.0)


def validate_pretrain(cfg: DictConfig) -> None:
    _common(cfg)
    _validate_checkpoint(cfg)
    for key in ("data.pretrain.epochs", "data.pretrain.batch_size"):
        _number(cfg, key, low=1, integer=True)
    _validate_sgd(cfg, "data.pretrain")
    _number(cfg, "data.pretrain.label_smoothing", low=0.0, high=1.0, allow_none=True)


def validate_eval(cfg: DictConfig) -> None:
    _common(cfg)
    if get_key(cfg, "checkpoint") is None:
        raise UniptsError("checkpoint: required (checkpoint=PATH to a state_dict or unipts checkpoint)")
    _existing_path(cfg, "checkpoint")


def validate_export(cfg: DictConfig) -> Path:
    """The checked ``checkpoint`` path of a ``unipts-export`` configuration."""
    from .export import EXPORTERS

    value = get_key(cfg, "checkpoint")
    if value is None:
        raise UniptsError("checkpoint: required (checkpoint=PATH to the final.ckpt written by unipts-prune)")
    path = Path(str(value)).expanduser()
    if not path.exists():
        raise UniptsError(f"checkpoint: no file at {value}")
    if path.is_dir():
        raise UniptsError(f"checkpoint: {value} is a folder; give a checkpoint file (e.g. <run dir>/checkpoints/final.ckpt)")
    for key in ("num_classes", "in_channels", "input_size"):
        _number(cfg, key, low=1, integer=True, allow_none=True)
    exporter = get_key(cfg, "onnx.exporter")
    if exporter not in EXPORTERS:
        raise UniptsError(f"onnx.exporter: unknown exporter {exporter!r}; valid: {list(EXPORTERS)}")
    _number(cfg, "onnx.opset", low=7, integer=True, allow_none=True)
    _number(cfg, "onnx.check_batch", low=2, integer=True)
    _number(cfg, "onnx.tolerance", low=0.0)
    if not isinstance(get_key(cfg, "onnx.enabled"), bool):
        raise UniptsError(f"onnx.enabled: {get_key(cfg, 'onnx.enabled')!r} is not a boolean (true or false)")
    return path
