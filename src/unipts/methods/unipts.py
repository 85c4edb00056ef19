"""UniPTS (Xie et al., CVPR 2024): searched per-layer sparsities, then a few-shot distillation
fine-tune with dynamic masks."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import DictConfig

from .base import Job, Method


@dataclass
class UniPTS(Method):
    """The per-layer sparsities come from ``allocation`` (the preset: the reducing-regrowing
    search; any rule works). The fine-tune distils the masked student from the frozen dense
    teacher on the calibration images (``objective``: base-decayed KL by default, no labels);
    every ``dynamic.interval`` steps the masks are re-computed from the weights' magnitudes at each
    layer's sparsity (reached gradually over the first ``dynamic.ramp`` of the steps, if set).
    ``objective.features`` distils those modules' outputs beside the logits. With
    ``finetune.holdout_images`` that many calibration images are kept out of training, and the
    student (the one-shot start or an epoch's) closest to the teacher on them is the one returned.
    """

    finetune: bool = True
    keep_best: object = field(default=None, init=False, repr=False)  # KeepBestStudent, once training() made it

    def check(self, cfg: DictConfig) -> None:
        # Only the fine-tune's dynamic masks read the ramp (an experiment may set it for UniPTS while
        # the one-shot methods built on this class run under the same config).
        from .. import UniptsError

        ramp, pattern = cfg.dynamic.get("ramp"), cfg.sparsity.get("pattern")
        if ramp and self.finetunes(cfg) and pattern not in (None, "unstructured"):
            raise UniptsError(f"dynamic.ramp: {ramp} ramps unstructured sparsity only; sparsity.pattern={pattern} "
                              "fixes each layer's sparsity: use dynamic.ramp=0")

    def holdout(self, cfg: DictConfig) -> int:
        return int(cfg.finetune.get("holdout_images", 0) or 0) if self.finetunes(cfg) else 0

    def training(self, job: Job):
        if not self.finetunes(job.cfg):
            return super().training(job)
        from ..builders import build_objective, optim_config
        from ..lightning import DynamicSparsity, KeepBestStudent, SparseFinetune

        from .. import UniptsError

        cfg = job.cfg
        callbacks = [DynamicSparsity(cfg.dynamic.interval, ramp=cfg.dynamic.get("ramp", 0.0))]
        if job.data.holdout:
            self.keep_best = KeepBestStudent(job.data.holdout_images())
            callbacks.append(self.keep_best)
        try:
            module = SparseFinetune(job.student, job.dense, build_objective(cfg), job.num_classes,
                                    optim_config(cfg.finetune), teacher_bn_train=cfg.objective.teacher_bn_train,
                                    decay_per=cfg.objective.decay_per,
                                    features=list(cfg.objective.get("features") or []),
                                    feature_weight=cfg.objective.get("feature_weight", 0.0))
        except ValueError as exc:  # the one thing it refuses: a module name the network lacks
            raise UniptsError(f"objective.features: {exc}") from exc
        return module, callbacks

    def summary(self, job: Job) -> dict:
        if not self.finetunes(job.cfg):
            return super().summary(job)
        fields = {"objective": job.cfg.objective.name, "masks": "dynamic" if job.cfg.dynamic.interval else "static"}
        if self.keep_best is not None:
            fields["keep_best"] = self.keep_best.summary()
        return fields
