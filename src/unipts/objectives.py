"""Distillation objectives: UniPTS's base-decayed KL (method.md section 1) and plain KD, and
the frozen dense teacher they compare a sparse student with."""

from __future__ import annotations

import copy

import torch
from torch import nn
import torch.nn.functional as F

from .checks import check_number


def kl_divergence(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Per-row ``KL(p || q)`` from log-probabilities (class dimension 1)."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


class BaseDecayedKL(nn.Module):
    """``L = (T^2 / B) * sum p * (log p - log q / tau_t)`` with ``tau_t = tau_0 * gamma ** t``.

    ``p`` is the teacher softened at ``teacher_temperature`` (T), ``q`` the student at
    ``student_temperature`` (1 in the released code). Dividing ``log q`` by ``tau_t`` changes the
    logarithm's base to ``e ** tau_t``; as ``tau_t`` decays the student term's weight
    ``T^2 / tau_t`` grows, strengthening the signal as the sparse student's gradients fade.
    ``t`` is the epoch (or step, if the caller decays per step).
    """

    def __init__(
        self,
        teacher_temperature: float = 4.0,
        student_temperature: float = 1.0,
        tau0: float = 8.0,
        gamma: float = 0.99,
    ) -> None:
        super().__init__()
        # a temperature of 0 divides by zero: a NaN loss at the first step
        for name, value in (("teacher_temperature", teacher_temperature), ("student_temperature", student_temperature),
                            ("tau0", tau0)):
            check_number(value, name, low=0.0, low_open=True)
        check_number(gamma, "gamma", low=0.0, low_open=True, high=1.0)
        self.teacher_temperature = teacher_temperature
        self.student_temperature = student_temperature
        self.tau0 = tau0
        self.gamma = gamma

    def tau(self, t: int | float) -> float:
        return self.tau0 * self.gamma**t

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, t: int | float = 0) -> torch.Tensor:
        T = self.teacher_temperature
        log_p = F.log_softmax(teacher_logits.detach() / T, dim=1)
        log_q = F.log_softmax(student_logits / self.student_temperature, dim=1)
        per_sample = (log_p.exp() * (log_p - log_q / self.tau(t))).sum(dim=1)
        return T * T * per_sample.mean()


class PlainKD(nn.Module):
    """Hinton et al.'s distillation: ``T^2 * KL(p_T || q_T)``, both softened at ``temperature``."""

    def __init__(self, temperature: float = 4.0) -> None:
        super().__init__()
        check_number(temperature, "temperature", low=0.0, low_open=True)
        self.temperature = temperature

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, t: int | float = 0) -> torch.Tensor:
        T = self.temperature
        log_p = F.log_softmax(teacher_logits.detach() / T, dim=1)
        log_q = F.log_softmax(student_logits / T, dim=1)
        return T * T * kl_divergence(log_p, log_q).mean()


def freeze_bn_statistics_(network: nn.Module) -> nn.Module:
    """Momentum 0 in every BatchNorm: in train mode they normalise with the batch's statistics and
    leave their running statistics as they are (a teacher distils, it never learns)."""
    for m in network.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.0
    return network


def set_teacher_mode_(teacher: nn.Module, training: bool, bn_batch_statistics: bool) -> None:
    """The teacher in eval mode, except, while the student trains and ``bn_batch_statistics``
    says so (the released code), its BatchNorm layers, on batch statistics."""
    teacher.eval()
    if training and bn_batch_statistics:
        for m in teacher.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train()


class DenseTeacher(nn.Module):
    """The frozen dense network a sparse student is distilled from, for a training step of one's
    own: ``loss = BaseDecayedKL()(student(x), teacher(x), epoch)``.

    It holds a copy of ``dense`` taken at construction: build it before anything prunes the
    network (a unipts callback does so only when the fit starts). Its parameters take no
    gradient and its forward pass none either. ``bn_batch_statistics`` (the released code's
    choice, as ``objective.teacher_bn_train``) runs its BatchNorm on each batch's statistics while
    it is in train mode, without changing its running statistics; in eval mode, or with it off,
    the teacher is in eval mode. Its mode follows the module it belongs to (Lightning puts a
    LightningModule in eval mode to validate), whatever Lightning does to the layers inside.
    A submodule of a LightningModule, it moves to the device with it and is saved in its
    checkpoints; it is what :class:`unipts.lightning.KeepBestStudent` finds as ``teacher``.
    """

    def __init__(self, dense: nn.Module, bn_batch_statistics: bool = True) -> None:
        super().__init__()
        self.dense = freeze_bn_statistics_(copy.deepcopy(dense).requires_grad_(False))
        self.bn_batch_statistics = bn_batch_statistics

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # set on every call: Lightning restores each layer's own mode after validating
        set_teacher_mode_(self.dense, self.training, self.bn_batch_statistics)
        return self.dense(images)


class FeatureTap:
    """Keeps the outputs of a network's named modules from its latest forward pass (forward
    hooks), for distilling intermediate features as well as logits."""

    def __init__(self, network: nn.Module, names: list[str]) -> None:
        modules = dict(network.named_modules())
        unknown = [name for name in names if name not in modules]
        if unknown:
            top = [name for name, _ in network.named_children()]
            raise ValueError(f"no module named {unknown} in the network; its top-level modules are {top}")
        self.names = list(names)
        self.outputs: dict[str, torch.Tensor] = {}
        for name in self.names:
            modules[name].register_forward_hook(self._keeper(name))

    def _keeper(self, name: str):
        def keep(module, inputs, output):
            self.outputs[name] = output
        return keep

    def take(self) -> list[torch.Tensor]:
        """The kept outputs in ``names`` order, forgotten afterwards (they hold the graph)."""
        taken = [self.outputs[name] for name in self.names]
        self.outputs.clear()
        return taken


def feature_distance(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """Mean over the tapped modules of the squared error relative to the teacher's energy,
    ``||s - t||^2 / ||t||^2``: scale-free, so deep and shallow features weigh alike."""
    terms = [(s.float() - t.detach().float()).pow(2).sum() / t.detach().float().pow(2).sum().clamp_min(1e-12)
             for s, t in zip(student, teacher)]
    return torch.stack(terms).mean()
