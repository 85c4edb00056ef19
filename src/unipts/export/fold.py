"""A masked state_dict as the plain one a deployed network loads: masks folded into the weights.

A masked layer's state holds ``<layer>.weight`` (an attention's: ``<layer>.in_proj_weight``),
``<layer>.mask`` and ``<layer>.target_sparsity`` (:mod:`unipts.sparse.masked`); the network
computes with ``weight * mask``. Folding stores that product as the weight (pruned entries as
+0.0) and drops the two extra buffers, so the result loads with ``load_state_dict(strict=True)``
into the unmasked architecture and computes the same outputs. A state_dict without masks passes through unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from ..sparse.masked import WEIGHT_NAMES, is_prunable, weight_name

MASK_SUFFIX = ".mask"
MASK_EXTRAS = (".mask", ".target_sparsity")


def masked_weight_keys(state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """``{weight key: mask key}`` of the layers that carry a mask of their weight's shape, in
    state_dict order."""
    out = {}
    for key, mask in state.items():
        if not key.endswith(MASK_SUFFIX):
            continue
        layer = key[: -len(MASK_SUFFIX)]
        for name in WEIGHT_NAMES:
            weight = state.get(f"{layer}.{name}")
            if weight is not None and weight.shape == mask.shape:
                out[f"{layer}.{name}"] = key
                break
    return out


def masked_layer_names(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the layers that carry a mask of their weight's shape, in state_dict order."""
    return [mask_key[: -len(MASK_SUFFIX)] for mask_key in masked_weight_keys(state).values()]


@torch.no_grad()
def fold_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with every mask multiplied into its weight and the mask buffers removed.

    Pruned weights become +0.0 (``w * 0`` would give -0.0 for a negative ``w``), kept weights are
    ``w * m`` exactly as the masked layer computes them. Other tensors are returned as they are.
    """
    masks = masked_weight_keys(state)
    dropped = {f"{mask_key[: -len(MASK_SUFFIX)]}{suffix}" for mask_key in masks.values() for suffix in MASK_EXTRAS}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in dropped:
            continue
        if key in masks:
            mask = state[masks[key]].to(value.dtype)
            value = torch.where(mask != 0, value * mask, torch.zeros((), dtype=value.dtype))
        out[key] = value
    return out


def prunable_weight_keys(model: nn.Module, only: Iterable[str] | None = None) -> list[str]:
    """State_dict keys of the prunable weights of ``model`` (Conv2d, Linear, an attention's
    ``in_proj_weight``), restricted to the layer names in ``only`` when given (e.g. the layers a
    checkpoint holds masks for)."""
    chosen = None if only is None else set(only)
    return [f"{name}.{weight_name(module)}" for name, module in model.named_modules()
            if is_prunable(module) and (chosen is None or name in chosen)]


def count_zeros(state: Mapping[str, torch.Tensor], keys: Iterable[str]) -> tuple[int, int]:
    """(zeros, total) over the named tensors."""
    zeros = total = 0
    for key in keys:
        t = state[key]
        total += t.numel()
        zeros += t.numel() - int(t.count_nonzero())
    return zeros, total


def tensor_bytes(state: Mapping[str, torch.Tensor]) -> int:
    """Bytes of the tensors' data as stored (fp32 weights: 4 bytes each), without file overhead."""
    return sum(t.numel() * t.element_size() for t in state.values())


def infer_io(state: Mapping[str, torch.Tensor]) -> tuple[int | None, int | None]:
    """(input channels, classes) read off a classifier's state_dict: the first convolution's
    input channels and the last fully-connected layer's rows; None where not found."""
    weights = [(k, v) for k, v in state.items() if k.endswith(".weight") and v.is_floating_point()]
    convs = [v for _, v in weights if v.dim() == 4]
    linears = [v for _, v in weights if v.dim() == 2]
    in_channels = int(convs[0].shape[1]) if convs else (int(linears[0].shape[1]) if linears else None)
    num_classes = int(linears[-1].shape[0]) if linears else (int(convs[-1].shape[0]) if convs else None)
    return in_channels, num_classes
