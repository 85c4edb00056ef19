"""``unipts-prune`` whose objective turns NaN from epoch ``UNIPTS_TEST_NAN_EPOCH`` on (test only)."""

import os

import torch

from unipts import objectives
from unipts.cli import prune

NAN_EPOCH = int(os.environ.get("UNIPTS_TEST_NAN_EPOCH", "2"))
_forward = objectives.BaseDecayedKL.forward


def _poisoned(self, student_logits, teacher_logits, t):
    loss = _forward(self, student_logits, teacher_logits, t)
    return loss * torch.tensor(float("nan")) if t >= NAN_EPOCH else loss


objectives.BaseDecayedKL.forward = _poisoned

if __name__ == "__main__":
    prune.main()
