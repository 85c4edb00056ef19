"""Which masked weights a network reads without their masks: pruning those would change nothing.

A masked layer applies its mask in its own forward (``weight * mask``). A module that takes a
child's weight and computes with it itself bypasses that: torchvision's Swin attention hands
``qkv.weight`` and ``proj.weight`` to a function, timm's BEiT and EVA call ``F.linear(x,
self.qkv.weight, ...)``, ``nn.TransformerEncoderLayer``'s inference path passes every weight to a
fused kernel. Such a network would compute with dense weights while its masks claim sparsity.

:func:`unmasked_weight_reads` runs one forward pass and watches every operator torch runs (a
:class:`~torch.utils._python_dispatch.TorchDispatchMode`, below Python: the fused kernels are
seen too, and taken as in a real run, which a ``TorchFunctionMode`` would prevent): a masked
layer's weight parameter given to an operator that does not also take that layer's mask is read
unmasked. (``nn.MultiheadAttention`` is masked as a whole and hands torch the masked tensors,
see :mod:`unipts.sparse.masked`.)
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .masked import masked_layers


class _UnmaskedReads(TorchDispatchMode):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        # by object identity: the parameter itself, not a tensor of equal values
        self.owners = {id(layer.weight): (name, id(layer.mask)) for name, layer in masked_layers(model)}
        self.found: dict[str, str] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        given = [t for t in tree_flatten((args, kwargs or {}))[0] if isinstance(t, torch.Tensor)]
        ids = {id(t) for t in given}
        for t in given:
            owner = self.owners.get(id(t))
            if owner is not None and owner[1] not in ids:  # not weight * mask
                self.found.setdefault(owner[0], func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@torch.no_grad()
def unmasked_weight_reads(model: nn.Module, example: torch.Tensor) -> dict[str, str]:
    """``{masked layer: the torch operator that read its weight unmasked}`` over one forward pass
    of ``example`` in eval mode (the inference paths, where fused kernels take weights directly);
    empty when every masked weight goes through its mask. The model's mode is restored."""
    training = model.training
    model.eval()
    try:
        with _UnmaskedReads(model) as reads:
            model(example)
    finally:
        model.train(training)
    return reads.found


def describe_unmasked_reads(found: dict[str, str], limit: int = 3) -> str:
    """What :func:`unmasked_weight_reads` found, in words (without the way out: the caller knows
    its own name for ``exclude``)."""
    names = sorted(found)
    shown = ", ".join(f"{n} (operator {found[n]})" for n in names[:limit])
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"the network reads the weights of {shown}{more} itself, not through the layer: their masks would be ignored"
