"""Sparsity measured from the effective weights (``weight * mask``), not from the targets."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .masked import MaskedLayer, is_prunable, prunable_weight


@dataclass(frozen=True)
class LayerSparsity:
    name: str
    numel: int
    zeros: int

    @property
    def sparsity(self) -> float:
        return self.zeros / self.numel

    def as_dict(self) -> dict:
        return {"name": self.name, "numel": self.numel, "sparsity": self.sparsity}


@torch.no_grad()
def layer_sparsities(model: nn.Module) -> list[LayerSparsity]:
    """Zeros of every prunable layer's (Conv2d, Linear, attention) effective weight, masked or not."""
    out = []
    for name, module in model.named_modules():
        if not is_prunable(module):
            continue
        w = module.weight * module.mask if isinstance(module, MaskedLayer) else prunable_weight(module)
        out.append(LayerSparsity(name, w.numel(), int(w.numel() - w.count_nonzero())))
    return out


def global_sparsity(stats: list[LayerSparsity], names: set[str] | None = None) -> float:
    """Fraction of zeros over the given layers (default: all of ``stats``)."""
    chosen = [s for s in stats if names is None or s.name in names]
    total = sum(s.numel for s in chosen)
    return sum(s.zeros for s in chosen) / total if total else 0.0
