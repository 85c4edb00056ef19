"""What a method is: a composition of an allocation, an optional one-shot pruner, an optional
trainer and BatchNorm recalibration."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from ..spec import PruneSpec
    from .allocators import Allocator
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
    calib_size: int | None = field(default=None, init=False, repr=False)
    allocator: Allocator | None = field(default=None, init=False, repr=False)

    def configure(self, spec: PruneSpec) -> None:
        """Refuse, before any work, what this method cannot run (each part checks its own), and give
        each part the run's settings it reads, the allocator (the run's ``allocation``) among them:
        at run time the parts see the :class:`Job`, not the spec."""
        for part in (self.pruner, self.trainer):
            if part is not None:
                part.configure(spec)
        self.calib_size, self.allocator = spec.calib.size, spec.allocation

    def finetunes(self) -> bool:
        """Whether the student is trained after it has its masks."""
        return self.trainer is not None and self.trainer.fit_epochs() > 0

    def fit_epochs(self) -> int:
        return self.trainer.fit_epochs() if self.finetunes() else 0

    def calibration_size(self) -> int | None:
        """Training images to draw (None: the whole training split)."""
        return self.trainer.calibration_size() if self.trainer is not None else self.calib_size

    def srste_decay(self) -> float:
        """The extra decay of pruned weights (SR-STE) the student's masked layers apply."""
        return self.trainer.srste_decay() if self.trainer is not None else 0.0

    def allocate_(self, job: Job) -> pl.Callback | None:
        """Give ``job.student`` its masks: the allocation's, then the pruner's. An allocation that is
        decided during the fit returns the callback that decides it."""
        if self.trainer is not None and self.trainer.starts_dense():
            log.info("%s: masks start dense; the training raises the sparsity", self.name)
            return None
        if self.pruner is not None:
            self.pruner.prune_(job)
            return None
        return self.allocator.assign_(job)

    def training(self, job: Job) -> tuple[pl.LightningModule, list[pl.Callback]]:
        """The module the trainer fits (when :meth:`finetunes`) and tests, and the fit's callbacks."""
        if self.finetunes():
            return self.trainer.module(job)
        from ..lightning import Classifier

        return Classifier(job.student, job.num_classes), []

    def fit_(self, job: Job, module: pl.LightningModule, trainer: pl.Trainer, allocating: pl.Callback | None,
             resume: Path | None) -> None:
        """Train the student (without a fine-tune, an allocation decided during the fit runs on its
        own; ``resume``: the checkpoint a fine-tune continues from), then re-estimate its BatchNorm
        statistics if the method asks."""
        from ..console import with_progress
        from ..sparse import reestimate_bn_
        from .placement import on_accelerator

        if self.finetunes():
            if resume is not None:
                log.info("resume: continuing the fine-tune from %s (masks, optimizer, schedule and allocation "
                         "come from the checkpoint)", resume)
            trainer.fit(module, datamodule=job.data, ckpt_path=str(resume) if resume is not None else None)
        elif allocating is not None:
            with on_accelerator(job.hardware, job.student):
                allocating.allocate_alone(job.student, job.data.calibration_set(plain=True), trainer)
        if self.bn_recalibrate:
            batches = math.ceil(len(job.data.calibration_set(plain=True)) / job.data.batch_size)
            with on_accelerator(job.hardware, job.student) as device:
                images = (x.to(device, non_blocking=True) for x in job.data.calibration_batches())
                reestimate_bn_(job.student, with_progress(images, "BN re-estimation", batches))

    def summary(self, job: Job) -> dict:
        """Fields for ``summary.json``: at least ``objective`` (what trained the student, None if
        nothing did) and ``masks`` (how they changed while it trained)."""
        fields = self.trainer.summary(job) if self.finetunes() else {"objective": None, "masks": "one-shot"}
        return {**fields, **(self.pruner.summary() if self.pruner is not None else {})}
