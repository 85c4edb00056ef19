"""Callbacks that adapt the sparsity engine to Lightning's loop."""

from __future__ import annotations

import inspect
import logging
import math
import time

import lightning.pytorch as pl
import torch

from ..checks import check_number
from ..objectives import kl_divergence
from ..runs.identity import IDENTITY_KEY, check_identity, identity_of
from ..sparse import (
    RULES, allocate, fold_masks_, global_sparsity, layer_sparsities, masked_layers, masks_at_target,
    remask_from_magnitude_, set_masks_,
)
from .contract import NetworkCallback, module_at


log = logging.getLogger("unipts")


class DynamicSparsity(NetworkCallback):
    """Dynamic sparse training: every ``interval`` steps, each layer's mask is recomputed from the
    current weight magnitudes at the layer's fixed sparsity (prune-and-regrow), before the step's
    forward pass; the churn (fraction of mask entries that flipped) is logged as
    ``sparsity/churn`` and kept in the callback's state. ``interval=0`` keeps masks static.

    ``ramp`` > 0 starts the fine-tune from the dense weights and raises every layer's sparsity to
    its allocated value along :func:`cubic_sparsity` over that fraction of the steps, re-masking at
    every step of the ramp: the student then stays close to the teacher while it learns to do
    without each weight, instead of starting from a one-shot network that has lost most of its
    accuracy. The ramp is a function of ``trainer.global_step``, so a resumed fit carries on.
    With ``interval=0`` the masks the ramp ends with are kept to the end of the fit.

    Works in any LightningModule: ``network`` names the network's attribute, else the module's
    ``network()`` gives it; its masks come from an allocating callback beside this one
    (:class:`~unipts.lightning.SparsitySearch`, :class:`~unipts.lightning.FixedAllocation`) or
    from :func:`unipts.sparse.sparsify` and a rule beforehand (:mod:`unipts.lightning.contract`).
    """

    def __init__(self, interval: int = 1, ramp: float = 0.0, *, network: str | None = None) -> None:
        super().__init__(network)
        if interval < 0:
            raise ValueError(f"dynamic.interval: {interval} must be >= 0 (0 keeps masks static)")
        if not 0.0 <= ramp < 1.0:
            raise ValueError(f"dynamic.ramp: {ramp} must be in [0, 1) (the fraction of the fine-tune spent "
                             "reaching the sparsity)")
        self.interval = interval
        self.ramp = ramp
        self.total_steps: float = 0
        self.final_remasked = False
        self.churn_history: list[tuple[int, float]] = []

    def on_train_start(self, trainer, pl_module) -> None:
        self.total_steps = trainer.estimated_stepping_batches
        self.final_remasked = False

    def fraction(self, step: int) -> float:
        """How much of each layer's allocated sparsity applies at ``step``."""
        if not self.ramp:
            return 1.0
        return cubic_sparsity(step, self.total_steps, 1.0, end=self.ramp)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = trainer.global_step
        # up to the first step at or past the ramp's end, where the masks reach their target
        ramping = bool(self.ramp) and step <= math.ceil(self.ramp * self.total_steps)
        if ramping or (self.interval and step % self.interval == 0):
            churn = remask_from_magnitude_(self.network_of(pl_module), self.fraction(step))
            self.churn_history.append((step, churn))
            pl_module.log("sparsity/churn", churn, on_step=True, on_epoch=False)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # The last optimizer step moved weights after the last re-mask; the final masks must
        # follow the final weights just as every earlier step's did (and be at full sparsity).
        # Done here, before the last epoch's validation and checkpoint, not at on_train_end: that
        # checkpoint then holds the final model, so a run killed between it and its summary
        # resumes to exactly the model the uninterrupted run returns.
        if is_final_step(trainer, self.total_steps):
            self._final_remask(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if not self.final_remasked:  # a fit stopped short of its last step (early stopping, max_time)
            self._final_remask(trainer, pl_module)

    def _final_remask(self, trainer, pl_module) -> None:
        network = self.network_of(pl_module)
        # Static masks stay as the ramp left them: the weights they prune kept moving under the
        # straight-through gradient, and choosing again from those, with no step left to adapt,
        # undid the fine-tune (ResNet-20 at 0.9 fell from 0.81 to 0.13). Only a fit stopped
        # part-way up the ramp is brought to its target here.
        if self.interval or (self.ramp and not masks_at_target(network)):
            self.churn_history.append((trainer.global_step, remask_from_magnitude_(network)))
        self.final_remasked = True

    def state_dict(self) -> dict:
        return {"interval": self.interval, "ramp": self.ramp, "churn_history": list(self.churn_history)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.churn_history = [tuple(x) for x in state_dict.get("churn_history", [])]


class SparsityMonitor(NetworkCallback):
    """Logs the measured global sparsity (``sparsity/global``) and every layer's
    (``sparsity/<layer>``) at the end of each training epoch, of the network ``network`` names
    or the module's ``network()`` gives (:mod:`unipts.lightning.contract`)."""

    def __init__(self, per_layer: bool = True, *, network: str | None = None) -> None:
        super().__init__(network)
        self.per_layer = per_layer

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        student = self.network_of(pl_module)
        masked = {name for name, _ in masked_layers(student)}
        stats = layer_sparsities(student)
        pl_module.log("sparsity/global", global_sparsity(stats, masked), rank_zero_only=True)
        if self.per_layer:
            for s in stats:
                pl_module.log(f"sparsity/{s.name}", s.sparsity, rank_zero_only=True)


def is_final_step(trainer, total_steps: float) -> bool:
    """Whether the optimizer step just taken (read in ``on_train_batch_end``) is the fit's last:
    ``total_steps`` (``trainer.estimated_stepping_batches``) reached, or the last batch of the last
    epoch."""
    last_epoch = trainer.max_epochs is not None and 0 <= trainer.max_epochs <= trainer.current_epoch + 1
    return trainer.global_step >= total_steps or (trainer.is_last_batch and last_epoch)


def cubic_sparsity(step: int, total: int, final: float, initial: float = 0.0, start: float = 0.0,
                   end: float = 0.75) -> float:
    """Zhu & Gupta's (2017) cubic schedule: ``initial`` until ``start * total`` steps, then rising
    as ``final + (initial - final) * (1 - progress) ** 3`` to ``final`` at ``end * total`` steps."""
    first, last = start * total, end * total
    if step <= first:
        return initial
    progress = min(1.0, (step - first) / max(last - first, 1.0))
    return final + (initial - final) * (1.0 - progress) ** 3


class GradualPruning(NetworkCallback):
    """Gradual magnitude pruning (the full-data yardstick): every ``interval`` steps the global
    sparsity follows :func:`cubic_sparsity` and ``rule`` allocates it over the layers by current
    magnitude. Pruned weights are zeroed before each re-allocation, so a pruned weight stays
    pruned, as in GMP, although the straight-through backward still hands it gradients.

    The schedule is a function of ``trainer.global_step`` and the masks live in the checkpoint,
    so a resumed run carries on where it stopped. The network (``network``'s attribute, else the
    module's ``network()``) is made masked in ``setup`` if it is not (:mod:`unipts.lightning.contract`).
    """

    allocates = True

    def __init__(self, final: float, rule: str = "global", interval: int = 100, start: float = 0.0,
                 end: float = 0.75, *, network: str | None = None) -> None:
        super().__init__(network)
        if interval < 1:
            raise ValueError(f"gmp.interval: {interval} must be >= 1 (steps between pruning steps)")
        if not 0.0 <= start < end <= 1.0:
            raise ValueError(f"gmp.start, gmp.end: need 0 <= start < end <= 1 (fractions of training), got {start}, {end}")
        self.final, self.rule, self.interval, self.start, self.end = final, rule, interval, start, end
        self.current = 0.0
        self.total_steps = 0

    def _prune_to(self, student, sparsity: float) -> None:
        fold_masks_(student)
        set_masks_(student, allocate(student, self.rule, sparsity))
        self.current = sparsity

    def on_train_start(self, trainer, pl_module) -> None:
        self.total_steps = int(trainer.estimated_stepping_batches)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = trainer.global_step
        target = cubic_sparsity(step, self.total_steps, self.final, start=self.start, end=self.end)
        if target != self.current and (step % self.interval == 0 or target == self.final):
            self._prune_to(self.network_of(pl_module), target)
            pl_module.log("sparsity/scheduled", target, on_step=True, on_epoch=False)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # A run too short to reach the schedule's end still ends at the target sparsity: from its
        # last step on, before the last epoch's checkpoint, which so holds the final masks (as
        # DynamicSparsity's final re-mask).
        if is_final_step(trainer, self.total_steps) and self.current != self.final:
            self._prune_to(self.network_of(pl_module), self.final)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.current != self.final:  # a fit stopped short of its last step
            self._prune_to(self.network_of(pl_module), self.final)
        fold_masks_(self.network_of(pl_module))

    def state_dict(self) -> dict:
        return {"current": self.current}

    def load_state_dict(self, state_dict: dict) -> None:
        self.current = state_dict.get("current", 0.0)


class FixedAllocation(NetworkCallback):
    """Per-layer sparsities from a fixed rule when the fit starts: the counterpart of
    :class:`~unipts.lightning.SparsitySearch` for a LightningModule of one's own.

    ``rule``: one of :data:`unipts.sparse.RULES` (``uniform``, ``global``, ``erk``, ``lamp``,
    ``l2norm``, ``regrow``, ``table``), spreading the global sparsity ``target`` over the masked
    layers; ``options`` are the rule's own keywords (``path`` for ``table``, ``delta`` for
    ``regrow``). Each layer keeps its largest-magnitude weights (:func:`unipts.sparse.set_masks_`).

    The network is the attribute ``network`` names, else the module's ``network()``
    (:mod:`unipts.lightning.contract`); without masked layers it gets them in ``setup``. The
    counts are kept in the callback's state: a resumed fit keeps them, and its masks come back
    with the weights, so nothing is allocated again.
    """

    allocates = True

    def __init__(self, target: float, rule: str = "erk", *, network: str | None = None, **options) -> None:
        super().__init__(network)
        if rule not in RULES:
            raise ValueError(f"FixedAllocation: unknown rule {rule!r}; valid: {sorted(RULES)}")
        unknown = sorted(set(options) - set(inspect.signature(RULES[rule]).parameters))
        if unknown:  # refused now, not as a TypeError once the fit has started
            raise ValueError(f"FixedAllocation: rule {rule!r} takes no option(s) {unknown}")
        self.target = check_number(target, "FixedAllocation target", low=0.0, high=1.0, high_open=True)
        self.rule, self.options = rule, options
        self.counts: dict[str, int] | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        if self.counts is not None:  # restored from a checkpoint, whose masks came back with the weights
            return
        network = self.network_of(pl_module)
        self.counts = allocate(network, self.rule, self.target, **self.options)
        set_masks_(network, self.counts)

    def state_dict(self) -> dict:
        return {"rule": self.rule, "target": self.target, "counts": self.counts}

    def load_state_dict(self, state_dict: dict) -> None:
        self.counts = state_dict.get("counts")


class KeepBestStudent(NetworkCallback):
    """Never worse than where it started: the student is scored by its KL divergence from the
    teacher on calibration images held out of the fine-tune, at the start (the one-shot masks,
    after any search) and after every training epoch; at the end of the fit the best-scoring
    state (weights, masks, BatchNorm statistics) is put back, and the choice is logged.

    Needs no labels. The best state is kept in the callback's state, so a resumed fit still
    returns the best over the whole run.

    The student is the network ``network`` names, else the module's ``network()``; the teacher is
    the module's attribute ``teacher`` names (a dotted path), called on the images for the dense
    network's logits, such as :class:`unipts.objectives.DenseTeacher` (:mod:`unipts.lightning.contract`).
    """

    def __init__(self, images: torch.Tensor, *, network: str | None = None, teacher: str = "teacher") -> None:
        super().__init__(network)
        if len(images) == 0:
            raise ValueError("finetune.holdout_images: need at least one held-out image")
        self.teacher_path = teacher
        self.images = images
        self.start_score: float | None = None
        self.best_score: float | None = None
        self.best_epoch: int | None = None  # -1: the starting point
        self.best_state: dict | None = None
        self.last_score: float | None = None
        self._teacher_log_p: list[torch.Tensor] | None = None

    def teacher_of(self, pl_module) -> torch.nn.Module:
        return module_at(pl_module, self.teacher_path, type(self).__name__, "the dense teacher to score against")

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit":
            self.teacher_of(pl_module)  # refused now, not after the first epoch

    @torch.no_grad()
    def score(self, pl_module) -> float:
        """Mean KL(teacher || student) on the held-out images, both in eval mode (lower is better)."""
        student, teacher = self.network_of(pl_module), self.teacher_of(pl_module)
        batches = torch.split(self.images.to(pl_module.device), 256)
        was_training = student.training
        student.eval()
        teacher_was_training = teacher.training
        teacher.eval()
        try:
            if self._teacher_log_p is None:
                self._teacher_log_p = [torch.log_softmax(teacher(x).float(), 1) for x in batches]
            total = 0.0
            for x, log_p in zip(batches, self._teacher_log_p):
                total += float(kl_divergence(log_p, torch.log_softmax(student(x).float(), 1)).sum())
        finally:
            student.train(was_training)
            teacher.train(teacher_was_training)
        return total / len(self.images)

    def _consider(self, pl_module, epoch: int) -> None:
        if not masks_at_target(self.network_of(pl_module)):
            return  # part-way up a sparsity ramp: not a network the run may return
        score = self.score(pl_module)
        self.last_score = score
        if epoch >= 0:
            pl_module.log("select/heldout_kl", score, on_step=False, on_epoch=True, rank_zero_only=True)
        if self.best_score is None or score < self.best_score:
            self.best_score, self.best_epoch = score, epoch
            self.best_state = {k: v.detach().clone().cpu() for k, v in self.network_of(pl_module).state_dict().items()}

    def on_fit_start(self, trainer, pl_module) -> None:
        if self.start_score is None:  # not on resume: the start was scored before the interruption
            self._consider(pl_module, -1)
            self.start_score = self.best_score

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._consider(pl_module, trainer.current_epoch)

    def on_fit_end(self, trainer, pl_module) -> None:
        last = trainer.current_epoch - 1
        if self.best_state is not None and self.best_epoch != last:
            self.network_of(pl_module).load_state_dict(self.best_state)
        log.info("keep-best: returning %s (held-out KL %.4f; start %.4f, last epoch %.4f, on %d held-out calibration "
                 "images)", self.describe(), self.best_score, self.start_score, self.last_score, len(self.images))

    def describe(self) -> str:
        return "the one-shot start" if self.best_epoch == -1 else f"the student after epoch {self.best_epoch}"

    def summary(self) -> dict:
        return {"epoch": self.best_epoch, "heldout_kl": self.best_score, "start_heldout_kl": self.start_score,
                "last_heldout_kl": self.last_score, "heldout_images": len(self.images), "returned": self.describe()}

    def state_dict(self) -> dict:
        return {"start_score": self.start_score, "best_score": self.best_score, "best_epoch": self.best_epoch,
                "best_state": self.best_state, "last_score": self.last_score}

    def load_state_dict(self, state_dict: dict) -> None:
        for key in ("start_score", "best_score", "best_epoch", "best_state", "last_score"):
            setattr(self, key, state_dict.get(key))


def log_due(n: int, total: int, lines: int = 10) -> bool:
    """Whether item ``n`` of ``total`` (counted from 1) gets a progress log line: the first, the
    last and every few between, about ``lines`` in all."""
    return n in (1, total) or n % max(1, math.ceil(total / lines)) == 0


class EpochLog(pl.Callback):
    """Progress where no progress bar can draw (a redirected log, ``enable_progress_bar=false``):
    one log line with the epoch's figures for the first and last epoch and about ``lines`` in all."""

    KEYS = ("train/loss", "train/kl", "train/agreement", "val/top1")

    def __init__(self, phase: str, lines: int = 10) -> None:
        self.phase = phase
        self.lines = lines
        self.validated_epoch: int | None = None

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.validated_epoch = trainer.current_epoch

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        epoch, total = trainer.current_epoch + 1, trainer.max_epochs or 0
        if not trainer.is_global_zero or not log_due(epoch, total, self.lines):
            return
        metrics = trainer.callback_metrics
        fresh = [key for key in self.KEYS if key in metrics]
        if self.validated_epoch != trainer.current_epoch:  # val/* would be an earlier epoch's
            fresh = [key for key in fresh if not key.startswith("val/")]
        figures = "  ".join(f"{key} {float(metrics[key]):.4f}" for key in fresh)
        log.info("%s: epoch %d/%d  %s", self.phase, epoch, total, figures)


class ValidateFirstAndLast(pl.Callback):
    """Validate on the first and the last epoch as well as every ``check_val_every_n_epoch``
    epochs, so that even a run shorter than that interval logs ``val/top1``, and a fine-tune going
    wrong shows at once. (Lightning reads the interval afresh each epoch.)"""

    def __init__(self) -> None:
        self.interval: int | None = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self.interval is None:
            self.interval = trainer.check_val_every_n_epoch
        edge = trainer.current_epoch in (0, (trainer.max_epochs or 0) - 1)
        trainer.check_val_every_n_epoch = 1 if edge else self.interval


class FitClock(pl.Callback):
    """Wall time of a fit, in two parts:

    - ``seconds``: the time spent validating inside it (the sanity check included), so that a
      phase's time can be reported without its validation passes, which can cost as much as the
      training steps of a few-shot fine-tune;
    - ``earlier_sessions``: the fit's time in the sessions before a resume. Every checkpoint
      carries the fit's seconds up to it, so a run continued across sessions (a full-data run
      outlasts one here) reports what it cost in all of them, not only in the last.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self.earlier_sessions = 0.0
        self._validating_since: float | None = None
        self._fit_since: float | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        self._fit_since = time.perf_counter()

    def on_validation_start(self, trainer, pl_module) -> None:
        self._validating_since = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._validating_since is not None:
            self.seconds += time.perf_counter() - self._validating_since
            self._validating_since = None

    def state_dict(self) -> dict:
        this_session = time.perf_counter() - self._fit_since if self._fit_since is not None else 0.0
        return {"fit_s": self.earlier_sessions + this_session}

    def load_state_dict(self, state_dict: dict) -> None:
        self.earlier_sessions = float(state_dict.get("fit_s", 0.0))


def _fit_clocks(trainer: pl.Trainer) -> list[FitClock]:
    return [c for c in trainer.callbacks if isinstance(c, FitClock)]


def validation_seconds(trainer: pl.Trainer) -> float:
    """Seconds the trainer's :class:`FitClock` counted validating (0 without one)."""
    return sum(c.seconds for c in _fit_clocks(trainer))


def earlier_session_seconds(trainer: pl.Trainer) -> float:
    """The fit's seconds in the sessions before it resumed, up to the checkpoint it resumed from
    (0 for a fit that did not resume, or without a :class:`FitClock`)."""
    return sum(c.earlier_sessions for c in _fit_clocks(trainer))


class RunIdentity(pl.Callback):
    """The run's identity inside every checkpoint the fit writes, checked again on resume.

    ``record``: :func:`unipts.runs.identity.identity_record` of the run's resolved configuration
    (and fingerprint). Saved under :data:`~unipts.runs.identity.IDENTITY_KEY` at the checkpoint's
    top level, so ``last.ckpt`` carries it wherever it is copied. When a fit resumes from a
    checkpoint that carries a record, a different configuration or fingerprint stops it before its
    first step (:class:`~unipts.UniptsError`); a checkpoint without one is let through here, the
    entry point's check before any work (:func:`~unipts.runs.identity.check_identity`) decides.
    """

    def __init__(self, record: dict) -> None:
        self.record = record

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[IDENTITY_KEY] = self.record

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        check_identity(identity_of(checkpoint), self.record["config"], f"the checkpoint {trainer.ckpt_path}",
                       self.record.get("fingerprint"))
