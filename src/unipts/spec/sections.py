"""The sections of a run spec, one per configuration group: their keys, and each key's check
beside its definition. Sections are plain frozen dataclasses (no Hydra or OmegaConf below here)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..common import UniptsError
from .fields import boolean, existing_path, in_engine_words, number, one_of, random_seed


@dataclass(frozen=True)
class Paths:
    root: str
    data_dir: str
    cache_dir: str
    output_dir: str


@dataclass(frozen=True)
class Runtime:
    verbose: bool = False
    threads: Any = "auto"
    channels_last: bool = True

    def __post_init__(self) -> None:
        from ..console import cpus_available

        boolean(self.verbose, "runtime.verbose")
        boolean(self.channels_last, "runtime.channels_last")
        threads, cpus = self.threads, cpus_available()
        if threads != "auto" and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise UniptsError(f"runtime.threads: {threads!r} is not 'auto' or a number of threads >= 1")
        if threads != "auto" and threads > cpus:  # threads beyond the CPUs only contend for them
            raise UniptsError(f"runtime.threads: {threads} is more than the {cpus} CPUs this process may use; "
                              f"valid: auto or 1..{cpus}")
        omp = os.environ.get("OMP_NUM_THREADS")
        if threads == "auto" and omp and not (omp.strip().isdigit() and int(omp) >= 1):
            # auto defers to OMP_NUM_THREADS (set_threads), which torch would ignore or misread
            raise UniptsError(f"OMP_NUM_THREADS: {omp!r} in the environment is not a number of threads >= 1; "
                              f"unset it, or set runtime.threads (auto or 1..{cpus})")


@dataclass(frozen=True)
class Pretrain:
    """The dense recipe of a data set (``data.pretrain``)."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    warmup_epochs: float
    label_smoothing: float | None = 0.0

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size"):
            number(getattr(self, key), f"data.pretrain.{key}", low=1, integer=True)
        check_sgd(self, "data.pretrain")
        number(self.label_smoothing, "data.pretrain.label_smoothing", low=0.0, high=1.0, allow_none=True)


def check_sgd(node, key: str) -> None:
    """SGD's settings under ``key`` (``finetune``, ``data.pretrain``)."""
    number(node.lr, f"{key}.lr", low=0.0)
    number(node.momentum, f"{key}.momentum", low=0.0, high=1.0, high_open=True)
    number(node.weight_decay, f"{key}.weight_decay", low=0.0)
    number(node.warmup_epochs, f"{key}.warmup_epochs", low=0.0)


#: the keys of ``data`` the loaders and the dense recipe read; every other key is an option of the
#: data set's factory (``data._target_``), checked by the factory itself.
LOADER_KEYS = ("_target_", "name", "batch_size", "eval_batch_size", "num_workers", "pretrain_on_the_fly", "pretrain")


@dataclass(frozen=True)
class Data:
    """A data set: ``target`` (``data._target_``) builds its splits from ``options``."""

    target: str
    name: str
    batch_size: int
    eval_batch_size: int
    num_workers: Any
    pretrain_on_the_fly: bool
    pretrain: Pretrain | None = None
    options: dict = field(default_factory=dict)

    @classmethod
    def read(cls, node: dict, key: str = "data") -> Data:
        from .fields import read_section

        options = {k: v for k, v in node.items() if k not in LOADER_KEYS}
        loader = {k: v for k, v in node.items() if k in LOADER_KEYS}
        target = loader.pop("_target_", None)
        if not isinstance(target, str) or not target:
            raise UniptsError(f"{key}._target_: {target!r} does not name a data set factory (e.g. "
                              "unipts.data.cifar10, or a function of yours returning unipts.data.Splits)")
        if loader.get("pretrain") is not None:  # absent: the data set cannot pre-train a dense network
            loader["pretrain"] = read_section(Pretrain, loader["pretrain"], f"{key}.pretrain")
        return read_section(cls, loader, key, target=target, options=options)

    def __post_init__(self) -> None:
        for key in ("batch_size", "eval_batch_size"):
            number(getattr(self, key), f"data.{key}", low=1, integer=True)
        _num_workers(self.num_workers)
        if self.pretrain_on_the_fly and self.pretrain is None:
            raise UniptsError("data.pretrain: required with data.pretrain_on_the_fly=true (the dense recipe: epochs, "
                              "batch_size, lr, momentum, weight_decay, warmup_epochs)")
        if self.options.get("skip_bad_images") is not None:
            boolean(self.options["skip_bad_images"], "data.skip_bad_images")
        root = self.root
        if root is not None and not isinstance(root, str):
            raise UniptsError(f"data.root: {root!r} is not a path")
        if not self.options.get("download"):
            existing_path(root, "data.root")
        number(self.num_classes, "data.num_classes", low=1, integer=True, allow_none=True)
        index = self.options.get("class_index")
        if index is not None and (not isinstance(index, str) or not Path(index).expanduser().is_file()):
            raise UniptsError(f"data.class_index: {index!r} is not a file (give a text file with one class name per "
                              "line: line i names the network's class i)")

    @property
    def root(self):
        return self.options.get("root")

    @property
    def num_classes(self):
        return self.options.get("num_classes")


def _num_workers(value) -> None:
    from ..data.workers import AUTO, AUTO_CAP, is_valid

    if not is_valid(value):
        raise UniptsError(f"data.num_workers: {value!r} is not a number of loader processes; valid: {AUTO} (the CPUs "
                          f"this process may use, less one, at most {AUTO_CAP}) or an integer >= 0 (0: load in the "
                          "main process)")


@dataclass(frozen=True)
class Model:
    """A network: ``name`` from :data:`unipts.models.MODELS` (``options`` its arguments), a
    torchvision or timm name with ``library`` (in ``options``), or any callable named by
    ``_target_`` (in ``options``); ``exclude``: module-name patterns kept dense."""

    name: str
    exclude: tuple = ()
    options: dict = field(default_factory=dict)

    @classmethod
    def read(cls, node, key: str = "model") -> Model:
        from ..models import MODELS

        if not isinstance(node, dict):
            raise UniptsError(f"{key}: {node!r} is not a model config; valid: "
                              f"model=<{'|'.join(sorted(MODELS))}|torchvision|timm|custom>")
        options = {k: v for k, v in node.items() if k not in ("name", "exclude")}
        exclude = node.get("exclude") or []
        if isinstance(exclude, str):  # model.exclude=fc, without brackets: one pattern, as written
            exclude = [exclude]
        if not isinstance(exclude, list) or not all(isinstance(p, str) for p in exclude):
            raise UniptsError(f"{key}.exclude: {exclude!r} is not a list of module-name patterns (e.g. [fc, 'layer1.*'])")
        if not options.get("_target_") and options.get("library") is not None:
            _check_library(options, node.get("name"), key)
        elif not options.get("_target_") and node.get("name") not in MODELS:
            raise UniptsError(f"{key}.name: unknown model {node.get('name')!r}; valid: {sorted(MODELS)} or a "
                              f"{key}._target_")
        return cls(node.get("name"), tuple(exclude), options)

    def as_config(self) -> dict:
        """The node as written, for the network factory and the checkpoint's record."""
        return {"name": self.name, **self.options, "exclude": list(self.exclude)}


def _check_library(options: dict, name, key: str) -> None:
    """``model=torchvision``/``model=timm``: the library must be known and hold ``name``."""
    from ..models.zoo import library

    library(options["library"], key).check(name, options, key)


@dataclass(frozen=True)
class Sparsity:
    target: float
    pattern: Any = "unstructured"

    def __post_init__(self) -> None:
        from ..sparse.pattern import check_target, parse_pattern

        number(self.target, "sparsity.target", low=0.0, high=1.0, high_open=True)
        try:
            pattern = parse_pattern(self.pattern)
        except ValueError as exc:
            raise UniptsError(f"sparsity.pattern: {exc}") from exc
        if pattern is not None:
            try:
                check_target(self.target, pattern)
            except ValueError as exc:
                raise UniptsError(str(exc)) from exc

    @property
    def structured(self) -> bool:
        return self.pattern not in (None, "unstructured")


@dataclass(frozen=True)
class Calib:
    size: int | None
    seed: int
    balanced: bool = False
    root: str | None = None

    def __post_init__(self) -> None:
        number(self.size, "calib.size", low=1, integer=True, allow_none=True)
        random_seed(self.seed, "calib.seed")
        if self.root is None:
            return
        if not isinstance(self.root, str) or not Path(self.root).expanduser().is_dir():
            raise UniptsError(f"calib.root: {self.root!r} is not a folder (give a folder of unlabeled calibration "
                              "images)")
        if self.balanced:
            raise UniptsError("calib.balanced: needs labels, and calib.root images have none; use calib.balanced=false")


@dataclass(frozen=True)
class Validation:
    size: int
    seed: int


@dataclass(frozen=True)
class Finetune:
    """The few-shot fine-tune's schedule and its distillation inputs (checked by :meth:`check`,
    for a method that trains)."""

    epochs: int | None
    lr: float
    momentum: float
    weight_decay: float
    warmup_epochs: float
    mix: str | None = "none"
    mix_alpha: float = 1.0
    mix_prob: float = 1.0
    mix_until: float = 1.0
    crop_min_area: float | None = None
    holdout_images: int | None = 0

    def check(self, calib_size: int | None) -> None:
        from ..data.augment import MIX_MODES

        number(self.epochs, "finetune.epochs", low=0, integer=True)
        check_sgd(self, "finetune")
        number(self.crop_min_area, "finetune.crop_min_area", low=0.0, low_open=True, high=1.0, allow_none=True)
        if self.mix is None:
            return
        one_of(self.mix, "finetune.mix", MIX_MODES)
        number(self.mix_alpha, "finetune.mix_alpha", low=1e-6)
        number(self.mix_prob, "finetune.mix_prob", low=0.0, high=1.0)
        number(self.mix_until, "finetune.mix_until", low=0.0, high=1.0)
        holdout = number(self.holdout_images, "finetune.holdout_images", low=0, integer=True, allow_none=True)
        if holdout and calib_size is not None and holdout >= calib_size:
            raise UniptsError(f"finetune.holdout_images: {holdout} leaves no calibration image to train on "
                              f"(calib.size is {calib_size}); valid: 0..{calib_size - 1}")

    @property
    def mixes(self) -> bool:
        return self.mix not in (None, "none")


@dataclass(frozen=True)
class Dynamic:
    interval: int
    srste_decay: float
    ramp: float | None = 0.0

    def __post_init__(self) -> None:
        number(self.interval, "dynamic.interval", low=0, integer=True)
        number(self.srste_decay, "dynamic.srste_decay", low=0.0)
        number(self.ramp, "dynamic.ramp", low=0.0, high=1.0, high_open=True, allow_none=True)


#: What every validation pass logs (``Classifier._score``: top-1 and top-5 under ``val/``), the
#: metrics ``checkpoint.monitor`` may choose best.ckpt by.
VALIDATION_METRICS = ("val/top1", "val/top5")


@dataclass(frozen=True)
class Checkpoint:
    every_n_epochs: int | None = 1
    save_top_k: int | None = 0
    monitor: str | None = None
    mode: str = "max"

    def __post_init__(self) -> None:
        number(self.every_n_epochs, "checkpoint.every_n_epochs", low=1, integer=True, allow_none=True)
        number(self.save_top_k, "checkpoint.save_top_k", low=-1, high=1, integer=True, allow_none=True)
        if self.monitor and self.mode not in ("max", "min"):
            raise UniptsError(f"checkpoint.mode: {self.mode!r} is not one of 'max', 'min'")
        if self.monitor and self.monitor not in VALIDATION_METRICS:  # Lightning would stop after the first epoch
            raise UniptsError(f"checkpoint.monitor: {self.monitor!r} is not a metric of the validation pass that "
                              f"best.ckpt is chosen after; valid: {', '.join(VALIDATION_METRICS)}")


@dataclass(frozen=True)
class Trainer:
    """Lightning ``Trainer`` keyword arguments, checked against the machine before any work."""

    kwargs: dict

    @classmethod
    def read(cls, node, key: str = "trainer") -> Trainer:
        from ..trainer_checks import trainer_problem

        if not isinstance(node, dict):
            raise UniptsError(f"{key}: {node!r} is not a group of Trainer settings")
        problem = trainer_problem(node)
        if problem:
            raise UniptsError(problem)
        if node.get("num_nodes") is not None:
            number(node["num_nodes"], "trainer.num_nodes", low=1, integer=True)
        return cls(dict(node))

    @property
    def accelerator(self) -> str:
        return self.kwargs.get("accelerator", "auto")

    @property
    def devices(self):
        return self.kwargs.get("devices")

    @property
    def precision(self):
        return self.kwargs.get("precision")

    @property
    def progress_bar(self) -> bool:
        return self.kwargs.get("enable_progress_bar", True)


@dataclass(frozen=True)
class Objective:
    """The distillation objective: ``target`` builds the loss from ``options`` (its own checks);
    the rest is how the student is distilled (the teacher's BatchNorm, the decay's clock, which
    modules' outputs are distilled beside the logits)."""

    name: str
    target: str
    options: dict
    decay_per: str = "epoch"
    teacher_bn_train: bool = True
    features: tuple = ()
    feature_weight: float | None = 0.0

    @classmethod
    def read(cls, node: dict, key: str = "objective") -> Objective:
        from .fields import read_section

        own = ("name", "decay_per", "teacher_bn_train", "features", "feature_weight")
        options = {k: v for k, v in node.items() if k not in (*own, "_target_")}
        target = node.get("_target_")
        if not isinstance(target, str) or not target:
            raise UniptsError(f"{key}._target_: {target!r} does not name a loss class (e.g. "
                              "unipts.objectives.BaseDecayedKL)")
        fields = {k: v for k, v in node.items() if k in own}
        fields["features"] = tuple(fields.get("features") or ())
        return read_section(cls, fields, key, target=target, options=options)

    def __post_init__(self) -> None:
        number(self.feature_weight, "objective.feature_weight", low=0.0, allow_none=True)
        if bool(self.features) != bool(self.feature_weight):  # either alone distills nothing more than the logits
            raise UniptsError(f"objective.features, objective.feature_weight: {list(self.features)} and "
                              f"{self.feature_weight}: features are distilled only with both, the modules named "
                              "and a weight > 0 (e.g. objective.features=[layer1,layer2] objective.feature_weight=1); "
                              "for the logits alone leave features=[] and feature_weight=0")
        if self.decay_per not in (None, "epoch", "step"):
            raise UniptsError(f"objective.decay_per: {self.decay_per!r} is not one of ['epoch', 'step']")
        self.build()  # the loss's own checks, before any work

    def build(self):
        """The loss module (``objective._target_`` with its options)."""
        from hydra.utils import get_object

        try:
            loss_class = get_object(self.target)
        except Exception as exc:  # noqa: BLE001 - any import failure means the same to the user
            raise UniptsError(f"objective._target_: cannot import {self.target!r} ({exc})") from exc
        with in_engine_words("objective"):
            try:
                return loss_class(**self.options)
            except TypeError as exc:
                raise UniptsError(f"objective: {exc}") from exc
