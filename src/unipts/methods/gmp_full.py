"""The full-data yardstick that post-training sparsity chases: gradual magnitude pruning while
training with labels."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from omegaconf import DictConfig

from .. import UniptsError
from ..checks import check_number
from .base import Job, Method

log = logging.getLogger("unipts")

#: The rules that can spread a sparsity that changes during training: the search and a table
#: each fix one target.
GRADUAL_RULES = ("uniform", "global", "erk", "lamp", "l2norm")
SCHEDULE = {"interval": 100, "start": 0.0, "end": 0.75}


@dataclass
class GmpFull(Method):
    """Gradual magnitude pruning (Zhu & Gupta, 2017) while training with cross-entropy on the
    labels (no teacher), by default on the whole training split. The global sparsity follows a
    cubic schedule from 0 to ``sparsity.target`` between ``gmp.start`` and ``gmp.end`` (fractions
    of the training steps), a pruning step every ``gmp.interval`` steps; ``allocation`` spreads it
    over the layers at every step. The masks start dense."""

    finetune: bool = True
    gmp: dict = field(default_factory=lambda: dict(SCHEDULE))

    def __post_init__(self) -> None:
        unknown = sorted(set(self.gmp) - set(SCHEDULE))
        if unknown:
            raise ValueError(f"gmp: unknown settings {unknown}; valid: {sorted(SCHEDULE)}")
        self.gmp = {**SCHEDULE, **self.gmp}
        check_number(self.gmp["interval"], "gmp.interval", low=1, integer=True)
        start = check_number(self.gmp["start"], "gmp.start", low=0.0, high=1.0, high_open=True)
        end = check_number(self.gmp["end"], "gmp.end", low=0.0, high=1.0)
        if end <= start:
            raise ValueError(f"gmp.end: {end} must be after gmp.start ({start}); both are fractions of the training "
                             "steps")

    def check(self, cfg: DictConfig) -> None:
        from ..sparse.nm import parse_pattern

        rule = cfg.allocation.rule
        if rule not in GRADUAL_RULES:
            raise UniptsError(f"allocation.rule: {rule!r} cannot follow a gradual schedule; valid with "
                              f"method={self.name}: {', '.join(GRADUAL_RULES)}")
        pattern = parse_pattern(cfg.sparsity.pattern)
        if pattern is not None:
            raise UniptsError(f"sparsity.pattern: {pattern[0]}:{pattern[1]} cannot follow method={self.name}'s gradual "
                              f"schedule (an N:M layer has no sparsity between 0 and 1 - N/M); valid with {self.name}: "
                              "'unstructured'")
        if cfg.calib.get("root") is not None:
            raise UniptsError(f"calib.root: method={self.name} trains on labels; give labelled data (calib.root=null)")
        mix = cfg.finetune.get("mix")
        if self.finetune and mix not in (None, "none"):
            raise UniptsError(f"finetune.mix: {mix} mixes images without mixing labels, for distillation only; "
                              f"method={self.name} trains on labels: use finetune.mix=none")

    def datamodule(self, cfg: DictConfig, splits, indices: list[int]):
        if len(indices) < len(splits.train_labels):
            log.warning("%s trains on %d of the %d training images (calib.size=%s); calib.size=null uses them all",
                        self.name, len(indices), len(splits.train_labels), cfg.calib.size)
        return super().datamodule(cfg, splits, indices)

    def allocate_(self, job: Job):
        log.info("%s: masks start dense; GradualPruning raises the sparsity during training", self.name)
        return None

    def training(self, job: Job):
        module, callbacks = super().training(job)
        if self.finetunes(job.cfg):
            from ..lightning import GradualPruning

            callbacks.append(GradualPruning(job.cfg.sparsity.target, job.cfg.allocation.rule, **self.gmp))
        return module, callbacks

    def summary(self, job: Job) -> dict:
        fields = super().summary(job)
        if self.finetunes(job.cfg):
            fields["masks"] = "gradual"
        return fields
