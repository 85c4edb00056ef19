"""One-shot pruners: give the student its masks (and, where they reconstruct, new weights) at the
allocator's per-layer sparsities, from the calibration images, before any training. Without one, a
method's masks are the plain magnitude masks the allocator sets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import UniptsError

if TYPE_CHECKING:
    from ..spec import PruneSpec
    from .base import Job


@dataclass
class Pruner:
    """Prunes ``job.student`` in place at the allocation's per-layer sparsities."""

    def check(self, spec: PruneSpec) -> None:
        if not spec.allocation.fixed:
            raise UniptsError(f"allocation.rule: {spec.allocation.rule} decides the per-layer sparsities during the "
                              f"fit; method={spec.method.name} prunes at fixed ones before it: give a fixed rule "
                              "(uniform, global, erk, lamp, l2norm, regrow or table)")

    def prune_(self, job: Job) -> None:
        raise NotImplementedError

    def summary(self) -> dict:
        return {}


class Pot(Pruner):
    """POT (Lazarevich et al., 2021; OpenVINO's post-training sparsity): magnitude masks, then layer
    by layer the kept weights tuned so that the layer reproduces the dense layer's outputs on the
    calibration images. Its options are the settings of :class:`~unipts.baselines.PotConfig`."""

    def __init__(self, **settings) -> None:
        from ..baselines import PotConfig

        try:  # a bad setting is refused before any work, named under this part
            self.settings = PotConfig.build(settings)
        except ValueError as exc:
            raise ValueError("pruner" + str(exc).removeprefix("pot")) from exc
        self.report: dict | None = None  # pot_prune_'s, once it ran

    def prune_(self, job: Job) -> None:
        from ..baselines import pot_prune_
        from .placement import on_accelerator

        spec = job.spec
        with on_accelerator(spec.trainer, job.student, job.dense):  # its forward passes run where the fit would
            self.report = pot_prune_(job.student, job.dense, spec.sparsity.target, job.data.calibration_batches(),
                                     self.settings, allocation=spec.allocation.rule,
                                     allocation_options=spec.allocation.options)

    def summary(self) -> dict:
        if self.report is None:
            return {}
        return {"pot": {"seconds": self.report["seconds"], "steps": self.report["steps"]}}
