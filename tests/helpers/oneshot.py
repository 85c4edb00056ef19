"""Test-only code shared by the one-shot pruners' tests (SparseGPT, Wanda): small networks whose
BatchNorm has real statistics, calibration batches with correlated features of unequal scales,
and the output error of a single pruned layer."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from unipts.sparse import allocate, fold_masks_, masked_layers, set_masks_, sparsify


def with_bn_stats(model: nn.Module, shape, seed: int = 0) -> nn.Module:
    """Give BatchNorm non-trivial running statistics, then switch to eval mode."""
    gen = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(32, *shape, generator=gen) * 1.5 + 0.3)
    return model.eval()


def correlated(n: int, features: int, seed: int = 0, spread: float = 1.0) -> torch.Tensor:
    """``n`` vectors of ``features`` correlated features whose scales span ``10**spread``."""
    gen = torch.Generator().manual_seed(seed)
    mixing = torch.randn(features, features, generator=gen) / features ** 0.5 + torch.eye(features)
    scales = torch.logspace(0, spread, features)[torch.randperm(features, generator=gen)]
    return (torch.randn(n, features, generator=gen) @ mixing) * scales


def correlated_images(n: int, channels: int, size: int, seed: int = 0, spread: float = 1.0) -> torch.Tensor:
    """Images whose channels are correlated and of unequal scales, smooth in space."""
    x = correlated(n * size * size, channels, seed, spread).view(n, size, size, channels).permute(0, 3, 1, 2)
    return (x + x.roll(1, 2) + x.roll(1, 3)).contiguous()


def magnitude_prune_(student: nn.Module, target: float, batches=None, *, allocation: str = "uniform") -> None:
    set_masks_(student, allocate(student, allocation, target))
    fold_masks_(student)


def expected_counts(dense: nn.Module, target: float, allocation: str, pattern=None) -> dict[str, int]:
    """The allocation's per-layer zero counts, on a fresh sparsified copy (weight-based rules see the dense weights)."""
    return allocate(sparsify(copy.deepcopy(dense), pattern=pattern), allocation, target)


def zeros_per_layer(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Per masked layer: (zeros of its mask, zeros of its weight)."""
    return {name: (layer.n_zeros, int((layer.weight == 0).sum())) for name, layer in masked_layers(model)}


def single_layer_error(layer: nn.Module, prune, target: float, batches: list[torch.Tensor], pattern=None) -> float:
    """The relative squared error, on ``batches``, of ``layer``'s outputs once ``prune(student, target,
    batches)`` has pruned a sparsified copy of it."""
    dense = nn.Sequential(layer).eval()
    student = sparsify(copy.deepcopy(dense), pattern=pattern)
    prune(student, target, batches)
    with torch.no_grad():
        err = sum(float((student(x) - dense(x)).square().sum()) for x in batches)
        ref = sum(float(dense(x).square().sum()) for x in batches)
    return err / ref


# The fixtures SparseGPT's and Wanda's tests share: a small network with BatchNorm statistics, and
# three batches of calibration images for it.
@pytest.fixture(scope="module")
def dense() -> nn.Module:
    from unipts.models import DigitsNet

    return with_bn_stats(DigitsNet(width=8), (1, 8, 8))


@pytest.fixture(scope="module")
def batches() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(16, 1, 8, 8, generator=gen) * 1.5 + 0.3 for _ in range(3)]
