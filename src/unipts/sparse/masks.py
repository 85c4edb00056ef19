"""Setting masks from per-layer zero counts, and re-masking from current magnitudes.

A layer with an N:M pattern (:mod:`unipts.sparse.nm`) gets N:M magnitude masks: its zero count
is fixed by the pattern (``numel * (M-N)/M``, or 0 when the layer cannot carry it), and both
:func:`set_masks_` and :func:`remask_from_magnitude_` keep the N largest magnitudes of each group
of M, so dynamic sparse training prunes and regrows within the groups.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .masked import MaskedLayer, masked_layers
from .pattern import fixed_zeros, format_pattern, is_eligible, nm_mask


def magnitude_mask(weight: torch.Tensor, n_zeros: int) -> torch.Tensor:
    """A 0/1 mask of ``weight``'s shape keeping its ``numel - n_zeros`` largest magnitudes.

    Ties are broken by position (topk), so the count is exact even when many weights are equal.
    """
    n = weight.numel()
    if not 0 <= n_zeros <= n:
        raise ValueError(f"cannot prune {n_zeros} of {n} weights")
    flat = weight.detach().abs().flatten()
    n_keep = n - n_zeros
    if n_keep <= n_zeros:
        mask = torch.zeros(n, dtype=weight.dtype, device=weight.device)
        mask[torch.topk(flat, n_keep, sorted=False).indices] = 1
    else:
        mask = torch.ones(n, dtype=weight.dtype, device=weight.device)
        mask[torch.topk(flat, n_zeros, largest=False, sorted=False).indices] = 0
    return mask.view_as(weight)


def zero_counts(model: nn.Module) -> dict[str, int]:
    """Each masked layer's target number of pruned weights, from its ``target_sparsity`` buffer."""
    return {name: layer_zero_count(layer) for name, layer in masked_layers(model)}


def layer_zero_count(layer: MaskedLayer) -> int:
    return round(float(layer.target_sparsity) * layer.weight.numel())


def _pattern_mask(layer: MaskedLayer) -> torch.Tensor:
    """The magnitude mask of a layer with an N:M pattern (all ones if it cannot carry it)."""
    n, m = layer.nm
    if is_eligible(layer.weight, m):
        return nm_mask(layer.weight, n, m)
    return torch.ones_like(layer.weight)


@torch.no_grad()
def set_masks_(model: nn.Module, n_zeros: Mapping[str, int]) -> None:
    """Give every masked layer its zero count (as ``target_sparsity``) and a magnitude mask.

    For a layer with an N:M pattern the count must be the one the pattern fixes
    (:func:`unipts.sparse.nm.nm_allocation` gives them all) and the mask is N:M."""
    layers = dict(masked_layers(model))
    if set(n_zeros) != set(layers):
        missing, unknown = sorted(set(layers) - set(n_zeros)), sorted(set(n_zeros) - set(layers))
        raise ValueError(f"layer sparsities do not fit the model: missing {missing}, unknown {unknown}")
    for name, layer in layers.items():
        k = int(n_zeros[name])
        if layer.nm is not None and k != fixed_zeros(layer.weight, layer.nm):
            raise ValueError(f"{name}: sparsity.pattern={format_pattern(layer.nm)} fixes its pruned weights at "
                             f"{fixed_zeros(layer.weight, layer.nm)} of {layer.weight.numel()}, not {k}")
        layer.target_sparsity.fill_(k / layer.weight.numel())
        layer.mask.copy_(magnitude_mask(layer.weight, k) if layer.nm is None else _pattern_mask(layer))


@torch.no_grad()
def remask_from_magnitude_(model: nn.Module, fraction: float = 1.0) -> float:
    """Recompute every mask from the current weight magnitudes at the layer's fixed sparsity.

    This is dynamic sparse training's prune-and-regrow step. A layer with an N:M pattern keeps
    the N largest magnitudes of each group of M (its sparsity is the pattern's). ``fraction``
    < 1 prunes only that fraction of each unstructured layer's zero count, for a fine-tune that
    reaches its sparsity gradually. Returns the churn: the fraction of mask entries, over all
    masked layers, that flipped.
    """
    flipped = 0
    total = 0
    for _, layer in masked_layers(model):
        if layer.nm is None:
            new = magnitude_mask(layer.weight, round(layer_zero_count(layer) * fraction))
        else:
            new = _pattern_mask(layer)
        flipped += int((new != layer.mask).sum())
        total += new.numel()
        layer.mask.copy_(new)
    return flipped / max(total, 1)


def masks_at_target(model: nn.Module) -> bool:
    """Whether every masked layer prunes exactly its target count (not part-way up a ramp)."""
    return all(int((layer.mask == 0).sum()) == layer_zero_count(layer) for _, layer in masked_layers(model))
