"""What a method is, and the plainest one: masks from the configured allocation, no teacher."""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from torch import nn

    from ..data import Splits
    from ..lightning import CalibrationDataModule, SparsitySearch

# Lightning and the engine are imported where they are used: a configuration is checked (and a
# method built) before either is loaded.

log = logging.getLogger("unipts")


@dataclass
class Job:
    """What a method works on: the run's configuration and directory, the dense network, the
    student (its masked copy, dense until the method gives it masks) and the calibration data."""

    cfg: DictConfig
    run_dir: Path
    dense: nn.Module
    student: nn.Module
    data: CalibrationDataModule
    num_classes: int


def allocation_options(cfg: DictConfig) -> dict:
    """The ``allocation`` node's options for its rule. The node carries the search's options
    whatever the rule (so one sweep across methods can set them); a fixed rule gets only the ones
    its function takes."""
    from ..sparse import RULES

    options = OmegaConf.to_container(cfg.allocation, resolve=True)
    rule = options.pop("rule")
    if rule not in RULES:
        return options
    accepted = inspect.signature(RULES[rule]).parameters
    return {key: value for key, value in options.items() if key in accepted}


@dataclass
class Method:
    """One way to make the dense network sparse, in the steps the prune pipeline runs:

    1. :meth:`check`: refuse, before any work, a configuration the method cannot run;
    2. :meth:`datamodule`: the calibration data it trains on;
    3. :meth:`allocate_`: give the student its masks (or the search's callback, which does);
    4. :meth:`training`: the LightningModule the trainer fits and tests, and the fit's callbacks;
    5. :meth:`summary`: what it adds to ``summary.json``.

    ``conf/method/<name>.yaml`` builds one with ``_target_``; the ``method`` node's keys are the
    constructor's arguments, so a method's own options live under it. An option a method refuses
    raises :class:`ValueError` naming it relative to that node (``"pot.epochs: ..."``).

    This base class gives the masks of the configured ``allocation`` rule (``allocation=search``:
    the reducing-regrowing search, when the fit starts) and, with ``finetune``, trains the student
    on the labels (cross-entropy) under those masks. ``bn_recalibrate`` re-estimates BatchNorm
    statistics on the calibration images once the student has its final weights.
    """

    name: str
    finetune: bool = False
    bn_recalibrate: bool = False

    def check(self, cfg: DictConfig) -> None:
        """Refuse what this method cannot run: a :class:`~unipts.UniptsError` naming the key."""

    def finetunes(self, cfg: DictConfig) -> bool:
        """Whether the student is trained (``finetune.epochs`` epochs) after it has its masks."""
        return bool(self.finetune and cfg.finetune.epochs > 0)

    def holdout(self, cfg: DictConfig) -> int:
        """Calibration images kept out of the training (0: none)."""
        return 0

    def datamodule(self, cfg: DictConfig, splits: Splits, indices: list[int]) -> CalibrationDataModule:
        """Training on the calibration subset ``indices`` (cropped and mixed as ``finetune.crop_min_area``
        and ``finetune.mix`` ask), evaluation on the evaluation split."""
        from ..builders import build_distill_augment
        from ..lightning import CalibrationDataModule

        augment = build_distill_augment(cfg) if self.finetunes(cfg) else None
        return CalibrationDataModule(splits, indices, cfg.data.batch_size, cfg.data.eval_batch_size,
                                     cfg.data.num_workers, seed=cfg.seed, distill_augment=augment,
                                     holdout=self.holdout(cfg))

    def allocate_(self, job: Job) -> SparsitySearch | None:
        """Give ``job.student`` its masks by the configured allocation rule. ``allocation=search``
        returns the search's callback: it searches when the fit starts, so a resumed fit restores
        its result instead of searching again (the pipeline runs it when there is no fit)."""
        from ..sparse import allocate, set_masks_

        cfg, target = job.cfg, job.cfg.sparsity.target
        if cfg.allocation.rule == "search":
            from ..lightning import SparsitySearch

            # Until the search runs, the student holds the all-equal reducing-regrowing table.
            set_masks_(job.student, allocate(job.student, "regrow", target, delta=cfg.allocation.delta))
            return SparsitySearch.from_config(allocation_options(cfg), target, job.run_dir,
                                              progress=cfg.trainer.enable_progress_bar,
                                              num_workers=cfg.data.num_workers)
        if cfg.allocation.rule == "regrow":
            log.info("allocation: the all-equal reducing-regrowing table (delta=%s), no search", cfg.allocation.delta)
        set_masks_(job.student, allocate(job.student, cfg.allocation.rule, target, **allocation_options(cfg)))
        return None

    def training(self, job: Job) -> tuple[pl.LightningModule, list[pl.Callback]]:
        """The module the trainer fits (when :meth:`finetunes`) and tests, and the fit's callbacks:
        here cross-entropy on the labels under the student's masks, with ``finetune``'s optimiser."""
        from ..builders import optim_config
        from ..lightning import Classifier

        optim = optim_config(job.cfg.finetune) if self.finetunes(job.cfg) else None
        return Classifier(job.student, job.num_classes, optim), []

    def summary(self, job: Job) -> dict:
        """Fields for ``summary.json``: at least ``objective`` (what trained the student, None if
        nothing did) and ``masks`` (how they changed while it trained)."""
        trained = self.finetunes(job.cfg)
        return {"objective": "ce" if trained else None, "masks": "static" if trained else "one-shot"}
