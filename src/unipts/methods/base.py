"""What a method is: a composition of an allocation, an optional one-shot pruner, an optional
trainer and BatchNorm recalibration."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from ..data import Splits
    from ..lightning import CalibrationDataModule
    from ..spec import PruneSpec
    from .job import Job
    from .pruners import Pruner
    from .trainers import Trainer

# Lightning and the engine are imported where they are used: a configuration is checked (and a
# method built) before either is loaded.

log = logging.getLogger("unipts")


@dataclass
class Method:
    """A way to make the dense network sparse, composed of parts the prune pipeline runs in order:

    1. the **allocation** (the run's ``allocation`` node, :mod:`.allocators`): each layer's sparsity;
    2. an optional one-shot **pruner** (:mod:`.pruners`): the masks and weights at those sparsities
       from the calibration images; without one, the allocation's magnitude masks;
    3. an optional **trainer** (:mod:`.trainers`): what trains the student under its masks; without
       one the method is one-shot;
    4. ``bn_recalibrate``: BatchNorm statistics re-estimated on the calibration images at the end.

    ``conf/method/<name>.yaml`` is a recipe that names the parts with ``_target_`` and gives their
    options under ``method.``. A method of a new kind is a new part (or a subclass overriding one of
    the steps below) and one YAML file (README: "Adding a method").
    """

    name: str
    trainer: Trainer | None = None
    pruner: Pruner | None = None
    bn_recalibrate: bool = False

    def check(self, spec: PruneSpec) -> None:
        """Refuse, before any work, what this method cannot run (each part checks its own)."""
        for part in (self.pruner, self.trainer):
            if part is not None:
                part.check(spec)

    def finetunes(self, spec: PruneSpec) -> bool:
        """Whether the student is trained after it has its masks."""
        return self.trainer is not None and self.trainer.epochs_for(spec) > 0

    def calibration_size(self, spec: PruneSpec) -> int | None:
        """Training images to draw (None: the whole training split)."""
        return self.trainer.calibration_size(spec) if self.trainer is not None else spec.calib.size

    def srste_decay(self, spec: PruneSpec) -> float:
        """The extra decay of pruned weights (SR-STE) the student's masked layers apply."""
        return self.trainer.srste_decay(spec) if self.trainer is not None else 0.0

    def datamodule(self, spec: PruneSpec, splits: Splits, indices: list[int]) -> CalibrationDataModule:
        """Training on the calibration subset ``indices`` (augmented as the trainer asks), evaluation
        on the evaluation split."""
        from ..lightning import CalibrationDataModule

        trains = self.finetunes(spec)
        return CalibrationDataModule(splits, indices, spec.data.batch_size, spec.data.eval_batch_size,
                                     spec.data.num_workers, seed=spec.seed,
                                     distill_augment=self.trainer.augment(spec) if trains else None,
                                     holdout=self.trainer.holdout(spec) if trains else 0)

    def allocate_(self, job: Job) -> pl.Callback | None:
        """Give ``job.student`` its masks: the allocation's, then the pruner's. An allocation that is
        decided during the fit returns the callback that decides it."""
        if self.trainer is not None and self.trainer.starts_dense():
            log.info("%s: masks start dense; the training raises the sparsity", self.name)
            return None
        if self.pruner is not None:
            self.pruner.prune_(job)
            return None
        return job.spec.allocation.assign_(job)

    def training(self, job: Job) -> tuple[pl.LightningModule, list[pl.Callback]]:
        """The module the trainer fits (when :meth:`finetunes`) and tests, and the fit's callbacks."""
        if self.finetunes(job.spec):
            return self.trainer.module(job)
        from ..lightning import Classifier

        return Classifier(job.student, job.num_classes), []

    def summary(self, job: Job) -> dict:
        """Fields for ``summary.json``: at least ``objective`` (what trained the student, None if
        nothing did) and ``masks`` (how they changed while it trained)."""
        fields = self.trainer.summary(job) if self.finetunes(job.spec) else {"objective": None, "masks": "one-shot"}
        return {**fields, **(self.pruner.summary() if self.pruner is not None else {})}
