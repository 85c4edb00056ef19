"""One-shot pruners: give the student its masks (and, where they reconstruct, new weights) at the
allocator's per-layer sparsities, from the calibration images, before any training. Without one, a
method's masks are the plain magnitude masks the allocator sets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..common import UniptsError

if TYPE_CHECKING:
    from torch import nn

    from ..spec import PruneSpec
    from .job import Job


@dataclass
class Pruner:
    """Prunes ``job.student`` in place at the per-layer sparsities of ``allocator`` (the run's
    ``allocation``, given by :meth:`configure`)."""

    allocator = None

    def configure(self, spec: PruneSpec) -> None:
        """Refuse, before any work, settings it cannot run with; keep the allocator."""
        self.check(spec)
        self.allocator = spec.allocation

    def check(self, spec: PruneSpec) -> None:
        if not spec.allocation.fixed:
            raise UniptsError(f"allocation.rule: {spec.allocation.rule} decides the per-layer sparsities during the "
                              f"fit; method={spec.method.name} prunes at fixed ones before it: give a fixed rule "
                              "(uniform, global, erk, lamp, l2norm, regrow or table)")

    def check_network(self, network: nn.Module) -> None:
        """Refuse a network it cannot prune (checked once the network is built, before any work)."""

    def prune_(self, job: Job) -> None:
        raise NotImplementedError

    def summary(self) -> dict:
        return {}


class LayerwisePruner(Pruner):
    """A one-shot pruner of :mod:`unipts.baselines`, named by its settings class and its prune
    function there: its options are those settings (checked when the method is built, named
    ``method.pruner.<key>``), its forward passes run on the fit's device and precision, and the
    summary reports its time under ``label``."""

    label: str
    settings_name: str  # the settings class in unipts.baselines
    function_name: str  # the prune function in unipts.baselines: (student, target, batches, settings, **)

    def __init__(self, **settings) -> None:
        from .. import baselines

        try:  # a bad setting is refused before any work, named under this part
            self.settings = getattr(baselines, self.settings_name).build(settings)
        except ValueError as exc:
            raise ValueError("pruner" + str(exc).removeprefix(self.label)) from exc
        self.report: dict | None = None  # the engine's, once it ran

    def check_network(self, network: nn.Module) -> None:
        from ..baselines.layerwise import check_walkable

        try:
            check_walkable(network, "method", "model.exclude")
        except ValueError as exc:
            raise UniptsError(str(exc)) from exc

    def prune_(self, job: Job) -> None:
        from .placement import on_accelerator

        with on_accelerator(job.hardware, job.student, job.dense):  # its forward passes run where the fit would
            self.report = self.run(job, job.data.calibration_batches())

    def run(self, job: Job, batches) -> dict:
        from .. import baselines

        return getattr(baselines, self.function_name)(
            job.student, job.target, batches, self.settings, dense=job.dense,
            allocation=self.allocator.rule, allocation_options=self.allocator.options)

    def summary(self) -> dict:
        return {self.label: {"seconds": self.report["seconds"]}} if self.report is not None else {}


class Pot(LayerwisePruner):
    """POT (Lazarevich et al., 2021; OpenVINO's post-training sparsity): magnitude masks, then layer
    by layer the kept weights tuned so that the layer reproduces the dense layer's outputs on the
    calibration images (:class:`~unipts.baselines.PotConfig`)."""

    label, settings_name = "pot", "PotConfig"

    def run(self, job: Job, batches) -> dict:
        from ..baselines import pot_prune_

        return pot_prune_(job.student, job.dense, job.target, batches, self.settings,
                          allocation=self.allocator.rule, allocation_options=self.allocator.options)

    def summary(self) -> dict:
        if self.report is None:
            return {}
        return {"pot": {"seconds": self.report["seconds"], "steps": self.report["steps"]}}


class SparseGPT(LayerwisePruner):
    """SparseGPT (Frantar & Alistarh, 2023) for vision layers: layer by layer, the mask chosen in
    blocks of columns by the inverse Hessian of the layer's inputs, and the pruned weights' error
    propagated to the columns still to come (:class:`~unipts.baselines.SparseGPTConfig`)."""

    label, settings_name, function_name = "sparsegpt", "SparseGPTConfig", "sparsegpt_prune_"


class Wanda(LayerwisePruner):
    """Wanda (Sun et al., 2024): each weight scored by its magnitude times its input's norm over the
    calibration images, compared within its output channel; no weight update
    (:class:`~unipts.baselines.WandaConfig`)."""

    label, settings_name, function_name = "wanda", "WandaConfig", "wanda_prune_"
