"""BatchNorm re-estimation: after pruning, running statistics no longer describe the activations."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def reestimate_bn_(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    noise_std: float = 0.0,
    generator: torch.Generator | None = None,
) -> None:
    """Reset every BatchNorm's running statistics and re-estimate them on ``batches``.

    Forward passes run in train mode with a cumulative (equal-weight) average over all batches,
    so the result does not depend on batch order. ``noise_std`` adds Gaussian noise to the
    inputs, the search's regulariser against over-fitting a tiny calibration set. The model's
    train/eval mode and BN momenta are restored afterwards.
    """
    bns = _batchnorms(model)
    if not bns:
        return
    was_training = model.training
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    try:
        for x in batches:
            if noise_std:
                noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                x = x + noise_std * noise
            model(x)
    finally:
        for bn, m in zip(bns, momenta):
            bn.momentum = m
        model.train(was_training)
