"""Trainers: what trains the student once it has its masks. A method without one is one-shot.

* :class:`CrossEntropy`: the labels, the masks fixed (``finetune``'s schedule).
* :class:`Distill`: UniPTS's few-shot fine-tune: the masked student distilled from the frozen dense
  teacher (``objective``), its masks re-computed from the weights every ``dynamic.interval`` steps
  (dynamic sparse training), ``finetune``'s schedule and distillation inputs.
* :class:`GradualMagnitude`: gradual magnitude pruning while training on the labels (Zhu & Gupta,
  2017), the full-data yardstick; its own schedule, on the whole training split by default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..common import UniptsError
from ..checks import check_number

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from ..spec import PruneSpec
    from ..spec.sections import Dynamic, Finetune, Objective
    from .job import Job


@dataclass
class Trainer:
    """Trains the student under its masks for ``finetune.epochs`` epochs (``finetune``'s SGD).

    :meth:`configure` checks the run's settings and keeps the sections the trainer reads (the
    run spec is not kept: at run time a trainer sees its own settings and the :class:`Job`)."""

    finetune: Finetune | None = field(default=None, init=False, repr=False)
    calib_size: int | None = field(default=None, init=False, repr=False)

    def configure(self, spec: PruneSpec) -> None:
        """Refuse, before any work, settings it cannot run with; keep the ones it reads."""
        self.check(spec)
        self.finetune, self.calib_size = spec.finetune, spec.calib.size

    def check(self, spec: PruneSpec) -> None:
        spec.finetune.check(spec.calib.size)

    def fit_epochs(self) -> int:
        return self.finetune.epochs

    def optim(self):
        from ..lightning import OptimConfig

        return OptimConfig.of(self.finetune)

    def srste_decay(self) -> float:
        """The extra decay of pruned weights (SR-STE) the student's masked layers apply."""
        return 0.0

    def starts_dense(self) -> bool:
        """Whether the student starts with dense masks (the trainer prunes it)."""
        return False

    def calibration_size(self) -> int | None:
        """Training images to draw (None: the whole training split)."""
        return self.calib_size

    def module(self, job: Job) -> tuple[pl.LightningModule, list[pl.Callback]]:
        """The LightningModule to fit, and the fit's callbacks."""
        raise NotImplementedError

    def summary(self, job: Job) -> dict:
        return {}


@dataclass
class CrossEntropy(Trainer):
    """Cross-entropy on the labels under fixed masks."""

    def check(self, spec: PruneSpec) -> None:
        super().check(spec)
        self.check_labels(spec)
        if spec.finetune.mixes:
            raise UniptsError(f"finetune.mix: {spec.finetune.mix} mixes images without mixing labels, for "
                              f"distillation only; method={spec.method.name} trains on labels: use finetune.mix=none")

    @staticmethod
    def check_labels(spec: PruneSpec) -> None:
        if spec.unlabeled is not None:
            raise UniptsError(f"{spec.unlabeled}: method={spec.method.name} trains on labels and these calibration "
                              "images have none; give labelled images (or a distillation method)")

    def module(self, job: Job):
        from ..lightning import Classifier

        return Classifier(job.student, job.num_classes, self.optim()), []

    def summary(self, job: Job) -> dict:
        return {"objective": "ce", "masks": "static"}


@dataclass
class Distill(Trainer):
    """UniPTS's distillation with dynamic masks (see the module's note). With
    ``finetune.holdout_images`` that many calibration images are kept out of training, and the
    student (the one-shot start or an epoch's) closest to the teacher on them is the one returned."""

    dynamic: Dynamic | None = field(default=None, init=False, repr=False)
    objective: Objective | None = field(default=None, init=False, repr=False)
    keep_best: object = field(default=None, init=False, repr=False)  # KeepBestStudent, once module() made it

    def configure(self, spec: PruneSpec) -> None:
        super().configure(spec)
        self.dynamic, self.objective = spec.dynamic, spec.objective

    def check(self, spec: PruneSpec) -> None:
        super().check(spec)
        ramp = spec.dynamic.ramp
        if ramp and spec.finetune.epochs and spec.sparsity.structured:
            raise UniptsError(f"dynamic.ramp: {ramp} ramps unstructured sparsity only; sparsity.pattern="
                              f"{spec.sparsity.pattern} fixes each layer's sparsity: use dynamic.ramp=0")

    def srste_decay(self) -> float:
        return self.dynamic.srste_decay

    def module(self, job: Job):
        from ..lightning import DynamicSparsity, KeepBestStudent

        from ..data.augment import distill_augment

        job.data.train_with(distill_augment(self.finetune), int(self.finetune.holdout_images or 0))
        callbacks = [DynamicSparsity(self.dynamic.interval, ramp=self.dynamic.ramp or 0.0)]
        if job.data.holdout:
            self.keep_best = KeepBestStudent(job.data.holdout_images())
            callbacks.append(self.keep_best)
        return distilling_module(job, self.objective, self.optim()), callbacks

    def summary(self, job: Job) -> dict:
        fields = {"objective": self.objective.name, "masks": "dynamic" if self.dynamic.interval else "static"}
        if self.keep_best is not None:
            fields["keep_best"] = self.keep_best.summary()
        return fields


def distilling_module(job: Job, objective: Objective, optim) -> pl.LightningModule:
    """The student distilled from the frozen dense network with ``objective`` (no label term)."""
    from ..lightning import SparseFinetune

    try:
        return SparseFinetune(job.student, job.dense, objective.build(), job.num_classes, optim,
                              teacher_bn_train=objective.teacher_bn_train, decay_per=objective.decay_per,
                              features=list(objective.features), feature_weight=objective.feature_weight or 0.0)
    except ValueError as exc:  # the one thing it refuses: a module name the network lacks
        raise UniptsError(f"objective.features: {exc}") from exc


@dataclass
class GradualMagnitude(CrossEntropy):
    """Gradual magnitude pruning while training with cross-entropy on the labels (no teacher),
    with a schedule of its own (not the few-shot ``finetune``'s), by default on the whole training
    split (``all_images``; else ``calib.size`` images). The global sparsity follows a cubic schedule
    from 0 to ``sparsity.target`` between ``start`` and ``end`` (fractions of the training steps), a
    pruning step every ``interval`` steps; the ``allocation`` spreads it over the layers at every
    step. The masks start dense. With ``teacher`` the student is distilled from the dense network
    with the run's ``objective`` instead (its labels unused), as UniPTS's fine-tune is."""

    epochs: int = 30
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5.0e-4
    warmup_epochs: float = 0
    interval: int = 100
    start: float = 0.0
    end: float = 0.75
    all_images: bool = True
    teacher: bool = False
    rule: str | None = field(default=None, init=False, repr=False)
    objective: Objective | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        from ..spec.sections import check_sgd

        check_number(self.epochs, "trainer.epochs", low=0, integer=True)
        try:
            check_sgd(self, "trainer")
        except UniptsError as exc:  # the method's words: under ``method.``
            raise ValueError(str(exc)) from exc
        check_number(self.interval, "trainer.interval", low=1, integer=True)
        if not isinstance(self.teacher, bool):
            raise ValueError(f"trainer.teacher: {self.teacher!r} is not a boolean; valid: true (distil from the "
                             "dense network with `objective`), false (the labels)")
        start = check_number(self.start, "trainer.start", low=0.0, high=1.0, high_open=True)
        end = check_number(self.end, "trainer.end", low=0.0, high=1.0)
        if end <= start:
            raise ValueError(f"trainer.end: {end} must be after trainer.start ({start}); both are fractions of the "
                             "training steps")

    def configure(self, spec: PruneSpec) -> None:
        super().configure(spec)
        self.rule = spec.allocation.rule  # spreads the sparsity over the layers at every pruning step
        self.objective = spec.objective if self.teacher else None

    def check(self, spec: PruneSpec) -> None:
        from ..sparse.nm import parse_pattern
        from .allocators import GRADUAL_RULES

        if not spec.allocation.gradual:
            raise UniptsError(f"allocation.rule: {spec.allocation.rule!r} cannot follow a gradual schedule; valid with "
                              f"method={spec.method.name}: {', '.join(GRADUAL_RULES)}")
        pattern = parse_pattern(spec.sparsity.pattern)
        if pattern is not None:
            raise UniptsError(f"sparsity.pattern: {pattern[0]}:{pattern[1]} cannot follow method={spec.method.name}'s "
                              f"gradual schedule (an N:M layer has no sparsity between 0 and 1 - N/M); valid with "
                              f"{spec.method.name}: 'unstructured'")
        if not self.teacher:
            self.check_labels(spec)

    def fit_epochs(self) -> int:
        return self.epochs

    def optim(self):
        from ..lightning import OptimConfig

        return OptimConfig.of(self)

    def starts_dense(self) -> bool:
        return True

    def calibration_size(self) -> int | None:
        return None if self.all_images else self.calib_size

    def module(self, job: Job):
        from ..lightning import GradualPruning

        if self.objective is not None:
            module, callbacks = distilling_module(job, self.objective, self.optim()), []
        else:
            module, callbacks = super().module(job)
        callbacks.append(GradualPruning(job.target, self.rule, interval=self.interval,
                                        start=self.start, end=self.end))
        return module, callbacks

    def summary(self, job: Job) -> dict:
        return {"objective": self.objective.name if self.objective is not None else "ce", "masks": "gradual"}
