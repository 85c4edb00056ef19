"""POT (Lazarevich et al., 2021; OpenVINO's post-training sparsity): magnitude masks, then each
layer's surviving weights reconstructed to match the dense layer's outputs."""

from __future__ import annotations

from dataclasses import dataclass, field

from .base import Job, allocation_options
from .unipts import UniPTS


@dataclass
class Pot(UniPTS):
    """Global magnitude on per-layer L2-normalised weights (the preset's ``allocation=l2norm``),
    then layer by layer, the kept weights tuned so that the layer reproduces the dense layer's
    outputs on the calibration images (``pot``: the settings of
    :class:`~unipts.baselines.PotConfig`), then BatchNorm re-estimation. No training;
    ``method.finetune=true`` distils the result as :class:`UniPTS` does."""

    finetune: bool = False
    bn_recalibrate: bool = True
    pot: dict = field(default_factory=dict)
    settings: object = field(default=None, init=False, repr=False)  # the PotConfig built from `pot`
    report: dict | None = field(default=None, init=False, repr=False)  # pot_prune_'s, once it ran

    def __post_init__(self) -> None:
        from ..baselines import PotConfig

        self.settings = PotConfig.build(self.pot)  # a bad setting is refused before any work

    def allocate_(self, job: Job):
        if job.cfg.allocation.rule == "search":  # the searched masks, without reconstruction
            return super().allocate_(job)
        from ..baselines import pot_prune_
        from .placement import on_accelerator

        cfg = job.cfg
        with on_accelerator(cfg, job.student, job.dense):  # its forward passes run where the fit would
            self.report = pot_prune_(job.student, job.dense, cfg.sparsity.target, job.data.calibration_batches(),
                                     self.settings, allocation=cfg.allocation.rule,
                                     allocation_options=allocation_options(cfg))
        return None

    def summary(self, job: Job) -> dict:
        fields = super().summary(job)
        if self.report is not None:
            fields["pot"] = {"seconds": self.report["seconds"], "steps": self.report["steps"]}
        return fields
