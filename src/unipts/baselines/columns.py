"""A layer's weight and inputs as matrices, one per group, for the calibration statistics of
SparseGPT (Hessians) and Wanda (input-feature norms).

Layout. The weight is ``(groups, rows, columns)``: one matrix per convolution group (a Linear
and an ordinary convolution have one group), ``rows`` its output units and ``columns`` the flattened
input of one output unit (``in_channels / groups * kh * kw`` in PyTorch's (C, kh, kw) order). That is
``weight.view(out, -1)`` cut into groups of consecutive output units, the layout of N:M masks
(:mod:`unipts.sparse.nm`). The inputs are ``(groups, columns, positions)``: every place the
weight is applied (a token of a Linear's input, an image position of a convolution, with its
kernel's receptive field unfolded with the layer's padding, stride and dilation) is one column
vector, so that the layer's pre-bias output at a position is ``weight[g] @ inputs[g][:, p]``.
Everything is float32, whatever the network runs in.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


def layer_groups(layer: nn.Module) -> int:
    return layer.groups if isinstance(layer, nn.Conv2d) else 1


def weight_matrices(layer: nn.Module) -> torch.Tensor:
    """A float32 copy of the layer's weight as ``(groups, rows, columns)``."""
    weight = layer.weight.detach()
    return weight.reshape(layer_groups(layer), weight.shape[0] // layer_groups(layer), -1).float().clone()


def input_columns(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input ``x`` (one batch) as float32 ``(groups, columns, positions)``."""
    if isinstance(layer, nn.Linear):
        return x.detach().reshape(-1, x.shape[-1]).float().t().unsqueeze(0)
    if not isinstance(layer, nn.Conv2d):
        raise TypeError(f"cannot unfold the inputs of a {type(layer).__name__}")
    x = x.detach().float()
    # The layer's own padding (zeros, reflect, ..., and "same"'s asymmetric one), then a plain unfold.
    mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
    x = F.pad(x, layer._reversed_padding_repeated_twice, mode=mode)
    patches = F.unfold(x, layer.kernel_size, dilation=layer.dilation, stride=layer.stride)  # (B, C*kh*kw, L)
    groups = layer.groups
    batch, width, positions = patches.shape
    return patches.view(batch, groups, width // groups, positions).permute(1, 2, 0, 3).reshape(
        groups, width // groups, batch * positions)
