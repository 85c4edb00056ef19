"""LightningModules: a dense classifier (pre-training, evaluation) and the sparse fine-tune."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import nn
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from ..common import UniptsError
from ..objectives import FeatureTap, feature_distance, freeze_bn_statistics_, set_teacher_mode_


class NonFiniteError(UniptsError):
    """The fine-tune diverged (a NaN or Inf loss or weight)."""


@dataclass
class OptimConfig:
    """SGD with momentum and a per-step cosine schedule after a linear warm-up."""

    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0

    @classmethod
    def of(cls, settings) -> OptimConfig:
        """From any settings that name these four (``finetune``, a pre-training recipe, a trainer part)."""
        return cls(lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay,
                   warmup_epochs=settings.warmup_epochs)


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear from 1/warmup to 1 over ``warmup`` steps, then cosine to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def teacher_match(student_logits: torch.Tensor, teacher_logits: torch.Tensor, teacher_temperature: float = 1.0,
                  student_temperature: float = 1.0) -> dict[str, torch.Tensor]:
    """The fine-tune's figures to watch (the base-decayed objective is negative by construction):
    ``train/kl``, KL(teacher || student) with each softened at its temperature in the objective,
    0 when the student reproduces the distribution it is distilled towards, and
    ``train/agreement``, the fraction of images where their top-1 classes match."""
    kl = F.kl_div(F.log_softmax(student_logits / student_temperature, 1),
                  F.log_softmax(teacher_logits / teacher_temperature, 1), log_target=True, reduction="batchmean")
    agreement = (student_logits.argmax(1) == teacher_logits.argmax(1)).float().mean()
    return {"train/kl": kl, "train/agreement": agreement}


def objective_temperatures(objective: nn.Module) -> tuple[float, float]:
    """(teacher, student) temperatures of a distillation objective: ``teacher_temperature`` and
    ``student_temperature``, or one ``temperature`` for both, else 1."""
    both = getattr(objective, "temperature", 1.0)
    return float(getattr(objective, "teacher_temperature", both)), float(getattr(objective, "student_temperature", both))


def check_fits(saved: dict, own: dict, source) -> None:
    """The weights ``saved`` in the checkpoint ``source`` must be those of this network: the same
    tensors, of the same shapes (another model, width or class count is one line, naming the
    first differences)."""
    shapes = [f"{k}: {tuple(saved[k].shape)} there, {tuple(v.shape)} here" for k, v in own.items()
              if k in saved and hasattr(saved[k], "shape") and tuple(saved[k].shape) != tuple(v.shape)]
    missing, extra = [k for k in own if k not in saved], [k for k in saved if k not in own]

    def some(items: list[str]) -> str:
        return ", ".join(items[:3]) + (f" and {len(items) - 3} more" if len(items) > 3 else "")

    problems = [some(shapes)] if shapes else []
    if missing:
        problems.append(f"it lacks {some(missing)}")
    if extra:
        problems.append(f"it has {some(extra)} besides")
    if problems:
        raise UniptsError(f"ckpt_path: {source} holds another network's weights ({'; '.join(problems)}); resume "
                          "with the model and data settings of the run that wrote it")


class Classifier(pl.LightningModule):
    """A network scored with top-1/top-5 under ``val/`` and ``test/``; trained with cross-entropy
    (``label_smoothing``: the weight spread evenly over all classes, 0 for one-hot targets)."""

    def __init__(self, model: nn.Module, num_classes: int, optim: OptimConfig | None = None,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.optim = optim or OptimConfig()
        self.label_smoothing = label_smoothing
        top5 = min(5, num_classes)
        self.metrics = nn.ModuleDict({
            f"{stage}_{name}": MulticlassAccuracy(num_classes, top_k=k, average="micro")
            for stage in ("val", "test") for name, k in (("top1", 1), ("top5", top5))
        })

    def network(self) -> nn.Module:
        """The network being trained and scored."""
        return self.model

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Called before Lightning loads the weights, whose refusal of another network's would be a
        # traceback of one line per tensor.
        check_fits(checkpoint.get("state_dict") or {}, self.state_dict(), self.trainer.ckpt_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network()(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y, label_smoothing=self.label_smoothing)
        self._check_finite(loss, batch_idx)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def _check_finite(self, loss: torch.Tensor, batch_idx: int) -> None:
        """Stop before a NaN/Inf loss reaches the weights (on every rank at once under DDP), so the
        last checkpoint written is the last good state."""
        bad = not bool(torch.isfinite(loss.detach()))
        if self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            raise NonFiniteError(f"non-finite loss ({float(loss.detach())}) at epoch {self.current_epoch}, step "
                                 f"{self.global_step} (batch {batch_idx}); stopped before the update, "
                                 f"{self._last_good_checkpoint()} (lower the learning rate, or check the data)")

    def _last_good_checkpoint(self) -> str:
        """Where the last good state is, for the divergence message: none before the first epoch ends."""
        callback = self.trainer.checkpoint_callback
        last = Path(callback.dirpath) / "last.ckpt" if callback is not None and callback.dirpath else None
        if last is not None and last.is_file():
            return f"the last good checkpoint is {last}"
        return "before the first checkpoint, so nothing can be resumed: start a new run with other settings"

    def _score(self, batch, stage: str) -> None:
        x, y = batch
        logits = self(x)
        for name in ("top1", "top5"):
            metric = self.metrics[f"{stage}_{name}"]
            metric(logits, y)
            self.log(f"{stage}/{name}", metric, prog_bar=name == "top1")

    def validation_step(self, batch, batch_idx):
        self._score(batch, "val")

    def test_step(self, batch, batch_idx):
        self._score(batch, "test")

    def configure_optimizers(self):
        o = self.optim
        params = [p for p in self.network().parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
        total = int(self.trainer.estimated_stepping_batches)
        per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        warmup = max(1, round(o.warmup_epochs * per_epoch)) if o.warmup_epochs > 0 else 0
        schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: warmup_cosine(step, total, warmup))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class SparseFinetune(Classifier):
    """The masked student distilled from the frozen dense teacher (no label term).

    ``objective(student_logits, teacher_logits, t)`` receives the epoch index, or the step index
    with ``decay_per="step"``; both come from the trainer, so a resumed run continues the decay.
    ``teacher_bn_train`` runs the teacher's BatchNorm on batch statistics, as the released code
    does, without ever changing its running statistics.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, objective: nn.Module, num_classes: int,
                 optim: OptimConfig | None = None, teacher_bn_train: bool = True, decay_per: str = "epoch",
                 features: list[str] | tuple[str, ...] = (), feature_weight: float = 0.0) -> None:
        super().__init__(student, num_classes, optim)
        if decay_per not in ("epoch", "step"):
            raise ValueError(f"objective.decay_per: {decay_per!r} is not one of epoch, step")
        self.teacher = teacher.requires_grad_(False)
        self.objective = objective
        self.teacher_bn_train = teacher_bn_train
        self.decay_per = decay_per
        # Intermediate features distilled beside the logits: ``feature_weight`` times their
        # relative squared error (objectives.feature_distance), off when no module is named.
        self.feature_weight = feature_weight if features else 0.0
        self.taps = None
        if self.feature_weight:
            self.taps = (FeatureTap(student, list(features)), FeatureTap(teacher, list(features)))
        if teacher_bn_train:
            freeze_bn_statistics_(teacher)

    @property
    def student(self) -> nn.Module:
        return self.model

    def train(self, mode: bool = True):
        super().train(mode)
        self._set_teacher_mode()
        return self

    def on_train_epoch_start(self) -> None:
        # Lightning 2.x does not call train() when a fit starts (it keeps each module's mode, and
        # restores it after validation), so without this the teacher would keep the mode it was
        # built in, and teacher_bn_train=false would change nothing.
        self._set_teacher_mode()

    def _set_teacher_mode(self) -> None:
        set_teacher_mode_(self.teacher, self.training, self.teacher_bn_train)

    # The teacher is the dense checkpoint the run started from: leaving it out halves the size of
    # every checkpoint, and on resume the freshly built teacher fills its keys back in.
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("teacher.")}
        # A checkpoint of a diverged student would overwrite last.ckpt, the last good state.
        bad = [k for k, v in checkpoint["state_dict"].items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise NonFiniteError(f"training diverged: non-finite values in {bad[:5]} at epoch {self.current_epoch} "
                                 f"(step {self.global_step}); not saving a checkpoint, the last good one is kept")

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"].update({f"teacher.{k}": v for k, v in self.teacher.state_dict().items()})
        super().on_load_checkpoint(checkpoint)

    def decay_index(self) -> int:
        return self.current_epoch if self.decay_per == "epoch" else self.global_step

    def training_step(self, batch, batch_idx):
        x, _ = batch
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        student_logits = self.student(x)
        loss = self.objective(student_logits, teacher_logits, self.decay_index())
        if self.taps is not None:
            student_tap, teacher_tap = self.taps
            features = feature_distance(student_tap.take(), teacher_tap.take())
            self.log("train/features", features)
            loss = loss + self.feature_weight * features
        self._check_finite(loss, batch_idx)
        # Not synced: an all-reduce per step for a progress figure; the epoch metrics are synced.
        self.log("train/loss", loss)
        self.log_dict(teacher_match(student_logits.detach(), teacher_logits, *objective_temperatures(self.objective)),
                      prog_bar=True)
        return loss
